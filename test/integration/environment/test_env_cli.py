"""`sandboxd env build | list | prune` against the real Docker store (a test image repository)."""

from __future__ import annotations

import json

from dependency_injector import providers

from entrypoint.cli import main
from entrypoint.container import Container
from testkit.environment import StoreFactory, image_exists


def test_env_build_list_prune(make_store: StoreFactory, capsys) -> None:
    store = make_store()
    container = Container()
    container.environment_store.override(providers.Object(store))

    assert main(["env", "build", "--language", "python", "tabulate==0.9.0"], container) == 0
    built = json.loads(capsys.readouterr().out)
    assert built["packages"] == ["tabulate==0.9.0"] and built["l3"] is None  # no bucket
    assert image_exists(built["reference"])

    assert main(["env", "list"], container) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [row["key"] for row in listed] == [built["key"]]
    assert listed[0]["packages"] == ["tabulate==0.9.0"]
    assert listed[0]["size_bytes"] > 0 and listed[0]["last_used"] and listed[0]["l2"] is True

    assert main(["env", "prune"], container) == 0  # within the budget: nothing goes
    assert json.loads(capsys.readouterr().out) == {"removed": []}
    assert main(["env", "prune", "--all"], container) == 0
    assert json.loads(capsys.readouterr().out) == {"removed": [built["key"]]}
    assert not image_exists(built["reference"])

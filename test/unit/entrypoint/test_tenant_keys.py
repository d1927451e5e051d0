"""API keys name their tenant; admin keys; the instance id follows the data directory."""

from __future__ import annotations

from pathlib import Path

import pytest

from domain.tenant import Caller
from entrypoint.auth import ANONYMOUS, ApiKeyAuthenticator, parse_key
from entrypoint.errors import InsecureConfigurationError, UnauthenticatedError
from entrypoint.settings import Settings


def test_keys_are_name_secret_or_a_bare_secret_with_a_derived_name() -> None:
    assert parse_key("alice:s3cret-1") == parse_key(" alice:s3cret-1 ")
    assert parse_key("alice:s3cret-1").name == "alice"
    assert parse_key("alice:s3cret-1").secret == "s3cret-1"
    bare = parse_key("0123456789abcdef")
    assert bare.secret == "0123456789abcdef"
    assert bare.name.startswith("key-") and "0123" not in bare.name
    # Not a name before the colon: the whole entry is the secret (old keys keep working).
    assert parse_key("a b:c").secret == "a b:c"


def test_the_authenticator_says_which_tenant_called() -> None:
    auth = ApiKeyAuthenticator(["alice:one", "legacy-secret"], admin_keys=["ops:root"])
    assert auth.authenticate("Bearer one") == Caller("alice")
    assert auth.authenticate("Bearer root") == Caller("ops", admin=True)
    assert auth.authenticate("Bearer legacy-secret") == Caller(parse_key("legacy-secret").name)
    with pytest.raises(UnauthenticatedError):
        auth.authenticate("Bearer alice:one")  # the name is not part of the secret
    with pytest.raises(UnauthenticatedError):
        auth.authenticate(None)


def test_a_remembered_header_answers_as_the_check_did_and_no_other_header_rides_on_it() -> None:
    auth = ApiKeyAuthenticator(["alice:one-secret", "bob:two-secret"])
    for _ in range(3):
        assert auth.authenticate("Bearer one-secret") == Caller("alice")
        assert auth.authenticate("Bearer two-secret") == Caller("bob")
        for near in ("Bearer one-secreT", "Bearer one-secret2", "Basic one-secret", "Bearer"):
            with pytest.raises(UnauthenticatedError):
                auth.authenticate(near)


def test_what_is_remembered_stays_bounded_whatever_is_presented() -> None:
    auth = ApiKeyAuthenticator(["alice:one-secret"])
    for n in range(2000):
        with pytest.raises(UnauthenticatedError):
            auth.authenticate(f"Bearer unknown-{n}")
        # Accepted spellings of one key (more spaces) are distinct headers.
        assert auth.authenticate("Bearer " + " " * n + "one-secret") == Caller("alice")
    assert len(auth._accepted) <= 256  # the bound itself is internal; what matters is memory


def test_two_keys_with_one_name_are_refused() -> None:
    with pytest.raises(InsecureConfigurationError):
        ApiKeyAuthenticator(["alice:one"], admin_keys=["alice:two"])


def test_without_keys_everyone_is_the_anonymous_tenant() -> None:
    assert ApiKeyAuthenticator([]).authenticate(None) == ANONYMOUS


def test_the_default_instance_id_follows_the_data_dir(tmp_path: Path) -> None:
    one = Settings(data_dir=tmp_path / "one").effective_instance_id
    two = Settings(data_dir=tmp_path / "two").effective_instance_id
    assert one != two and one.startswith("sandboxd-")
    assert Settings(data_dir=tmp_path / "one").effective_instance_id == one
    assert Settings(data_dir=tmp_path / "one", instance_id="fixed").effective_instance_id == "fixed"


def test_the_node_defaults_to_the_hostname() -> None:
    import socket

    assert Settings().effective_node_id == socket.gethostname()
    assert Settings(node_id="n1").effective_node_id == "n1"

"""Time to recover after PostgreSQL and dockerd restarts, under a steady load of executes.

    uv run python -m bench.bench_recovery [--chats 4] [--down-seconds 3] [--rounds 3]

Starts private instances (testkit.private_postgres, testkit.private_dockerd: never the
machine's shared server or engine), a real ``sandboxd serve`` on both, and one closed-loop caller
per chat. Each round stops one dependency for ``--down-seconds`` and starts it again, then
measures from the moment it answers again (``pg_ctl start`` or the engine's ping returned):

- ``first_ok_s``: until the first execute succeeds again;
- ``all_chats_ok_s``: until every chat has had a successful execute (after dockerd: each in a
  replacement sandbox, since the engine's stop took the containers with it);
- the answers while it was down (status and code counts) and any that were not 200 or 503.

Prints one JSON object with each round and the medians.
"""

from __future__ import annotations

import argparse
import collections
import os
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from bench.common import emit, sigterm_as_interrupt
from testkit.fault_load import ExecuteLoad, each_served
from testkit.private_dockerd import private_dockerd
from testkit.private_postgres import private_postgres
from testkit.service import API_KEY, ServiceProcess, migrate

RECOVERY_TIMEOUT_S = 180.0


def _round(load: ExecuteLoad, stop: Any, start: Any, down_s: float) -> dict[str, Any]:
    load.wait_until(lambda seen: each_served(seen, load.chats, time.monotonic() - 5), 120, "warm")
    stop()
    down_at = time.monotonic()
    time.sleep(down_s)
    start()
    up_at = time.monotonic()
    first = load.wait_until(
        lambda seen: any(o.ok and o.at > up_at for o in seen), RECOVERY_TIMEOUT_S, "a first ok"
    )
    every = load.wait_until(
        lambda seen: each_served(seen, load.chats, up_at), RECOVERY_TIMEOUT_S, "every chat ok"
    )
    during = [o for o in load.outcomes if down_at <= o.at <= up_at]
    answers = collections.Counter(f"{o.status} {o.code}".strip() for o in during)
    after = [o for o in load.outcomes if o.at > up_at and o.ok]
    return {
        "first_ok_s": round(first - up_at, 3),
        "all_chats_ok_s": round(every - up_at, 3),
        "answers_while_down": dict(answers),
        "unexpected_answers": sum(o.status not in (200, 503) for o in load.outcomes),
        "replaced_after": sum(o.replaced for o in after),
    }


def _summary(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "rounds": rounds,
        "median_first_ok_s": round(statistics.median(r["first_ok_s"] for r in rounds), 3),
        "median_all_chats_ok_s": round(statistics.median(r["all_chats_ok_s"] for r in rounds), 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--chats", type=int, default=4)
    parser.add_argument("--down-seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    sigterm_as_interrupt()
    from adapter.docker.image import default_image_tag

    chats = [uuid.uuid4() for _ in range(args.chats)]
    with (
        private_postgres() as postgres,
        private_dockerd(images=(default_image_tag(),)) as engine,
        tempfile.TemporaryDirectory(prefix="sandboxd-recovery-") as data_dir,
    ):
        service = ServiceProcess(
            Path(data_dir),
            database_url=postgres.create_database("sandboxd_recovery"),
            docker_base_url=engine.base_url,
            cleanup_interval_seconds="1",
        )
        migrate(service)
        try:
            service.start()
            with ExecuteLoad(service.http_url, API_KEY, chats) as load:
                database = [
                    _round(load, postgres.stop, postgres.start, args.down_seconds)
                    for _ in range(args.rounds)
                ]
                runtime = [
                    _round(load, engine.stop, engine.start, args.down_seconds)
                    for _ in range(args.rounds)
                ]
        finally:
            service.stop()
    emit(
        {
            "benchmark": "recovery",
            "settings": vars(args),
            "load_average": os.getloadavg(),
            "service_restarts": service.starts - 1,
            "postgresql_restart": _summary(database),
            "dockerd_restart": _summary(runtime),
        }
    )


if __name__ == "__main__":
    main()

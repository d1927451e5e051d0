"""dockerd restarted under a load of executes: 503 with a stable code while the engine is down,
recovery without a service restart, and the sandboxes that died with the engine replaced, each
chat told so once (``sandbox_replaced`` and ``state_lost``, as after an expiry).

The engine is the test session's private one (``private_engine``), never the system's.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import httpx
import pytest

from testkit.fault_load import ExecuteLoad, each_served, execute_once
from testkit.private_dockerd import PrivateDockerd
from testkit.service import API_KEY, ServiceProcess

pytestmark = [pytest.mark.docker]

CHATS = 4


def test_dockerd_restart_under_load(private_engine: PrivateDockerd, tmp_path: Path) -> None:
    service = ServiceProcess(
        tmp_path, docker_base_url=private_engine.base_url, cleanup_interval_seconds="1"
    )
    chats = [uuid.uuid4() for _ in range(CHATS)]
    headers = {"Authorization": f"Bearer {API_KEY}"}
    try:
        service.start()
        with ExecuteLoad(service.http_url, API_KEY, chats) as load:
            load.wait_until(
                lambda seen: each_served(seen, chats, after=0, times=3), 120, "warm chats"
            )
            before = {o.chat: o.session_id for o in load.outcomes if o.ok}
            private_engine.stop()  # stops every container it runs, as a dockerd restart does
            down_at = time.monotonic()
            load.wait_until(
                lambda seen: sum(o.status == 503 for o in seen if o.at > down_at) >= 2 * CHATS,
                60,
                "503s while the engine is down",
            )
            with httpx.Client(base_url=service.http_url, headers=headers, timeout=60) as client:
                refused = execute_once(client, uuid.uuid4())
                time.sleep(1.5)  # past the readiness cache
                ready_down = client.get("/readyz").status_code
            private_engine.start()
            up_at = time.monotonic()
            load.wait_until(
                lambda seen: each_served(seen, chats, after=up_at, times=2),
                120,
                "every chat served again after the restart",
            )
        outcomes = load.outcomes
        time.sleep(2.5)  # a sweep or two: reconciliation after the outage
        with httpx.Client(base_url=service.http_url, headers=headers, timeout=60) as client:
            listed = client.get("/v1/sandboxes", params={"limit": 100}).json()["items"]
            ready_up = client.get("/readyz").status_code
        alive = service.process is not None and service.process.poll() is None
        with private_engine.client() as engine:
            containers = service.containers(engine)
            running = [c for c in containers if c.status == "running"]  # type: ignore[attr-defined]
    finally:
        service.stop()
        with private_engine.client() as engine:
            service.remove_sandboxes(engine)

    unexpected = [o for o in outcomes if o.status not in (200, 503)]
    assert not unexpected, unexpected[:5]
    down = [o for o in outcomes if down_at < o.at < up_at and not o.ok]
    assert down and {o.code for o in down} == {"runtime_unavailable"}, down[:5]
    assert all(o.retry_after for o in down)
    assert refused.status == 503 and refused.code == "runtime_unavailable", refused
    assert ready_down == 503 and ready_up == 200
    assert alive and service.starts == 1
    for chat in chats:
        after = [o for o in outcomes if o.chat == chat and o.ok and o.at > down_at]
        # The first answer after the outage says the sandbox was replaced and its state lost;
        # later ones run in the new sandbox, its state kept.
        assert after[0].replaced and after[0].state_lost and after[0].value == 1, after[0]
        assert after[0].session_id != before[chat]
        assert not any(o.replaced for o in after[1:])
        assert {o.session_id for o in after} == {after[0].session_id}
        assert [o.value for o in after] == list(range(1, len(after) + 1))
    assert sorted(item["chat_id"] for item in listed) == sorted(str(c) for c in chats)
    assert {item["status"] for item in listed} == {"running"}
    # Only the replacements are left: the dead containers were removed, none leaked.
    assert len(containers) == len(running) == CHATS

"""The service process as a whole (entrypoint.serve), its worker and sweep, and the Python client,
over real loopback sockets with the in-memory store and the scripted runtime."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from sandboxd_client import AsyncSandboxdClient, ExecutionResult, SandboxdClient, SandboxdError
from sandboxd_client.client import StreamItem
from sandboxd_client.models import OutputEvent

from domain.sandbox import ManagedSandbox, SandboxSession, SandboxStatus
from entrypoint.cli import main as cli_main
from entrypoint.errors import InsecureConfigurationError, ShuttingDownError
from entrypoint.serve import Service, serve
from testkit.container import API_KEY, make_container, recorded
from testkit.fakes import FakeRuntime
from testkit.live import live_service


def test_serve_refuses_to_start_without_api_keys(capsys: pytest.CaptureFixture[str]) -> None:
    container = make_container(api_keys="", admin_keys="")

    with pytest.raises(InsecureConfigurationError):
        asyncio.run(Service(container).run(handle_signals=False))
    assert serve(container) == 2
    assert "SANDBOXD_API_KEYS" in capsys.readouterr().err


def test_insecure_dev_mode_serves_without_keys() -> None:
    container = make_container(api_keys="", admin_keys="", insecure_dev=True)
    with live_service(container) as live:
        response = httpx.post(
            f"{live.http_url}/v1/chats/{uuid.uuid4()}/executions", json={"code": "hi"}
        )
    assert response.status_code == 200
    assert recorded(container.logger()).named("authentication_disabled")


def test_startup_removes_orphans_and_marks_vanished_sandboxes_dead() -> None:
    runtime = FakeRuntime()
    runtime.orphans["orphan-1"] = ManagedSandbox("orphan-1", uuid.uuid4(), uuid.uuid4())
    container = make_container(runtime)
    now = datetime.now(UTC)
    vanished = SandboxSession(
        session_id=uuid.uuid4(),
        chat_id=uuid.uuid4(),
        container_id="gone-1",
        status=SandboxStatus.RUNNING,
        created_at=now,
        expires_at=now + timedelta(hours=1),
    )
    container.repository().save(vanished)

    with live_service(container):
        pass

    assert "orphan-1" in runtime.stopped
    assert container.repository().get(vanished.session_id).status is SandboxStatus.DEAD  # type: ignore[union-attr]


def test_the_sync_client_drives_the_whole_api() -> None:
    chat = uuid.uuid4()
    with (
        live_service(make_container()) as live,
        SandboxdClient(live.http_url, api_key=API_KEY) as client,
    ):
        assert client.ready()
        assert client.get_sandbox(chat) is None
        result = client.execute(chat, "hello")
        streamed = list(client.execute_stream(chat, "stream:x,y"))
        ensured = client.ensure_sandbox(chat)
        renewed = client.renew_sandbox(chat)
        page = client.list_sandboxes(status="running")
        client.destroy_sandbox(chat)
        after = client.get_sandbox(chat)
        with pytest.raises(SandboxdError) as invalid:
            client.execute("not-a-chat", "x")
        with pytest.raises(SandboxdError) as unauthorized:
            SandboxdClient(live.http_url, api_key="wrong").execute(chat, "x")

    assert result.stdout == "hello" and result.succeeded
    # Output that comes together may be coalesced into fewer events; its order stays.
    output = [event for event in streamed if isinstance(event, OutputEvent)]
    assert {event.stream for event in output} == {"stdout"}
    assert "".join(event.data for event in output) == "xy"
    assert isinstance(streamed[-1], ExecutionResult) and streamed[-1].stdout == "xy"
    assert ensured.session_id == result.sandbox.session_id
    assert renewed.expires_at >= ensured.expires_at
    assert [item.chat_id for item in page.items] == [str(chat)]
    assert after is None
    assert (invalid.value.status, invalid.value.code) == (422, "invalid_chat_id")
    assert (unauthorized.value.status, unauthorized.value.code) == (401, "unauthenticated")


def test_the_async_client_executes_and_streams() -> None:
    chat = uuid.uuid4()

    async def scenario(url: str) -> tuple[ExecutionResult, list[StreamItem]]:
        async with AsyncSandboxdClient(url, api_key=API_KEY) as client:
            result = await client.execute(chat, "hi", timeout_s=5)
            streamed = [item async for item in client.execute_stream(chat, "stderr:oops")]
            return result, streamed

    with live_service(make_container()) as live:
        result, streamed = asyncio.run(scenario(live.http_url))

    assert result.stdout == "hi"
    assert streamed[0] == OutputEvent("stderr", "oops")
    assert isinstance(streamed[1], ExecutionResult) and streamed[1].exit_code == 1


def test_shutdown_lets_the_execution_in_flight_finish() -> None:
    runtime = FakeRuntime()
    container = make_container(runtime, drain_seconds=10)
    outcome: dict[str, ExecutionResult] = {}
    with live_service(container) as live:
        client = SandboxdClient(live.http_url, api_key=API_KEY)
        caller = threading.Thread(
            target=lambda: outcome.update(result=client.execute(uuid.uuid4(), "block"))
        )
        caller.start()
        assert runtime.blocked.acquire(timeout=10)
        stopper = threading.Thread(target=live.stop)
        stopper.start()
        time.sleep(0.3)  # the stop is under way while the execution is still blocked
        assert live.thread.is_alive()
        runtime.gate.set()
        stopper.join(30)
        caller.join(30)
        client.close()

    assert outcome["result"].stdout == "unblocked"
    assert recorded(container.logger()).named("service_stopped") == [{"drained": True}]


def test_drain_refuses_new_executions_and_is_bounded() -> None:
    runtime = FakeRuntime()
    container = make_container(runtime)
    api = container.api()

    async def scenario() -> tuple[bool, bool, BaseException | None]:
        request = api.build_request("block")
        blocked = asyncio.ensure_future(api.execute(uuid.uuid4(), request, "test"))
        await asyncio.to_thread(runtime.blocked.acquire, True, 10)
        drained_in_time = await api.drain(0.2)
        refused: BaseException | None = None
        try:
            await api.execute(uuid.uuid4(), api.build_request("x"), "test")
        except ShuttingDownError as exc:
            refused = exc
        runtime.gate.set()
        await blocked
        return drained_in_time, await api.drain(1), refused

    try:
        timed_out_drain, final_drain, refused = asyncio.run(scenario())
    finally:
        runtime.gate.set()
        api.close()

    assert timed_out_drain is False
    assert final_drain is True
    assert isinstance(refused, ShuttingDownError)


def test_the_worker_cleans_up_expired_sandboxes_while_serving() -> None:
    runtime = FakeRuntime()
    container = make_container(runtime, ttl_seconds=0.3, cleanup_interval_seconds=0.1)
    chat = uuid.uuid4()
    with (
        live_service(container) as live,
        SandboxdClient(live.http_url, api_key=API_KEY) as client,
    ):
        container_id = client.ensure_sandbox(chat).container_id
        deadline = time.monotonic() + 10
        while client.get_sandbox(chat) is not None and time.monotonic() < deadline:
            time.sleep(0.05)
        gone = client.get_sandbox(chat) is None
        metrics = httpx.get(
            f"{live.http_url}/metrics", headers={"Authorization": f"Bearer {API_KEY}"}
        ).text

    assert gone
    assert container_id in runtime.stopped
    assert 'sandboxd_cleanup_sandboxes_total{result="cleaned"} 1.0' in metrics
    assert 'sandboxd_sweeps_total{result="ok"}' in metrics


def test_cleanup_once_runs_the_workers_sweep(capsys: pytest.CaptureFixture[str]) -> None:
    runtime = FakeRuntime()
    container = make_container(runtime)
    now = datetime.now(UTC)
    expired = SandboxSession(
        session_id=uuid.uuid4(),
        chat_id=uuid.uuid4(),
        container_id="expired-1",
        status=SandboxStatus.RUNNING,
        created_at=now - timedelta(hours=2),
        expires_at=now - timedelta(hours=1),
    )
    container.repository().save(expired)
    runtime.orphans["orphan-2"] = ManagedSandbox("orphan-2", None, None)

    assert cli_main(["cleanup", "--once"], container=container) == 0

    report = json.loads(capsys.readouterr().out)
    assert report["leader"] is True
    assert report["cleaned"] == [str(expired.session_id)]
    assert report["orphans_removed"] == ["orphan-2"]
    assert container.repository().get(expired.session_id) is None


def test_a_sweep_is_skipped_while_another_sweeper_leads() -> None:
    container = make_container()
    leader = container.sweep_leader()
    with leader.try_lead() as leading:
        assert leading
        report = container.sweeper().run_once()

    assert report.leader is False
    assert recorded(container.logger()).named("sweep_skipped")

"""The public HTTP and gRPC surface of a real ``sandboxd serve``, once with Docker sandboxes and
once with QEMU microVMs.

One service process per runtime serves the whole module; every test uses chats of its own.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import docker
import grpc
import httpx
import pytest
from sandboxd_client import ExecutionResult, OutputEvent, SandboxdClient, SandboxdError

from entrypoint.grpc.generated import sandboxd_pb2 as pb
from entrypoint.grpc.generated import sandboxd_pb2_grpc as pb_grpc
from testkit.service import API_KEY, ServiceFactory, ServiceProcess, client_for


@pytest.fixture(
    scope="module",
    params=[
        pytest.param("docker", marks=pytest.mark.docker),
        pytest.param("qemu", marks=pytest.mark.qemu),
    ],
)
def service(request: pytest.FixtureRequest, module_services: ServiceFactory) -> ServiceProcess:
    if request.param == "qemu":
        from testkit.qemu import ensure_qemu_images

        return module_services(runtime="qemu", qemu_image_dir=ensure_qemu_images())
    return module_services()


@pytest.fixture
def client(service: ServiceProcess) -> Iterator[SandboxdClient]:
    with client_for(service) as client:
        yield client


@pytest.fixture
def stub(service: ServiceProcess) -> Iterator[Any]:
    with grpc.insecure_channel(service.grpc_target) as channel:
        yield pb_grpc.SandboxServiceStub(channel)


GRPC_AUTH = (("authorization", f"Bearer {API_KEY}"),)


def admitted_executions(service: ServiceProcess) -> float:
    """Executions the service has admitted so far: those in flight plus those finished."""
    metrics = httpx.get(
        f"{service.http_url}/metrics", headers={"Authorization": f"Bearer {API_KEY}"}
    ).text
    total = 0.0
    for line in metrics.splitlines():
        if line.startswith(("sandboxd_executions_in_flight ", "sandboxd_executions_total{")):
            total += float(line.split()[-1])
    return total


def wait_admitted(service: ServiceProcess, count: float, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while admitted_executions(service) < count and time.monotonic() < deadline:
        time.sleep(0.02)


def test_http_execute_keeps_state_between_a_chats_messages(
    service: ServiceProcess, client: SandboxdClient
) -> None:
    chat = uuid.uuid4()

    first = client.execute(chat, "x = 41\nprint('set')")
    second = client.execute(chat, "print(x + 1)")
    other_chat = client.execute(uuid.uuid4(), "print('x' in globals())")

    assert first.stdout == "set\n" and first.exit_code == 0
    assert second.stdout == "42\n"
    assert second.sandbox.session_id == first.sandbox.session_id
    assert second.sandbox.runtime_kind == service.runtime
    assert other_chat.stdout == "False\n"


def test_http_streams_output_as_it_is_printed(client: SandboxdClient) -> None:
    code = "import sys, time\nfor i in range(3):\n    print(i, flush=True)\n    time.sleep(0.1)\n"
    code += "print('oops', file=sys.stderr)"

    items = list(client.execute_stream(uuid.uuid4(), code))

    output = [item for item in items if isinstance(item, OutputEvent)]
    result = items[-1]
    assert isinstance(result, ExecutionResult)
    assert "".join(item.data for item in output if item.stream == "stdout") == "0\n1\n2\n"
    assert any(item.stream == "stderr" and "oops" in item.data for item in output)
    assert result.stdout == "0\n1\n2\n"


def test_grpc_execute_and_stream(service: ServiceProcess, stub: Any) -> None:
    chat = str(uuid.uuid4())

    response = stub.Execute(
        pb.ExecuteRequest(chat_id=chat, code="y = 6 * 7\nprint(y)"), metadata=GRPC_AUTH
    )
    events = list(
        stub.ExecuteStream(pb.ExecuteRequest(chat_id=chat, code="print(y)"), metadata=GRPC_AUTH)
    )

    assert response.result.stdout == "42\n"
    assert response.sandbox.runtime_kind == service.runtime
    assert events[-1].result.result.stdout == "42\n"
    assert "".join(e.output.data for e in events if e.WhichOneof("event") == "output") == "42\n"
    assert events[-1].result.sandbox.session_id == response.sandbox.session_id


def test_requests_without_a_valid_key_are_rejected(service: ServiceProcess, stub: Any) -> None:
    url = f"{service.http_url}/v1/chats/{uuid.uuid4()}/executions"

    missing = httpx.post(url, json={"code": "print(1)"})
    wrong = httpx.post(url, json={"code": "print(1)"}, headers={"Authorization": "Bearer no"})
    with pytest.raises(grpc.RpcError) as grpc_missing:
        stub.Execute(pb.ExecuteRequest(chat_id=str(uuid.uuid4()), code="print(1)"))

    assert missing.status_code == 401
    assert missing.json()["code"] == "unauthenticated"
    assert wrong.status_code == 401
    assert grpc_missing.value.code() is grpc.StatusCode.UNAUTHENTICATED
    assert httpx.get(f"{service.http_url}/healthz").status_code == 200


def test_a_malformed_chat_id_is_422(client: SandboxdClient, stub: Any) -> None:
    with pytest.raises(SandboxdError) as http_error:
        client.execute("chat-42", "print(1)")
    with pytest.raises(grpc.RpcError) as grpc_error:
        stub.Execute(pb.ExecuteRequest(chat_id="chat-42", code="print(1)"), metadata=GRPC_AUTH)

    assert (http_error.value.status, http_error.value.code) == (422, "invalid_chat_id")
    assert grpc_error.value.code() is grpc.StatusCode.INVALID_ARGUMENT


def test_code_over_the_limit_is_413(client: SandboxdClient) -> None:
    with pytest.raises(SandboxdError) as error:
        client.execute(uuid.uuid4(), "#" * (256 * 1024 + 1))

    assert (error.value.status, error.value.code) == (413, "code_too_large")


def test_a_timed_out_execution_is_a_result_and_the_chat_goes_on(client: SandboxdClient) -> None:
    chat = uuid.uuid4()

    timed_out = client.execute(chat, "import time\ntime.sleep(30)", timeout_s=1)
    after = client.execute(chat, "print('still here')")

    assert timed_out.timed_out is True
    assert timed_out.exit_code is None
    assert after.stdout == "still here\n"
    assert after.sandbox.session_id == timed_out.sandbox.session_id


def test_one_chats_concurrent_executes_run_one_at_a_time_in_arrival_order(
    service: ServiceProcess,
) -> None:
    chat = uuid.uuid4()
    results: dict[int, ExecutionResult] = {}
    with client_for(service) as setup:
        setup.execute(chat, "import time\nseen = []")

    def send(index: int, code: str) -> None:
        with client_for(service) as client:
            results[index] = client.execute(chat, code)

    # The first holds the chat for a while; the others queue up behind it, each sent once the
    # service has admitted the one before (and 100 ms later), so arrival order is known.
    baseline = admitted_executions(service)
    threads = [threading.Thread(target=send, args=(0, "time.sleep(2)\nseen.append(0)"))]
    threads[0].start()
    wait_admitted(service, baseline + 1)
    for index in range(1, 6):
        code = f"start = time.time()\ntime.sleep(0.05)\nseen.append({index})\nprint(start)"
        threads.append(threading.Thread(target=send, args=(index, code)))
        threads[-1].start()
        wait_admitted(service, baseline + index + 1)
        time.sleep(0.1)
    for thread in threads:
        thread.join(60)
    with client_for(service) as check:
        seen = check.execute(chat, "print(seen)").stdout

    assert seen == "[0, 1, 2, 3, 4, 5]\n"
    starts = [float(results[index].stdout) for index in range(1, 6)]
    assert starts == sorted(starts)
    assert all(result.exit_code == 0 for result in results.values())


def test_a_sandbox_killed_from_outside_is_replaced_and_the_result_says_so(
    service: ServiceProcess, client: SandboxdClient, docker_client: docker.DockerClient
) -> None:
    chat = uuid.uuid4()
    before = client.execute(chat, "z = 1")

    service.kill_sandbox(docker_client, before.sandbox.container_id)
    after = client.execute(chat, "print('z' in globals())")

    assert after.sandbox_replaced is True
    assert after.state_lost is True
    assert after.stdout == "False\n"
    assert after.sandbox.container_id != before.sandbox.container_id
    assert client.execute(chat, "print('fine')").sandbox_replaced is False


def test_sandbox_resource_and_listing(client: SandboxdClient) -> None:
    chat = uuid.uuid4()
    assert client.get_sandbox(chat) is None

    ensured = client.ensure_sandbox(chat)
    renewed = client.renew_sandbox(chat)
    listed = client.list_sandboxes(status="running", limit=1000)
    client.destroy_sandbox(chat)
    client.destroy_sandbox(chat)

    assert renewed.session_id == ensured.session_id
    assert renewed.expires_at >= ensured.expires_at
    assert str(chat) in {item.chat_id for item in listed.items}
    assert client.get_sandbox(chat) is None


def test_metrics_and_request_ids(service: ServiceProcess, client: SandboxdClient) -> None:
    client.execute(uuid.uuid4(), "print(1)")
    response = httpx.get(
        f"{service.http_url}/metrics", headers={"Authorization": f"Bearer {API_KEY}"}
    )

    assert response.status_code == 200
    assert response.headers["x-request-id"]
    assert 'sandboxd_executions_total{outcome="ok",transport="http"}' in response.text
    assert "sandboxd_live_sandboxes" in response.text

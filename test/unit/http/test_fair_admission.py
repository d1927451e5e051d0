"""Execution slots are shared fairly: one key's flood leaves slots for the others, and messages
waiting behind their chat's lock hold no slot."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable

import httpx
from fastapi.testclient import TestClient

from testkit.container import make_container
from testkit.fakes import FakeRuntime

KEYS = "alice:alice-secret,bob:bob-secret"
ALICE = {"Authorization": "Bearer alice-secret"}
BOB = {"Authorization": "Bearer bob-secret"}


def _post(client: TestClient, headers: dict[str, str], chat: str, code: str) -> httpx.Response:
    return client.post(f"/v1/chats/{chat}/executions", json={"code": code}, headers=headers)


def _in_threads(calls: list[Callable[[], httpx.Response]]) -> tuple[list, list[threading.Thread]]:
    results: list[httpx.Response] = []
    threads = [threading.Thread(target=lambda c=call: results.append(c())) for call in calls]
    for thread in threads:
        thread.start()
    return results, threads


def test_a_flooding_key_is_capped_and_another_key_still_runs(runtime: FakeRuntime) -> None:
    container = make_container(
        runtime, api_keys=KEYS, max_inflight_executions=4, max_inflight_executions_per_key=2
    )
    with TestClient(container.http_app()) as client:
        results, threads = _in_threads(
            [lambda: _post(client, ALICE, str(uuid.uuid4()), "block") for _ in range(2)]
        )
        try:
            for _ in range(2):
                assert runtime.blocked.acquire(timeout=10)
            flood = _post(client, ALICE, str(uuid.uuid4()), "x")
            other = _post(client, BOB, str(uuid.uuid4()), "x")
        finally:
            runtime.gate.set()
            for thread in threads:
                thread.join(10)
    assert flood.status_code == 429
    assert flood.json()["code"] == "too_many_executions"
    assert "this API key" in flood.json()["message"]
    assert other.status_code == 200
    assert [r.status_code for r in results] == [200, 200]


def test_messages_queued_behind_their_chat_hold_no_slot(runtime: FakeRuntime) -> None:
    container = make_container(
        runtime, api_keys=KEYS, max_inflight_executions=2, max_inflight_executions_per_key=8
    )
    api = container.api()
    busy_chat = str(uuid.uuid4())
    with TestClient(container.http_app()) as client:
        results, threads = _in_threads([lambda: _post(client, ALICE, busy_chat, "block")])
        try:
            assert runtime.blocked.acquire(timeout=10)
            more, waiting = _in_threads(
                [lambda: _post(client, ALICE, busy_chat, "x") for _ in range(2)]
            )
            threads += waiting
            while api.queued < 2:
                threading.Event().wait(0.01)
            # The busy chat has one slot; the other is free for another chat.
            assert api.inflight == 1
            other = _post(client, BOB, str(uuid.uuid4()), "x")
        finally:
            runtime.gate.set()
            for thread in threads:
                thread.join(10)
    assert other.status_code == 200, other.text
    assert [r.status_code for r in results + more] == [200] * 3
    assert api.inflight == 0 and api.queued == 0

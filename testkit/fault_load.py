"""A steady load of executes over HTTP that records every outcome, for the fault tests and the
recovery benchmark.

One closed-loop caller thread per chat; each execute bumps a counter kept in the chat's
interpreter and prints it, so the outcomes show whether state survived (the values keep
climbing), was lost (``state_lost``, the counter restarts at 1) or was repeated.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import httpx

COUNTER_CODE = "n = globals().get('n', 0) + 1\nprint(n)"


@dataclass(frozen=True)
class Outcome:
    chat: uuid.UUID
    at: float  # time.monotonic() when the answer came
    status: int  # HTTP status; 0: no answer (transport error)
    code: str = ""  # the error code of an error answer
    value: int | None = None  # the counter the execute printed
    session_id: str = ""
    replaced: bool = False
    state_lost: bool = False
    retry_after: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == 200


class ExecuteLoad:
    def __init__(
        self,
        base_url: str,
        api_key: str,
        chats: list[uuid.UUID],
        pause_s: float = 0.02,
        timeout_s: float = 120.0,
    ) -> None:
        self._base_url = base_url
        self._api_key = api_key
        self.chats = chats
        self._pause_s = pause_s
        self._timeout_s = timeout_s
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._outcomes: list[Outcome] = []
        self._threads = [
            threading.Thread(target=self._caller, args=(chat,), daemon=True) for chat in chats
        ]

    def __enter__(self) -> ExecuteLoad:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=self._timeout_s + 10)

    @property
    def outcomes(self) -> list[Outcome]:
        with self._lock:
            return list(self._outcomes)

    def since(self, at: float) -> list[Outcome]:
        return [outcome for outcome in self.outcomes if outcome.at >= at]

    def wait_until(
        self, condition: Callable[[list[Outcome]], bool], timeout_s: float, what: str
    ) -> float:
        """Poll the outcomes until ``condition`` holds; the monotonic time it did."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if condition(self.outcomes):
                return time.monotonic()
            time.sleep(0.05)
        raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}")

    def _caller(self, chat: uuid.UUID) -> None:
        with httpx.Client(
            base_url=self._base_url,
            headers={"Authorization": f"Bearer {self._api_key}"},
            timeout=self._timeout_s,
        ) as client:
            while not self._stop.is_set():
                outcome = execute_once(client, chat)
                with self._lock:
                    self._outcomes.append(outcome)
                self._stop.wait(self._pause_s)


def execute_once(client: httpx.Client, chat: uuid.UUID, code: str = COUNTER_CODE) -> Outcome:
    try:
        response = client.post(f"/v1/chats/{chat}/executions", json={"code": code})
    except httpx.TransportError as exc:
        return Outcome(chat, time.monotonic(), 0, code=type(exc).__name__)
    at = time.monotonic()
    try:
        body = response.json()
    except ValueError:
        body = {}
    if response.status_code != 200:
        return Outcome(
            chat,
            at,
            response.status_code,
            code=str(body.get("code", "")),
            retry_after=response.headers.get("Retry-After"),
        )
    stdout = str(body.get("stdout", "")).strip()
    return Outcome(
        chat,
        at,
        200,
        value=int(stdout) if stdout.isdigit() else None,
        session_id=str(body.get("session", {}).get("session_id", "")),
        replaced=bool(body.get("sandbox_replaced")),
        state_lost=bool(body.get("state_lost")),
    )


def each_served(
    outcomes: list[Outcome], chats: list[uuid.UUID], after: float, times: int = 1
) -> bool:
    """True when every chat got at least ``times`` successful answers after ``after``."""
    return all(
        sum(o.ok and o.chat == chat and o.at > after for o in outcomes) >= times for chat in chats
    )

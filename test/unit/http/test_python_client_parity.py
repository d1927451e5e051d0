"""The Python client's surface that matches the TypeScript client's: listings with ``truncated``,
pages with ``limit``/``offset``, ERROR_CODES, downloads as iterators of chunks (digest checked),
uploads from iterators, a file timeout of the client's own. Over the real composition root with
in-memory fakes, served on loopback."""

from __future__ import annotations

import asyncio
import hashlib
import io
import uuid
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
from sandboxd_client import ERROR_CODES, AsyncSandboxdClient, SandboxdClient, SandboxdError
from sandboxd_client.files import CHUNK

from entrypoint.container import Container
from entrypoint.errors import ERROR_TABLE, INTERNAL_ERROR
from entrypoint.http.errors import _HTTP_CODES
from testkit.container import API_KEY, make_container
from testkit.fakes import FakeFileStore
from testkit.live import live_service

DATA = bytes(range(256)) * (10 * CHUNK // 1024)  # 2.5 chunks


def test_the_clients_error_codes_are_the_services() -> None:
    service_codes = {row.code for row in ERROR_TABLE} | {INTERNAL_ERROR}
    service_codes |= set(_HTTP_CODES.values()) | {"invalid_request", "not_ready"}
    assert set(ERROR_CODES) == service_codes
    assert len(ERROR_CODES) == len(set(ERROR_CODES))


def _pieces() -> Iterator[bytes]:
    for start in range(0, len(DATA), 300_000):
        yield DATA[start : start + 300_000]


async def _async_pieces() -> AsyncIterator[bytes]:
    for piece in _pieces():
        await asyncio.sleep(0)
        yield piece


def _limit_listings(container: Container, limit: int) -> None:
    store = container.file_store()
    assert isinstance(store, FakeFileStore)
    store.list_limit = limit


def test_the_client_streams_files_both_ways_and_reads_listings_and_pages() -> None:
    chat = uuid.uuid4()
    container = make_container()
    with (
        live_service(container) as live,
        SandboxdClient(live.http_url, api_key=API_KEY) as client,
    ):
        stored = client.upload_file(chat, "big.bin", _pieces())
        assert (stored.size, stored.sha256) == (len(DATA), hashlib.sha256(DATA).hexdigest())
        chunks = list(client.iter_file(chat, "big.bin"))
        assert len(chunks) == 3 and b"".join(chunks) == DATA
        with pytest.raises(TypeError, match="AsyncSandboxdClient"):
            client.upload_file(chat, "a.bin", _async_pieces())

        client.upload_file(chat, "small.txt", b"x")
        listing = client.list_files(chat)
        assert [f.path for f in listing] == ["big.bin", "small.txt"] and len(listing) == 2
        assert listing.truncated is False
        _limit_listings(container, 1)
        listing = client.list_files(chat)
        assert ([f.path for f in listing], listing.truncated) == (["big.bin"], True)

        page = client.list_sandboxes(limit=5, offset=0)
        assert (page.limit, page.offset, len(page.items), page.next_offset) == (5, 0, 1, None)
        assert client.list_sandboxes(offset=1).offset == 1

        missing = client.iter_file(chat, "gone.bin")
        with pytest.raises(SandboxdError) as caught:
            next(missing)
        assert (caught.value.status, caught.value.code) == (404, "file_not_found")


def test_the_async_client_streams_files_both_ways_and_reads_listings_and_pages() -> None:
    chat = uuid.uuid4()
    container = make_container()

    async def scenario(url: str) -> None:
        async with AsyncSandboxdClient(url, api_key=API_KEY) as client:
            for name, source in (("a.bin", _async_pieces()), ("b.bin", _pieces())):
                stored = await client.upload_file(chat, name, source)
                assert stored.sha256 == hashlib.sha256(DATA).hexdigest(), name
            chunks = [chunk async for chunk in client.iter_file(chat, "b.bin")]
            assert len(chunks) == 3 and b"".join(chunks) == DATA

            listing = await client.list_files(chat)
            assert ([f.path for f in listing], listing.truncated) == (["a.bin", "b.bin"], False)
            _limit_listings(container, 1)
            listing = await client.list_files(chat)
            assert ([f.path for f in listing], listing.truncated) == (["a.bin"], True)

            page = await client.list_sandboxes(limit=7, offset=0)
            assert (page.limit, page.offset, len(page.items)) == (7, 0, 1)

            with pytest.raises(SandboxdError) as caught:
                async for _ in client.iter_file(chat, "gone.bin"):
                    pass
            assert caught.value.code == "file_not_found"

    with live_service(container) as live:
        asyncio.run(scenario(live.http_url))


def _tampered(response: httpx.Response, body: bytes) -> httpx.Response:
    """The service's download with one bit of its content flipped, its headers (and so its
    X-Sandboxd-Sha256) as they came."""
    headers = [
        (k, v)
        for k, v in response.headers.multi_items()
        if k.lower() not in ("content-length", "transfer-encoding")
    ]
    return httpx.Response(response.status_code, headers=headers, content=body[:-1] + b"\x00")


class _Tampering(httpx.BaseTransport):
    def __init__(self) -> None:
        self._real = httpx.HTTPTransport()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = self._real.handle_request(request)
        if request.method != "GET" or "/files/" not in request.url.path:
            return response
        body = response.read()
        response.close()
        return _tampered(response, body)


class _AsyncTampering(httpx.AsyncBaseTransport):
    def __init__(self) -> None:
        self._real = httpx.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self._real.handle_async_request(request)
        if request.method != "GET" or "/files/" not in request.url.path:
            return response
        body = await response.aread()
        await response.aclose()
        return _tampered(response, body)


def test_a_tampered_download_raises_digest_mismatch_after_its_last_chunk() -> None:
    chat = uuid.uuid4()
    with (
        live_service(make_container()) as live,
        SandboxdClient(live.http_url, api_key=API_KEY, transport=_Tampering()) as client,
    ):
        client.upload_file(chat, "f.bin", DATA)
        received = []
        with pytest.raises(SandboxdError) as caught:
            for chunk in client.iter_file(chat, "f.bin"):
                received.append(chunk)
        assert (caught.value.status, caught.value.code) == (0, "digest_mismatch")
        # Every chunk came before the error: the check is on the whole content, at its end.
        assert len(b"".join(received)) == len(DATA)
        with pytest.raises(SandboxdError, match="digest_mismatch"):
            client.download_file(chat, "f.bin", io.BytesIO())


def test_a_tampered_download_raises_digest_mismatch_in_the_async_client() -> None:
    chat = uuid.uuid4()

    async def scenario(url: str) -> None:
        async with AsyncSandboxdClient(url, api_key=API_KEY, transport=_AsyncTampering()) as c:
            await c.upload_file(chat, "f.bin", DATA)
            with pytest.raises(SandboxdError) as caught:
                async for _ in c.iter_file(chat, "f.bin"):
                    pass
            assert (caught.value.status, caught.value.code) == (0, "digest_mismatch")
            with pytest.raises(SandboxdError, match="digest_mismatch"):
                await c.download_file(chat, "f.bin", io.BytesIO())

    with live_service(make_container()) as live:
        asyncio.run(scenario(live.http_url))


def _timeouts_seen() -> tuple[list[dict[str, float]], httpx.MockTransport]:
    seen: list[dict[str, float]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.extensions["timeout"])
        if request.method == "PUT":
            request.read()
            return httpx.Response(200, json={"path": "f", "size": 1, "sha256": ""})
        return httpx.Response(200, content=b"x")

    return seen, httpx.MockTransport(handler)


@pytest.mark.parametrize("file_timeout_s", [None, 5.0])
def test_file_transfers_take_the_clients_file_timeout(file_timeout_s: float | None) -> None:
    expected = 600.0 if file_timeout_s is None else file_timeout_s
    seen, transport = _timeouts_seen()
    if file_timeout_s is None:
        client = SandboxdClient("http://sandboxd", transport=transport)
    else:
        client = SandboxdClient("http://sandboxd", transport=transport, file_timeout_s=expected)
    with client:
        client.upload_file("chat", "f", b"x")
        assert b"".join(client.iter_file("chat", "f")) == b"x"
        client.download_file("chat", "f", io.BytesIO())
    assert [t["read"] for t in seen] == [expected] * 3

    seen, async_transport = _timeouts_seen()

    async def scenario() -> None:
        client = (
            AsyncSandboxdClient("http://sandboxd", transport=async_transport)
            if file_timeout_s is None
            else AsyncSandboxdClient(
                "http://sandboxd", transport=async_transport, file_timeout_s=expected
            )
        )
        async with client:
            await client.upload_file("chat", "f", b"x")
            assert [c async for c in client.iter_file("chat", "f")] == [b"x"]
            await client.download_file("chat", "f", io.BytesIO())

    asyncio.run(scenario())
    assert [t["read"] for t in seen] == [expected] * 3

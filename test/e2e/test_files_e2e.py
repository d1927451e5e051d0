"""Files and rich outputs through a real ``sandboxd serve`` (HTTP), with Docker and QEMU:
upload a CSV, plot it, get a PNG that decodes; and the attacks — traversal, a symlink planted
by user code, a file past the limit."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sandboxd_client import AsyncSandboxdClient, SandboxdError

from testkit.service import API_KEY, ServiceFactory, ServiceProcess

MAX_FILE_BYTES = 4 * 1024 * 1024
AUTH = {"Authorization": f"Bearer {API_KEY}"}
CSV = "x,y\n" + "".join(f"{i},{i * i}\n" for i in range(20))


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

        return module_services(
            runtime="qemu",
            qemu_image_dir=ensure_qemu_images(),
            max_file_bytes=str(MAX_FILE_BYTES),
            max_timeout_s="600",
        )
    return module_services(max_file_bytes=str(MAX_FILE_BYTES), max_timeout_s="600")


@pytest.fixture
def http(service: ServiceProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=service.http_url, headers=AUTH, timeout=600) as client:
        yield client


def execute(http: httpx.Client, chat: str, code: str, timeout_s: float = 300) -> dict:
    response = http.post(
        f"/v1/chats/{chat}/executions", json={"code": code, "timeout_s": timeout_s}
    )
    assert response.status_code == 200, response.text
    body: dict = response.json()
    return body


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert data[12:16] == b"IHDR"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def test_upload_a_csv_plot_it_and_get_the_png(http: httpx.Client, service: ServiceProcess) -> None:
    chat = str(uuid.uuid4())
    put = http.put(f"/v1/chats/{chat}/files/data/points.csv", content=CSV.encode())
    assert put.status_code == 200, put.text
    assert put.json()["sha256"] == hashlib.sha256(CSV.encode()).hexdigest()
    if service.runtime == "qemu":  # pandas takes minutes to import under TCG
        load = "import csv\nrows = list(csv.DictReader(open('data/points.csv')))\n"
        load += "xs = [int(r['x']) for r in rows]; ys = [int(r['y']) for r in rows]\n"
    else:
        load = "import pandas as pd\ndf = pd.read_csv('data/points.csv')\n"
        load += "xs, ys = df['x'], df['y']\n"
    result = execute(
        http,
        chat,
        load + "import matplotlib.pyplot as plt\n"
        "plt.plot(xs, ys)\n"
        "import os; os.makedirs('out', exist_ok=True); plt.savefig('out/plot.png')\n"
        "plt.show()\n"
        "len(xs)",
        timeout_s=500,
    )
    assert result["exit_code"] == 0, result["stderr"]
    kinds = [o["mime_type"] for o in result["outputs"]]
    assert kinds == ["image/png", "text/plain"], kinds
    width, height = png_size(base64.b64decode(result["outputs"][0]["data"]))
    assert width > 100 and height > 100
    assert result["outputs"][1]["data"] == "20"
    assert [f["path"] for f in result["changed_files"]] == ["out/plot.png"]
    got = http.get(f"/v1/chats/{chat}/files/out/plot.png")
    assert got.status_code == 200
    assert got.headers["content-type"] == "image/png"
    assert got.headers["x-sandboxd-sha256"] == hashlib.sha256(got.content).hexdigest()
    png_size(got.content)
    listing = http.get(f"/v1/chats/{chat}/files", params={"prefix": "out/"}).json()
    assert [f["path"] for f in listing["files"]] == ["out/plot.png"]
    assert http.delete(f"/v1/chats/{chat}/files/out/plot.png").status_code == 204
    assert http.get(f"/v1/chats/{chat}/files/out/plot.png").status_code == 404


def test_traversal_is_refused(http: httpx.Client) -> None:
    chat = str(uuid.uuid4())
    for path in ("..%2F..%2Fetc%2Fpasswd", "%2Fetc%2Fpasswd", "a/..%2F..%2Fx"):
        response = http.get(f"/v1/chats/{chat}/files/{path}")
        assert (response.status_code, response.json()["code"]) == (422, "path_refused"), path


def test_symlinks_planted_by_user_code_are_refused(http: httpx.Client) -> None:
    chat = str(uuid.uuid4())
    planted = execute(
        http,
        chat,
        "import os\nos.symlink('/etc/passwd', 'passwd')\nos.symlink('/proc/1/environ', 'env')\n"
        "os.symlink('/', 'root')",
    )
    assert planted["exit_code"] == 0, planted["stderr"]
    for path in ("passwd", "env", "root/etc/passwd", "root/proc/1/environ"):
        response = http.get(f"/v1/chats/{chat}/files/{path}")
        assert (response.status_code, response.json()["code"]) == (422, "path_refused"), path
        assert "root:" not in response.text
    response = http.put(f"/v1/chats/{chat}/files/root/tmp/planted", content=b"x")
    assert (response.status_code, response.json()["code"]) == (422, "path_refused")


def test_a_file_past_the_limit_is_413(http: httpx.Client) -> None:
    chat = str(uuid.uuid4())
    response = http.put(f"/v1/chats/{chat}/files/big.bin", content=b"x" * (MAX_FILE_BYTES + 1))
    assert (response.status_code, response.json()["code"]) == (413, "file_too_large")

    def chunked() -> Iterator[bytes]:
        for _ in range(MAX_FILE_BYTES // 65536 + 2):
            yield b"y" * 65536

    response = http.put(f"/v1/chats/{chat}/files/big2.bin", content=chunked())
    assert (response.status_code, response.json()["code"]) == (413, "file_too_large")


def test_display_events_are_streamed(http: httpx.Client) -> None:
    chat = str(uuid.uuid4())
    events: list[tuple[str, dict]] = []
    with http.stream(
        "POST",
        f"/v1/chats/{chat}/executions",
        json={"code": "print('a')\ndisplay({'k': 1})\n7"},
        headers={"Accept": "text/event-stream"},
    ) as response:
        event = ""
        for line in response.iter_lines():
            if line.startswith("event: "):
                event = line.removeprefix("event: ")
            elif line.startswith("data: "):
                events.append((event, json.loads(line.removeprefix("data: "))))
    displays = [data for kind, data in events if kind == "display"]
    assert [d["data"] for d in displays] == ["{'k': 1}", "7"]
    result = [data for kind, data in events if kind == "result"][-1]
    assert [o["data"] for o in result["outputs"]] == ["{'k': 1}", "7"]


def test_the_async_python_client_streams_files_both_ways(
    service: ServiceProcess, tmp_path: Path
) -> None:
    data = os.urandom(3 * 1024 * 1024 + 1234)  # several data frames, an odd tail
    source = tmp_path / "in.bin"
    source.write_bytes(data)
    chats = [uuid.uuid4(), uuid.uuid4()]

    async def scenario() -> None:
        async with AsyncSandboxdClient(service.http_url, api_key=API_KEY, timeout_s=300) as client:
            # Two chats at once: each upload streams from its own local file object.
            first, second = await asyncio.gather(
                client.upload_file(chats[0], "data/in.bin", source),
                client.upload_file(chats[1], "copy.bin", io.BytesIO(data)),
            )
            digest = hashlib.sha256(data).hexdigest()
            assert (first.size, first.sha256) == (len(data), digest)
            assert second.sha256 == digest
            assert (await client.upload_file(chats[0], "b.txt", b"hello")).size == 5
            ran = await client.execute(chats[0], "print(len(open('data/in.bin','rb').read()))")
            assert ran.stdout == f"{len(data)}\n"
            out = io.BytesIO()
            got = await client.download_file(chats[1], "copy.bin", out)
            assert out.getvalue() == data and got.sha256 == digest
            await client.download_file(chats[0], "data/in.bin", tmp_path / "out.bin")
            assert (tmp_path / "out.bin").read_bytes() == data
            listed = await client.list_files(chats[0])
            assert [(f.path, f.size) for f in listed] == [("b.txt", 5), ("data/in.bin", len(data))]
            assert [f.path for f in await client.list_files(chats[0], "data/")] == ["data/in.bin"]
            await client.delete_file(chats[0], "b.txt")
            with pytest.raises(SandboxdError) as caught:
                await client.download_file(chats[0], "b.txt", io.BytesIO())
            assert caught.value.code == "file_not_found"
            with pytest.raises(SandboxdError) as refused:
                await client.upload_file(
                    chats[0], "big.bin", io.BytesIO(b"z" * (MAX_FILE_BYTES + 1))
                )
            assert refused.value.code == "file_too_large"
            for chat in chats:
                await client.destroy_sandbox(chat)

    asyncio.run(scenario())

"""Workspace files and rich outputs, through a real ``sandboxd serve`` with Docker sandboxes.

    uv run python -m bench.bench_files [--megabytes 50] [--rounds 3]

- upload and download of one ``--megabytes`` file through HTTP (the body streamed, the service
  spools it and sends it to the agent in 1 MiB binary data frames, pipelined), against
  ``docker cp`` of the same file into and out of a container of the same image (the target:
  HTTP within 1.5x of docker cp; ratios of the best and of the median rounds).
  ``docker cp`` refuses the sandbox itself (its root filesystem is read-only), so the baseline
  container is created, not started, from the sandbox's image;
- time from sending ``plt.plot(...); plt.show()`` to the PNG in the result (matplotlib already
  imported in the chat, so the import is not measured);
- what a full workspace costs each execution: the median of ``x = 1`` in a new chat, then again
  once its workspace holds ``--workspace-files`` files (an execution's changed files are found by
  walking the workspace: once per execution, the walk before it being the previous one's).

Prints JSON: best and median seconds per operation over ``--rounds``, MB/s, and the ratios.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import os
import statistics
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

from bench.common import DOCKER, emit, running_service
from testkit.service import API_KEY

PLOT = "plt.plot([1, 2, 3], [3, 1, 2])\nplt.show()"


def timed(fn: Any) -> tuple[float, Any]:
    started = time.perf_counter()
    value = fn()
    return time.perf_counter() - started, value


def stats(samples: list[float], megabytes: float | None = None) -> dict[str, float]:
    best = min(samples)
    out = {"best_s": round(best, 4), "median_s": round(statistics.median(samples), 4)}
    if megabytes:
        out["best_mb_per_s"] = round(megabytes / best, 1)
    return out


def ratio_of_medians(ours: list[float], baseline: list[float]) -> float:
    return round(statistics.median(ours) / statistics.median(baseline), 2)


def execute_in_full_workspace(http: httpx.Client, files: int, samples: int = 30) -> dict[str, Any]:
    chat = uuid.uuid4()

    def median_ms() -> float:
        taken = []
        for _ in range(samples):
            elapsed, response = timed(
                lambda: http.post(f"/v1/chats/{chat}/executions", json={"code": "x = 1"})
            )
            response.raise_for_status()
            taken.append(elapsed * 1000)
        return round(statistics.median(taken), 2)

    empty = median_ms()
    fill = (
        f"import os\nos.makedirs('many')\nfor i in range({files}): open(f'many/{{i}}', 'w').close()"
    )
    http.post(
        f"/v1/chats/{chat}/executions", json={"code": fill, "timeout_s": 120}
    ).raise_for_status()
    full = median_ms()
    http.delete(f"/v1/chats/{chat}/sandbox")
    return {
        "files": files,
        "execute_ms_empty_workspace": empty,
        "execute_ms_full_workspace": full,
        "walk_ms_per_execute": round(full - empty, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--megabytes", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workspace-files", type=int, default=3000)
    args = parser.parse_args()
    size = args.megabytes * 1024 * 1024
    with (
        tempfile.TemporaryDirectory(prefix="sbx-bench-files-") as tmp,
        running_service(
            "files",
            max_file_bytes=str(size * 2),
            docker_workspace_mb="512",
            docker_memory_mb="1024",
        ) as svc,
        httpx.Client(
            base_url=svc.http_url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=600
        ) as http,
    ):
        source = Path(tmp) / "data.bin"
        source.write_bytes(os.urandom(size))
        digest = hashlib.sha256(source.read_bytes()).hexdigest()
        chat = uuid.uuid4()
        warm = http.post(
            f"/v1/chats/{chat}/executions",
            json={"code": "import matplotlib.pyplot as plt", "timeout_s": 120},
        )
        warm.raise_for_status()
        sandbox = warm.json()["session"]["container_id"]
        image = subprocess.run(
            [DOCKER, "inspect", "-f", "{{.Config.Image}}", sandbox],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        container = subprocess.run(
            [DOCKER, "create", "--label", "sandboxd.bench=files", image],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        try:
            uploads, downloads, cp_in, cp_out, plots = [], [], [], [], []
            for _ in range(args.rounds):

                def upload() -> None:
                    with source.open("rb") as f:
                        response = http.put(f"/v1/chats/{chat}/files/data.bin", content=f)
                    response.raise_for_status()
                    assert response.json()["sha256"] == digest

                def download() -> None:
                    h = hashlib.sha256()
                    with http.stream("GET", f"/v1/chats/{chat}/files/data.bin") as response:
                        response.raise_for_status()
                        for chunk in response.iter_bytes():
                            h.update(chunk)
                    assert h.hexdigest() == digest

                out = Path(tmp) / "out.bin"
                uploads.append(timed(upload)[0])
                downloads.append(timed(download)[0])
                cp_in.append(
                    timed(
                        lambda: subprocess.run(
                            [DOCKER, "cp", str(source), f"{container}:/workspace/cp.bin"],
                            check=True,
                        )
                    )[0]
                )
                cp_out.append(
                    timed(
                        lambda out=out: subprocess.run(
                            [DOCKER, "cp", f"{container}:/workspace/cp.bin", str(out)], check=True
                        )
                    )[0]
                )
                elapsed, response = timed(
                    lambda: http.post(f"/v1/chats/{chat}/executions", json={"code": PLOT})
                )
                outputs = response.json()["outputs"]
                assert base64.b64decode(outputs[0]["data"])[:8] == b"\x89PNG\r\n\x1a\n"
                plots.append(elapsed)
            report: dict[str, Any] = {
                "benchmark": "files",
                "megabytes": args.megabytes,
                "rounds": args.rounds,
                "http_upload": stats(uploads, args.megabytes),
                "http_download": stats(downloads, args.megabytes),
                "docker_cp_in": stats(cp_in, args.megabytes),
                "docker_cp_out": stats(cp_out, args.megabytes),
                "upload_vs_docker_cp": round(min(uploads) / min(cp_in), 2),
                "download_vs_docker_cp": round(min(downloads) / min(cp_out), 2),
                "upload_vs_docker_cp_median": ratio_of_medians(uploads, cp_in),
                "download_vs_docker_cp_median": ratio_of_medians(downloads, cp_out),
                "target_ratio": 1.5,
                "plot_show_to_png": stats(plots),
                "execute_in_full_workspace": execute_in_full_workspace(http, args.workspace_files),
                "load_average": os.getloadavg()[0],
            }
        finally:
            subprocess.run([DOCKER, "rm", "-f", container], check=False, capture_output=True)
        emit(report)


if __name__ == "__main__":
    main()

"""The qcow2 overlay pool with real qemu-img (no VM is started)."""

from __future__ import annotations

import json
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from adapter.qemu.overlay_pool import OverlayPool, qemu_img_overlay
from testkit.fakes import FakeLogger


@pytest.fixture
def base(tmp_path: Path) -> Path:
    path = tmp_path / "base.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), "16M"], check=True)
    return path


@pytest.fixture
def pool(tmp_path: Path) -> Iterator[OverlayPool]:
    pool = OverlayPool(tmp_path / "pool", 2, FakeLogger())
    yield pool
    pool.stop()


def backing_of(overlay: Path) -> str:
    info = subprocess.run(
        ["qemu-img", "info", "--output=json", str(overlay)],
        check=True,
        capture_output=True,
        text=True,
    )
    return str(json.loads(info.stdout)["backing-filename"])


def wait_available(pool: OverlayPool, base: Path, count: int) -> None:
    # Polls the pool's own state (no timing assertion): bounded only to fail a broken pool.
    for _ in range(2000):
        if pool.available(base) >= count:
            return
        threading.Event().wait(0.005)
    raise AssertionError(f"the pool never held {count} overlays")


def test_acquire_hands_out_pooled_overlays_then_creates_on_demand(
    pool: OverlayPool, base: Path, tmp_path: Path
) -> None:
    pool.start([base])
    wait_available(pool, base, 2)
    pool.stop()  # freeze the queue: no refill between the acquires below
    pool.start([base])
    wait_available(pool, base, 2)

    targets = [tmp_path / f"vm{i}" / "overlay.qcow2" for i in range(3)]
    for target in targets:
        target.parent.mkdir()
        pool.acquire(base, target)

    for target in targets:
        assert backing_of(target) == str(base)
    stats = pool.stats()
    assert stats.pooled + stats.on_demand == 3
    assert stats.pooled >= 2


def test_acquire_before_start_and_start_twice_are_errors(pool: OverlayPool, base: Path) -> None:
    with pytest.raises(RuntimeError):
        pool.acquire(base, base.with_name("x.qcow2"))
    pool.start([base])
    with pytest.raises(RuntimeError):
        pool.start([base])
    pool.stop()
    pool.stop()  # safe
    pool.start([base])  # restart after stop works
    wait_available(pool, base, 1)


def test_acquiring_onto_an_existing_path_raises(pool: OverlayPool, base: Path, tmp_path: Path):
    pool.start([base])
    wait_available(pool, base, 1)
    target = tmp_path / "taken.qcow2"
    target.write_bytes(b"mine")
    with pytest.raises(FileExistsError):
        pool.acquire(base, target)
    assert target.read_bytes() == b"mine"


def test_an_uncreatable_directory_falls_back_to_on_demand(base: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    logger = FakeLogger()
    pool = OverlayPool(blocker / "pool", 2, logger)
    pool.start([base])
    target = tmp_path / "overlay.qcow2"
    pool.acquire(base, target)
    pool.stop()
    assert backing_of(target) == str(base)
    assert pool.stats().on_demand == 1 and pool.stats().pooled == 0
    assert "overlay_pool_disabled" in logger.events()


def test_a_failed_move_falls_back_to_on_demand(base: Path, tmp_path: Path) -> None:
    logger = FakeLogger()
    pool = OverlayPool(tmp_path / "pool", 1, logger)
    pool.start([base])
    wait_available(pool, base, 1)
    for pooled in (tmp_path / "pool").rglob("*.qcow2"):
        pooled.unlink()  # the move of the queued overlay will fail
    target = tmp_path / "ok.qcow2"
    pool.acquire(base, target)
    pool.stop()
    assert backing_of(target) == str(base)
    assert pool.stats().on_demand == 1 and pool.stats().pooled == 0
    assert "overlay_pool_move_failed" in logger.events()


def test_ratio_zero_disables_the_pool(base: Path, tmp_path: Path) -> None:
    disabled = OverlayPool.by_ratio(tmp_path / "pool", capacity=16, ratio=0, logger=FakeLogger())
    assert disabled.size == 0
    disabled.start([base])
    disabled.acquire(base, tmp_path / "a.qcow2")
    disabled.stop()
    assert disabled.stats().on_demand == 1
    assert not (tmp_path / "pool").exists()
    assert (
        OverlayPool.by_ratio(tmp_path / "p", capacity=16, ratio=0.01, logger=FakeLogger()).size == 1
    )


def test_stop_removes_pooled_overlays(pool: OverlayPool, base: Path, tmp_path: Path) -> None:
    pool.start([base])
    wait_available(pool, base, 2)
    pool.stop()
    assert list((tmp_path / "pool").rglob("*.qcow2")) == []


def test_qemu_img_overlay_creates_a_backed_overlay(base: Path, tmp_path: Path) -> None:
    target = tmp_path / "direct.qcow2"
    qemu_img_overlay(base, target)
    assert backing_of(target) == str(base)


def test_acquirer_follows_the_runtime_base_and_drops_the_old_ones(
    pool: OverlayPool, base: Path, tmp_path: Path
) -> None:
    assert pool.acquirer(base) is not None  # started on first use
    wait_available(pool, base, 2)
    assert pool.acquirer(base) is not None  # same base: the pool keeps its overlays
    assert pool.available(base) == 2

    rebuilt = tmp_path / "rebuilt.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(rebuilt), "16M"], check=True)
    acquire = pool.acquirer(rebuilt)
    assert acquire is not None
    assert pool.available(base) == 0  # a rebuilt image: the old base's overlays are gone
    wait_available(pool, rebuilt, 2)
    target = tmp_path / "vm" / "overlay.qcow2"
    target.parent.mkdir()
    acquire(rebuilt, target)
    assert backing_of(target) == str(rebuilt)

    disabled = OverlayPool(tmp_path / "off", 0, FakeLogger())
    assert disabled.acquirer(base) is None

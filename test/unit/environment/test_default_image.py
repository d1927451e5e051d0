"""The default image's package list and matplotlib default (adapter.image.rootfs)."""

from __future__ import annotations

from pathlib import Path

from adapter.image.rootfs import PACKAGES, _default_to_agg


def test_the_default_image_serves_data_analysis_and_offline_installs() -> None:
    for package in (
        "python3-numpy",
        "python3-pandas",
        "python3-matplotlib",
        "python3-scipy",
        "python3-pil",
        "python3-pip",
    ):
        assert package in PACKAGES


def test_matplotlib_defaults_to_agg_keeping_every_other_default(tmp_path: Path) -> None:
    rc = tmp_path / "etc" / "matplotlibrc"
    rc.parent.mkdir()
    rc.write_text("## comment\n#backend: TkAgg\nlines.linewidth: 1.5\n  backend : GTK3Agg\n")
    _default_to_agg(tmp_path)
    assert rc.read_text() == "## comment\nlines.linewidth: 1.5\nbackend: Agg\n"
    _default_to_agg(tmp_path)  # idempotent
    assert rc.read_text().count("backend") == 1


def test_a_tree_without_matplotlib_is_left_alone(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    _default_to_agg(tmp_path)
    assert list((tmp_path / "etc").iterdir()) == []

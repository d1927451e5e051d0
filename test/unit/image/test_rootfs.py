"""Root filesystem inputs: the mirror comes from apt's sources, the hash from every input."""

from __future__ import annotations

from pathlib import Path

from adapter.image import rootfs


def write_sources(apt: Path, deb822: str = "", one_line: str = "") -> Path:
    (apt / "sources.list.d").mkdir(parents=True)
    if deb822:
        (apt / "sources.list.d" / "debian.sources").write_text(deb822)
    if one_line:
        (apt / "sources.list").write_text(one_line)
    return apt


def test_mirror_from_deb822_sources_skips_security_and_other_suites(tmp_path: Path) -> None:
    apt = write_sources(
        tmp_path,
        deb822=(
            "Types: deb\nURIs: http://security.example/debian-security\n"
            "Suites: bookworm-security\nComponents: main\n\n"
            "Types: deb\nURIs: https://nodes.example/node\nSuites: nodistro\nComponents: main\n\n"
            "Types: deb\n# comment\nURIs: http://mirror.example/debian/\n"
            "Suites: bookworm bookworm-updates\nComponents: main contrib\n"
        ),
    )
    assert rootfs.configured_mirror(apt) == "http://mirror.example/debian"


def test_mirror_from_one_line_sources(tmp_path: Path) -> None:
    apt = write_sources(
        tmp_path,
        one_line=(
            "deb https://packages.cloud.example/apt cloud-sdk-bookworm main\n"
            "deb [arch=amd64] http://old.example/debian bookworm main\n"
        ),
    )
    assert rootfs.configured_mirror(apt) == "http://old.example/debian"


def test_mirror_defaults_to_debian(tmp_path: Path) -> None:
    assert rootfs.configured_mirror(write_sources(tmp_path)) == rootfs.DEFAULT_MIRROR


def test_hash_is_stable_and_covers_mirror_and_packages() -> None:
    base = rootfs.rootfs_hash("http://a.example/debian")
    assert base == rootfs.rootfs_hash("http://a.example/debian")
    assert base != rootfs.rootfs_hash("http://b.example/debian")
    assert base != rootfs.rootfs_hash("http://a.example/debian", ("python3",))
    assert len(base) == 64


def test_hash_covers_the_agent(monkeypatch, tmp_path: Path) -> None:
    before = rootfs.rootfs_hash("http://a.example/debian")
    changed = tmp_path / "agent.py"
    changed.write_bytes(rootfs.AGENT_SOURCE.read_bytes() + b"\n# changed\n")
    monkeypatch.setattr(rootfs, "AGENT_SOURCE", changed)
    assert rootfs.rootfs_hash("http://a.example/debian") != before


def test_finish_adds_user_agent_and_workspace(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    for name, content in (
        ("passwd", "root:x:0:0::/root:/bin/bash\n"),
        ("group", "root:x:0:\n"),
        ("shadow", "root:*:1::::::\n"),
    ):
        (root / "etc" / name).write_text(content)
    rootfs._finish(root)
    rootfs._finish(root)  # idempotent
    passwd = (root / "etc/passwd").read_text()
    assert passwd.count("sandbox:x:1000:1000:") == 1
    assert (root / "opt/sandboxd/agent.py").read_bytes() == rootfs.AGENT_SOURCE.read_bytes()
    assert (root / "workspace").is_dir() and (root / "run/sandboxd").is_dir()

"""The offline install commands both builders run inside their isolated sandbox (a Docker build
container, a QEMU build VM) over what the host fetched."""

from __future__ import annotations

# On node's built-in global path in Debian's nodejs, so require() finds these without NODE_PATH.
NODE_GLOBAL_DIR = "/usr/lib/x86_64-linux-gnu/nodejs"


def pip_install_command(find_links: str, *requirements: str) -> list[str]:
    """Install from the wheels in ``find_links`` only (no index, nothing fetched)."""
    return [
        "python3", "-m", "pip", "install",
        "--no-index", "--find-links", find_links,
        # Debian marks its interpreter externally managed; these go to /usr/local, in front of
        # Debian's own packages on sys.path.
        "--break-system-packages",
        "--no-cache-dir", "--disable-pip-version-check", "--root-user-action=ignore",
        "--no-input", "--progress-bar", "off",
        *requirements,
    ]  # fmt: skip


def copy_node_modules_command(source: str) -> list[str]:
    """Unpacked npm packages (their scripts never ran) onto node's global path."""
    return ["cp", "-a", "--no-preserve=ownership", f"{source}/.", NODE_GLOBAL_DIR]

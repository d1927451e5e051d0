"""Service settings, read from the environment with the SANDBOXD_ prefix."""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


def _default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "sandboxd"


class Settings(BaseSettings):
    """Every knob of the service. Environment: SANDBOXD_<NAME>, e.g. SANDBOXD_TTL_SECONDS=600."""

    model_config = SettingsConfigDict(env_prefix="SANDBOXD_", extra="ignore")

    # Lifetimes: a sandbox dies after ttl_seconds without a message (sliding), and in any case
    # max_lifetime_seconds after it was created.
    ttl_seconds: float = Field(900.0, gt=0)
    max_lifetime_seconds: float = Field(4 * 3600.0, gt=0)

    data_dir: Path = Field(default_factory=_default_data_dir)
    # Empty means the embedded default: SQLite in data_dir.
    database_url: str = ""

    runtime: Literal["docker", "qemu"] = "docker"
    # Labels every runtime object; reconciliation only touches objects of its own instance.
    instance_id: str = "sandboxd"

    max_code_bytes: int = Field(256 * 1024, gt=0)
    default_timeout_s: float = Field(30.0, gt=0)
    max_timeout_s: float = Field(300.0, gt=0)
    max_output_bytes: int = Field(1024 * 1024, gt=0)

    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["auto", "json", "console"] = "auto"

    @property
    def ttl(self) -> timedelta:
        return timedelta(seconds=self.ttl_seconds)

    @property
    def max_lifetime(self) -> timedelta:
        return timedelta(seconds=self.max_lifetime_seconds)

    @property
    def effective_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'sandboxd.db'}"

"""The one place that reads WriteVue's configuration from the environment."""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path


@dataclass(frozen=True)
class Settings:
    """Where everything lives. Embedded default: all of it under ``home``."""

    home: Path
    database_url_override: str | None = None
    dashboard_base_url: str = "http://127.0.0.1:5006"
    history_days: int = 90
    lookback_days: int = 3
    http_timeout_s: float = 30.0

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        home = Path(env.get("WRITEVUE_HOME") or "./.writevue").expanduser().resolve()
        return cls(
            home=home,
            database_url_override=env.get("WRITEVUE_DATABASE_URL") or None,
            dashboard_base_url=(
                env.get("WRITEVUE_DASHBOARD_URL") or "http://127.0.0.1:5006"
            ).rstrip("/"),
            history_days=_positive_int(env, "WRITEVUE_HISTORY_DAYS", 90),
            lookback_days=_positive_int(env, "WRITEVUE_LOOKBACK_DAYS", 3),
            http_timeout_s=float(_positive_int(env, "WRITEVUE_HTTP_TIMEOUT_S", 30)),
        )

    @cached_property
    def database_url(self) -> str:
        if self.database_url_override:
            return self.database_url_override
        return f"sqlite:///{self.home / 'warehouse.db'}"

    @property
    def key_file(self) -> Path:
        return self.home / "keys.json"

    @property
    def staging_dir(self) -> Path:
        return self.home / "staging"

    @property
    def dagster_home(self) -> Path:
        return self.home / "dagster"

    @property
    def log_dir(self) -> Path:
        return self.home / "logs"

    def dashboard_url(self, token: str) -> str:
        return f"{self.dashboard_base_url}/d/{token}"


def _positive_int(env, name: str, default: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a whole number, not {raw!r}.") from None
    if value <= 0:
        raise ConfigError(f"{name} must be greater than zero.")
    return value


class ConfigError(Exception):
    """The environment holds a setting WriteVue cannot use."""


def get_settings() -> Settings:
    return Settings.from_env()

"""The running pieces every entry point needs: settings, the warehouse and the key ring."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

from .database import Database
from .session_secret import (
    ensure_session_secret,
    load_session_secret,
    session_secret_from_env,
)
from .settings import Settings, get_settings
from .vault import KeyRing, key_ring_from_env, load_key_ring


@dataclass
class Runtime:
    settings: Settings

    @classmethod
    def from_env(cls) -> Runtime:
        return cls(get_settings())

    @cached_property
    def db(self) -> Database:
        return Database.from_settings(self.settings)

    @property
    def keys(self) -> KeyRing:
        """The key ring, read again whenever the key file changes: a long-running process
        (the dashboard server, Dagster) decrypts what a rotation elsewhere re-encrypted.
        A ring from the environment (``WRITEVUE_KEYS``) is fixed for the process's life."""
        if self.settings.key_ring_env is not None:
            cached = self.__dict__.get("_env_keys")
            if cached is None:
                cached = self.__dict__["_env_keys"] = key_ring_from_env(self.settings.key_ring_env)
            return cached
        path = self.settings.key_file
        try:
            info = path.stat()
            stamp = (info.st_ino, info.st_mtime_ns, info.st_size)
        except FileNotFoundError:
            stamp = None
        cached = self.__dict__.get("_keys")
        if cached is None or cached[0] != stamp:
            cached = self.__dict__["_keys"] = (stamp, load_key_ring(path))
        return cached[1]

    @property
    def session_secret(self) -> str:
        """The secret that signs dashboard sessions, read again whenever its file changes
        (``writevue keys rotate-session-secret``); made here if the home predates it.
        A secret from the environment (``WRITEVUE_SESSION_SECRET``) is fixed."""
        if self.settings.session_secret_env is not None:
            return session_secret_from_env(self.settings.session_secret_env)
        path = self.settings.session_secret_file
        try:
            info = path.stat()
        except FileNotFoundError:
            ensure_session_secret(path)
            info = path.stat()
        stamp = (info.st_ino, info.st_mtime_ns, info.st_size)
        cached = self.__dict__.get("_session_secret")
        if cached is None or cached[0] != stamp:
            cached = self.__dict__["_session_secret"] = (stamp, load_session_secret(path))
        return cached[1]

    def close(self) -> None:
        if "db" in self.__dict__:
            self.db.dispose()

"""The running pieces every entry point needs: settings, the warehouse and the key ring."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

from .database import Database
from .settings import Settings, get_settings
from .vault import KeyRing, load_key_ring


@dataclass
class Runtime:
    settings: Settings

    @classmethod
    def from_env(cls) -> Runtime:
        return cls(get_settings())

    @cached_property
    def db(self) -> Database:
        return Database.from_settings(self.settings)

    @cached_property
    def keys(self) -> KeyRing:
        return load_key_ring(self.settings.key_file)

    def close(self) -> None:
        if "db" in self.__dict__:
            self.db.dispose()

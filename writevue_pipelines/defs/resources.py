"""The resource that hands assets and sensors a Runtime built from the environment."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from dagster import ConfigurableResource, Definitions, InitResourceContext
from pydantic import PrivateAttr

from ..runtime import Runtime
from ..settings import Settings


class WriteVueResource(ConfigurableResource):
    """WriteVue's settings, warehouse and key ring for one run or sensor tick.

    Everything comes from the environment (``WRITEVUE_HOME``, ``WRITEVUE_DATABASE_URL``, …);
    ``home`` only overrides ``WRITEVUE_HOME``. The database URL is deliberately not a field:
    resource config is shown in the Dagster UI and a URL may carry a password.
    """

    home: str | None = None

    _runtime: Runtime | None = PrivateAttr(default=None)

    def settings(self) -> Settings:
        settings = Settings.from_env()
        if self.home:
            settings = dataclasses.replace(settings, home=Path(self.home).expanduser().resolve())
        return settings

    @property
    def runtime(self) -> Runtime:
        if self._runtime is None:
            self._runtime = Runtime(self.settings())
        return self._runtime

    def teardown_after_execution(self, context: InitResourceContext) -> None:
        if self._runtime is not None:
            self._runtime.close()
            self._runtime = None


RESOURCE_KEY = "writevue"

defs = Definitions(resources={RESOURCE_KEY: WriteVueResource()})

"""The resource that hands assets and sensors a Runtime built from the environment."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
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


@contextlib.contextmanager
def tick_runtime() -> Iterator[Runtime]:
    """The runtime for one sensor tick, built as ``WriteVueResource()`` builds it.

    The sensors that tick every 30 or 60 s take no Dagster resource: the code server
    builds a sensor's resources with a ``DagsterInstance`` made from the instance's ref on
    every tick (on the embedded SQLite instance an Alembic revision check, 0.1-0.25 s of
    CPU: most of what an idle code server spends), which they need only when something
    changed (``context.instance`` builds it then).
    """
    runtime = WriteVueResource().runtime
    try:
        yield runtime
    finally:
        runtime.close()


RESOURCE_KEY = "writevue"

defs = Definitions(resources={RESOURCE_KEY: WriteVueResource()})

"""WriteVue's Dagster code location: per-source asset pairs, partition sensors, the runtime."""

from __future__ import annotations

from dagster import Definitions

from . import assets, resources, sensors

defs = Definitions.merge(assets.defs, sensors.defs, resources.defs)

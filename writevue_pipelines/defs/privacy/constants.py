"""The tag every privacy job carries, so the UI can list them apart from the refreshes."""

from __future__ import annotations

KIND_TAG = "writevue/kind"

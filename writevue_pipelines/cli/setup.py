"""``writevue init``: the home, the key ring, the session secret and the schema."""

from __future__ import annotations

from ..home import init_home
from ..settings import get_settings
from .app import command


@command("init", "create WRITEVUE_HOME, its keys and the schema (idempotent)", audit=False)
def init(_args) -> None:
    report = init_home(get_settings())
    print(f"WriteVue home: {report.home}")
    if report.key_file is None:
        print("key ring: from WRITEVUE_KEYS (not written to disk)")
    else:
        print(f"key ring: {'created' if report.key_file_created else 'kept'} at {report.key_file}")
    print("session secret: created" if report.session_secret_created else "session secret: kept")
    print("schema: at the newest migration")

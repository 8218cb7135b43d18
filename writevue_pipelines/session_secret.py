"""The secret that signs dashboard sessions: made at `writevue init`, kept like the key ring.

One file (mode 0600) that every dashboard process reads, under ``WRITEVUE_HOME`` or
wherever ``WRITEVUE_SESSION_SECRET_FILE`` says; never in the repository, the environment
or a command line. Rotating it replaces the file: each dashboard process notices within
a second, signs new sessions with the new secret and asks every open page to reload.
"""

from __future__ import annotations

import secrets
from pathlib import Path

from .vault import VaultError, read_private_file, write_private_file

#: 256 bits, URL-safe text (what Bokeh's HMAC-SHA256 signing takes)
SECRET_BYTES = 32
_WHAT = "session secret file"


def _new_secret() -> str:
    return secrets.token_urlsafe(SECRET_BYTES) + "\n"


def ensure_session_secret(path: Path) -> bool:
    """Create the secret unless it exists (whoever races here, one file wins); True if made."""
    if path.exists():
        load_session_secret(path)  # present, private and well-formed
        return False
    return write_private_file(path, _new_secret(), replace=False)


def load_session_secret(path: Path) -> str:
    secret = read_private_file(path, _WHAT).strip()
    if len(secret) < 43:  # shorter than 256 bits of URL-safe base64
        raise VaultError(
            f"the {_WHAT} {path} holds no usable secret; "
            "run `writevue keys rotate-session-secret` to make a new one"
        )
    return secret


def rotate_session_secret(path: Path) -> None:
    """Replace the secret: every session signed with the old one stops at once."""
    write_private_file(path, _new_secret())

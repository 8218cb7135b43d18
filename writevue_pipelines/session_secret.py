"""The secret that signs dashboard sessions: made at `writevue init`, kept like the key ring.

One file (mode 0600) that every dashboard process reads, under ``WRITEVUE_HOME`` or
wherever ``WRITEVUE_SESSION_SECRET_FILE`` says; or, where a host hands secrets over in
the environment, ``WRITEVUE_SESSION_SECRET`` itself; never in the repository or on a
command line. Every dashboard process of a deployment must be given the same secret.
Rotating the file replaces it: each dashboard process notices within a second, signs
new sessions with the new secret and asks every open page to reload. A secret from the
environment is fixed for the process's life: rotating it is a new value and a restart.
"""

from __future__ import annotations

import secrets
from pathlib import Path

from .vault import VaultError, read_private_file, write_private_file

#: 256 bits, URL-safe text (what Bokeh's HMAC-SHA256 signing takes)
SECRET_BYTES = 32
#: 256 bits of URL-safe base64
MIN_LENGTH = 43
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
    if len(secret) < MIN_LENGTH:
        raise VaultError(
            f"the {_WHAT} {path} holds no usable secret; "
            "run `writevue keys rotate-session-secret` to make a new one"
        )
    return secret


def session_secret_from_env(text: str) -> str:
    """``WRITEVUE_SESSION_SECRET``'s value, checked as the file's is (never repeated in
    the message)."""
    secret = text.strip()
    if len(secret) < MIN_LENGTH:
        raise VaultError(
            f"WRITEVUE_SESSION_SECRET is too short: it needs at least {MIN_LENGTH} characters "
            "(256 bits), such as the output of "
            "`python -c 'import secrets; print(secrets.token_urlsafe(32))'`"
        )
    return secret


def rotate_session_secret(path: Path) -> None:
    """Replace the secret: every session signed with the old one stops at once."""
    write_private_file(path, _new_secret())

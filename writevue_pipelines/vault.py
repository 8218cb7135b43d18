"""Encryption at rest: AES-256-GCM under a versioned key ring.

The newest key encrypts; every key in the ring decrypts. Each ciphertext is bound
by associated data to the tenant, connection and field it belongs to, so a blob
copied into another row does not decrypt.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import stat
import struct
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

MAGIC = b"WV1"
_HEADER = struct.Struct(">3sI")  # magic, key version
_NONCE_BYTES = 12


class VaultError(Exception):
    """A secret could not be encrypted or decrypted; the message never holds the secret."""


@dataclass(frozen=True)
class Binding:
    """What a ciphertext belongs to; it is authenticated but not stored in the blob."""

    tenant_id: str
    connection_id: str | None
    field: str

    def aad(self) -> bytes:
        return f"writevue|{self.tenant_id}|{self.connection_id or '-'}|{self.field}".encode()


class KeyRing:
    def __init__(self, keys: dict[int, bytes], primary: int):
        if primary not in keys:
            raise VaultError("the key ring's primary key is missing")
        for version, key in keys.items():
            if len(key) != 32:
                raise VaultError(f"key version {version} is not a 256-bit key")
        self._keys = dict(keys)
        self.primary = primary

    @property
    def versions(self) -> list[int]:
        return sorted(self._keys, reverse=True)

    @classmethod
    def generate(cls) -> KeyRing:
        return cls({1: AESGCM.generate_key(bit_length=256)}, primary=1)

    def with_new_key(self) -> KeyRing:
        version = max(self._keys) + 1
        keys = dict(self._keys)
        keys[version] = AESGCM.generate_key(bit_length=256)
        return KeyRing(keys, primary=version)

    def without(self, version: int) -> KeyRing:
        if version == self.primary:
            raise VaultError("the primary key cannot be retired")
        keys = {v: k for v, k in self._keys.items() if v != version}
        return KeyRing(keys, primary=self.primary)

    def encrypt(self, plaintext: str | bytes, binding: Binding) -> bytes:
        data = plaintext.encode() if isinstance(plaintext, str) else plaintext
        nonce = secrets.token_bytes(_NONCE_BYTES)
        sealed = AESGCM(self._keys[self.primary]).encrypt(nonce, data, binding.aad())
        return _HEADER.pack(MAGIC, self.primary) + nonce + sealed

    def decrypt(self, blob: bytes, binding: Binding) -> bytes:
        version = self.key_version(blob)
        key = self._keys.get(version)
        if key is None:
            raise VaultError(
                f"secret is sealed with key version {version}, which is not in the ring"
            )
        start = _HEADER.size
        nonce, sealed = blob[start : start + _NONCE_BYTES], blob[start + _NONCE_BYTES :]
        try:
            return AESGCM(key).decrypt(nonce, sealed, binding.aad())
        except InvalidTag:
            raise VaultError(
                f"secret {binding.field!r} does not belong to this row or was tampered with"
            ) from None

    def decrypt_text(self, blob: bytes, binding: Binding) -> str:
        return self.decrypt(blob, binding).decode()

    @staticmethod
    def key_version(blob: bytes) -> int:
        if len(blob) < _HEADER.size + _NONCE_BYTES + 16:
            raise VaultError("secret is too short to be a vault ciphertext")
        magic, version = _HEADER.unpack_from(blob)
        if magic != MAGIC:
            raise VaultError("secret is not a vault ciphertext")
        return version

    # -- the key file -------------------------------------------------------

    def to_json(self) -> str:
        return json.dumps(
            {
                "primary": self.primary,
                "keys": {
                    str(v): base64.b64encode(k).decode() for v, k in sorted(self._keys.items())
                },
            },
            indent=2,
        )

    @classmethod
    def from_json(cls, text: str, *, what: str = "the key file") -> KeyRing:
        """A ring from a key file's text; ``what`` names where it came from in errors,
        which never quote the text."""
        try:
            raw = json.loads(text)
            keys = {int(v): base64.b64decode(k, validate=True) for v, k in raw["keys"].items()}
            return cls(keys, primary=int(raw["primary"]))
        except VaultError as exc:
            raise VaultError(f"{what} is not a valid key ring ({exc})") from None
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise VaultError(f"{what} is not a valid key ring ({type(exc).__name__})") from None


def write_private_file(path: Path, text: str, *, replace: bool = True) -> bool:
    """Write a secret file atomically, readable by its owner only.

    With ``replace=False`` an existing file is kept (and False returned), so processes
    racing to create the same file all end up reading the one that won.
    """
    _private_folder(path.parent)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o600)
        if replace:
            os.replace(tmp, path)
            return True
        try:
            os.link(tmp, path)  # atomic, and fails if the file exists
        except FileExistsError:
            return False
        return True
    finally:
        tmp.unlink(missing_ok=True)


def _private_folder(folder: Path) -> None:
    """Create ``folder`` and any missing parents as 0700; an existing one is left as it is
    (``writevue doctor`` says when it is open to others)."""
    missing = []
    while not folder.exists():
        missing.append(folder)
        folder = folder.parent
    for made in reversed(missing):
        try:
            made.mkdir(mode=0o700)
        except FileExistsError:  # another process made it first
            continue
        os.chmod(made, 0o700)  # whatever the umask


def read_private_file(path: Path, what: str) -> str:
    """A secret file's text; refused when others may read it."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise VaultError(f"no {what} at {path}; run `writevue init` first") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise VaultError(f"{what} {path} is readable by others; run `chmod 600 {path}`")
    return path.read_text()


def save_key_ring(ring: KeyRing, path: Path) -> None:
    """Write the key file atomically, readable by its owner only."""
    write_private_file(path, ring.to_json())


def load_key_ring(path: Path) -> KeyRing:
    return KeyRing.from_json(read_private_file(path, "key file"))


#: the variable that may hold the key ring's JSON text instead of a file
KEYS_VARIABLE = "WRITEVUE_KEYS"


def key_ring_from_env(text: str) -> KeyRing:
    """The ring ``WRITEVUE_KEYS`` holds (a key file's JSON text)."""
    return KeyRing.from_json(text, what=KEYS_VARIABLE)


def ensure_key_ring(path: Path) -> KeyRing:
    """Load the key ring, creating a fresh one on first use."""
    if path.exists():
        return load_key_ring(path)
    ring = KeyRing.generate()
    save_key_ring(ring, path)
    return ring

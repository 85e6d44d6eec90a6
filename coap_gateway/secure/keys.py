"""Static X25519 keys and trust-on-first-use pins: the secure layer's only file access.

Private key file: one line, the 32-byte key in unpadded base64, mode 0600,
created atomically (never readable by others, not even for an instant).
Pin file: JSON ``{"format": "coap-gateway/pins", "pins": {server: public}}``,
mode 0600, replaced atomically on every change.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import stat
import tempfile
from pathlib import Path
from typing import Literal

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from ..errors import KeyFileError, ServerKeyChanged

KEY_SIZE = 32
PIN_FORMAT = "coap-gateway/pins"


def generate_keypair() -> tuple[bytes, bytes]:
    """A new X25519 key pair: (private, public), 32 raw bytes each."""
    private = X25519PrivateKey.generate()
    return private.private_bytes_raw(), private.public_key().public_bytes_raw()


def public_from_private(private: bytes) -> bytes:
    return X25519PrivateKey.from_private_bytes(private).public_key().public_bytes_raw()


def encode_key(key: bytes) -> str:
    """Unpadded standard base64 (43 characters for 32 bytes)."""
    return base64.b64encode(key).decode("ascii").rstrip("=")


def decode_key(text: str) -> bytes:
    """Inverse of :func:`encode_key`; KeyFileError unless it is 32 bytes of base64."""
    text = text.strip()
    try:
        key = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise KeyFileError("key is not base64") from None
    if len(key) != KEY_SIZE:
        raise KeyFileError(f"key is {len(key)} bytes, not {KEY_SIZE}")
    return key


def fingerprint(public: bytes) -> str:
    """Short form to compare by eye, like ssh: ``SHA256:`` + 16 base64 characters."""
    return "SHA256:" + base64.b64encode(hashlib.sha256(public).digest()).decode("ascii")[:16]


def write_private_key(path: str | os.PathLike[str], private: bytes, *, force: bool = False) -> None:
    """Write a private key with mode 0600; FileExistsError unless ``force``."""
    if len(private) != KEY_SIZE:
        raise ValueError(f"private key must be {KEY_SIZE} bytes")
    data = (encode_key(private) + "\n").encode("ascii")
    path = Path(path)
    if not force:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        _write_all(fd, data)
        return
    replace_private_file(path, data)


def read_private_key(path: str | os.PathLike[str]) -> bytes:
    """Read a private key; KeyFileError if others may read it, or it is malformed."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        raise KeyFileError(f"no private key at {path}") from None
    with os.fdopen(fd, "rb") as f:
        mode = stat.S_IMODE(os.fstat(f.fileno()).st_mode)
        if mode & 0o077:
            raise KeyFileError(f"{path} has mode {mode:04o}: others could read the private key; "
                               f"run: chmod 600 {path}")
        raw = f.read(256)
    try:
        return decode_key(raw.decode("ascii"))
    except (UnicodeDecodeError, KeyFileError) as exc:
        raise KeyFileError(f"{path} does not hold a private key: {exc}") from None


def _write_all(fd: int, data: bytes) -> None:
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_private_file(path: Path, data: bytes) -> None:
    """Write a 0600 temporary file next to ``path`` and rename it over ``path``
    (key files, pins, and the client gateway's wire state and held answers)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent or ".")  # mkstemp: 0600, O_EXCL
    try:
        _write_all(fd, data)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


class PinStore:
    """Trust on first use: the server key seen first is pinned; a change is refused.

    ``check`` says "new" for an unknown server and "match" for the pinned key;
    a different key raises :class:`ServerKeyChanged` naming both fingerprints.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def _load(self) -> dict[str, str]:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return {}
        try:
            doc = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise KeyFileError(f"{self.path} is not a pin file: {exc}") from None
        if not isinstance(doc, dict) or doc.get("format") != PIN_FORMAT or not isinstance(doc.get("pins"), dict):
            raise KeyFileError(f"{self.path} is not a {PIN_FORMAT} document")
        pins = doc["pins"]
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in pins.items()):
            raise KeyFileError(f"{self.path}: pins must map server names to base64 keys")
        return pins

    def prepare(self) -> None:
        """Make sure a pin can be stored: create the directory (0700) and try
        writing next to the file.  KeyFileError, loudly, when it cannot: a
        pin that is not stored protects nothing after a restart."""
        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd, probe = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=self.path.parent)
            os.close(fd)
            os.unlink(probe)
        except OSError as exc:
            raise KeyFileError(f"cannot store server key pins in {self.path.parent}: {exc}") from exc

    def _save(self, pins: dict[str, str]) -> None:
        doc = {"format": PIN_FORMAT, "pins": dict(sorted(pins.items()))}
        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            replace_private_file(self.path, (json.dumps(doc, indent=1) + "\n").encode("utf-8"))
        except OSError as exc:
            raise KeyFileError(f"cannot store the pin in {self.path}: {exc}") from exc

    def servers(self) -> list[str]:
        return sorted(self._load())

    def forget(self, server: str) -> bool:
        pins = self._load()
        if pins.pop(server, None) is None:
            return False
        self._save(pins)
        return True

    def get(self, server: str) -> bytes | None:
        text = self._load().get(server)
        return decode_key(text) if text is not None else None

    def check(self, server: str, public: bytes) -> Literal["new", "match"]:
        pinned = self.get(server)
        if pinned is None:
            return "new"
        if pinned == public:
            return "match"
        raise self.key_changed(server, pinned, public)

    def key_changed(self, server: str, pinned: bytes, presented: bytes) -> ServerKeyChanged:
        """The error for a server that now presents another key: both
        fingerprints, and the command that accepts the new key."""
        return ServerKeyChanged(
            f"the key of {server} changed: pinned {fingerprint(pinned)}, now {fingerprint(presented)}. "
            f"If that is expected (the server's key was replaced; compare the fingerprint with the "
            f"server operator's), accept it with "
            f"`coap-gateway pins accept --pins {self.path} {server} {encode_key(presented)}`; "
            f"otherwise someone may be impersonating the server",
            pinned=pinned, presented=presented)

    def pin(self, server: str, public: bytes) -> None:
        """Pin the key of a new server (ServerKeyChanged if another key is pinned)."""
        if self.check(server, public) == "new":
            pins = self._load()
            pins[server] = encode_key(public)
            self._save(pins)

    def accept_change(self, server: str, public: bytes) -> None:
        """Replace the pinned key of ``server`` (after the user confirmed the change)."""
        pins = self._load()
        pins[server] = encode_key(public)
        self._save(pins)

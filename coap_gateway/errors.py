"""Exception types of the wire core.

Every failure on bad input raises one of these, never a bare KeyError,
IndexError or a library's own exception, so the I/O shells can answer with
a clear error or drop the datagram without catching ``Exception``.
"""

from __future__ import annotations


class GatewayError(Exception):
    """Base class of every error the wire core raises on bad input or data."""


class TableError(GatewayError):
    """A data table in dictionaries/ is malformed, duplicated or ambiguous."""


class CodecError(GatewayError):
    """A payload cannot be encoded to or decoded from CBOR."""


class CompressionError(GatewayError):
    """A compressed payload is corrupt, truncated or uses an unknown dictionary."""


class DecompressionBombError(CompressionError):
    """A compressed payload expands beyond the configured cap."""


class RouteError(GatewayError):
    """An HTTP request or CoAP request cannot be mapped to the other side."""


class StatusError(GatewayError):
    """An HTTP status or CoAP response code cannot be mapped."""


class SecurityError(GatewayError):
    """A secure frame or handshake is malformed, unauthenticated, replayed or refused.

    The receive path of the secure layer raises only this family; the
    endpoints turn it into a dropped datagram (and a counter), never a crash.
    """


class FrameError(SecurityError):
    """A datagram is too short, has an unknown kind or a malformed clear header."""


class AuthenticationError(SecurityError):
    """A frame or handshake message does not authenticate under any key held."""


class ReplayError(SecurityError):
    """A frame's counter was already used (and the bytes differ) or is too old."""


class NonceError(SecurityError):
    """Sealing would reuse a (key, nonce) pair, or the counter space is exhausted."""


class HandshakeError(SecurityError):
    """A handshake message is malformed, unexpected or fails to decrypt."""


class ProfileMismatchError(HandshakeError):
    """The server holds a different version of the requested profile (or none)."""


class ServerKeyMismatchError(HandshakeError):
    """The server could not decrypt IK message 1: the pinned server key is not its key."""


class ServerKeyChanged(SecurityError):
    """The server presented a static key different from the one pinned for it.

    ``pinned`` and ``presented`` are the two public keys, when known, so a
    caller can say how to accept the new one."""

    def __init__(self, message: str, pinned: bytes | None = None, presented: bytes | None = None):
        super().__init__(message)
        self.pinned = pinned
        self.presented = presented


class KeyFileError(SecurityError):
    """A key or pin file is missing, malformed or has unsafe permissions."""


__all__ = [
    "AuthenticationError",
    "CodecError",
    "CompressionError",
    "DecompressionBombError",
    "FrameError",
    "GatewayError",
    "HandshakeError",
    "KeyFileError",
    "NonceError",
    "ProfileMismatchError",
    "ReplayError",
    "RouteError",
    "SecurityError",
    "ServerKeyChanged",
    "ServerKeyMismatchError",
    "StatusError",
    "TableError",
]

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

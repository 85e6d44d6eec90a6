"""HTTP status ⇄ CoAP response code, Retry-After ⇄ Max-Age (sans-I/O).

Every final HTTP status (200–599) maps to a CoAP response code and back to
the same status.  Statuses with a CoAP twin (RFC 7252, RFC 8132's 4.09 and
4.22, RFC 8516's 4.29) map directly; every other status travels as the
generic code of its class (2.04 / 4.00 / 5.00 …) plus the HTTP-Status option
carrying the exact number, so nothing collapses into "5.00" as it did in the
2019 proxy and MSC3079's reference server.

Retry-After in delta-seconds on a 429 or 503 maps to Max-Age, as RFC 8516
and RFC 7252 §5.9.3.4 define for 4.29 and 5.03; any other Retry-After (an
HTTP-date, or on another status) travels verbatim in an HTTP-Header option.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import StatusError


def coap_code(cls: int, detail: int) -> int:
    return (cls << 5) | detail


def format_code(code: int) -> str:
    return f"{code >> 5}.{code & 31:02d}"


#: HTTP status -> CoAP code, one to one
DIRECT: dict[int, int] = {
    200: coap_code(2, 5),
    201: coap_code(2, 1),
    204: coap_code(2, 4),
    400: coap_code(4, 0),
    401: coap_code(4, 1),
    403: coap_code(4, 3),
    404: coap_code(4, 4),
    405: coap_code(4, 5),
    406: coap_code(4, 6),
    409: coap_code(4, 9),
    412: coap_code(4, 12),
    413: coap_code(4, 13),
    415: coap_code(4, 15),
    422: coap_code(4, 22),
    429: coap_code(4, 29),
    500: coap_code(5, 0),
    501: coap_code(5, 1),
    502: coap_code(5, 2),
    503: coap_code(5, 3),
    504: coap_code(5, 4),
}
_DIRECT_BACK = {code: status for status, code in DIRECT.items()}

#: class of an HTTP status without a twin -> the CoAP code it travels as
_GENERIC = {2: coap_code(2, 4), 3: coap_code(2, 4), 4: coap_code(4, 0), 5: coap_code(5, 0)}

#: CoAP codes that only a non-gateway CoAP server sends (RFC 8075 §7)
_FOREIGN = {
    coap_code(2, 2): 200,  # 2.02 Deleted
    coap_code(2, 3): 200,  # 2.03 Valid
    coap_code(4, 2): 400,  # 4.02 Bad Option
    coap_code(4, 8): 400,  # 4.08 Request Entity Incomplete
    coap_code(5, 5): 502,  # 5.05 Proxying Not Supported
}

#: statuses on which Max-Age means "retry after"
_RETRY_CODES = {coap_code(4, 29), coap_code(5, 3)}


@dataclass(frozen=True)
class CoapStatus:
    code: int
    #: value of the HTTP-Status option, or None when the code says it all
    http_status: int | None = None
    #: value of Max-Age (seconds), or None for no Max-Age option
    max_age: int | None = None
    #: Retry-After sent verbatim as an HTTP-Header option, when not as Max-Age
    retry_after_header: str | None = None


def http_to_coap(status: int, retry_after: str | None = None) -> CoapStatus:
    if type(status) is not int or not 200 <= status <= 599:
        raise StatusError(f"HTTP status {status!r} is not a final status (200–599)")
    code = DIRECT.get(status)
    http_status = None
    if code is None:
        code, http_status = _GENERIC[status // 100], status
    max_age = header = None
    if retry_after is not None:
        value = retry_after.strip()
        if code in _RETRY_CODES and value.isascii() and value.isdigit() and int(value) < 2**32:
            max_age = int(value)
            if str(max_age) != value:  # "007" would not come back as "007"
                max_age, header = None, retry_after
        else:
            header = retry_after
    return CoapStatus(code, http_status, max_age, header)


def coap_to_http(code: int, http_status: int | None = None, max_age: int | None = None) -> tuple[int, str | None]:
    """HTTP status and Retry-After (from Max-Age) of a CoAP response.

    A Retry-After that travelled as an HTTP-Header option is the caller's to
    copy; this returns only the one derived from Max-Age.
    """
    if not 0 <= code <= 255 or not 2 <= code >> 5 <= 5 or code >> 5 == 3:
        raise StatusError(f"{format_code(code)} is not a CoAP response code")
    if http_status is not None:
        if not 200 <= http_status <= 599:
            raise StatusError(f"HTTP-Status option {http_status} is not a final status")
        if _GENERIC.get(http_status // 100) != code or http_status in DIRECT:
            raise StatusError(f"HTTP-Status {http_status} does not belong with {format_code(code)}")
        status = http_status
    elif code in _DIRECT_BACK:
        status = _DIRECT_BACK[code]
    elif code in _FOREIGN:
        status = _FOREIGN[code]
    else:
        status = {2: 200, 4: 400, 5: 500}[code >> 5]
    retry_after = str(max_age) if max_age is not None and code in _RETRY_CODES else None
    return status, retry_after

"""HTTP method + path + query ⇄ CoAP code + Uri-Path + Uri-Query (sans-I/O).

Route form.  A known endpoint travels as its code — one Unicode character,
1 byte on the wire for codes below 128 — as the first Uri-Path option,
followed by the path parameters in template order::

    PUT /_matrix/client/v3/rooms/!r:hs/send/m.room.message/t1
    -> 0.03  Uri-Path: "!" | "!r:hs" | "m.room.message" | "t1"

Literal form.  Any other path travels segment by segment.  A first
segment of one character (or none) would read as a code, so such a path is
preceded by an empty Uri-Path segment.

Both forms carry segments *raw*, exactly as the client sent them (percent
escapes included, never decoded or re-encoded), so the homeserver receives
the very bytes the client wrote.  Query parameters (split at ``&``, in
order) travel as Uri-Query options the same way.

Options are at most 255 bytes (RFC 7252 §5.10); a longer segment or
parameter is cut into chunks at character boundaries.  A chunk of 252 bytes
or more continues in the next option; a shorter one (possibly empty) ends
the value.  No UTF-8 character is longer than 4 bytes, so a cut always
falls within 252–255.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import Any, Iterable, Sequence

from ..errors import RouteError, TableError
from . import datafiles

FORMAT = "coap-gateway/routes"

METHODS = {"GET": 1, "POST": 2, "PUT": 3, "DELETE": 4, "FETCH": 5, "PATCH": 6, "IPATCH": 7}
METHOD_NAMES = {code: name for name, code in METHODS.items()}

MAX_OPTION_LEN = 255
#: a chunk at least this long continues in the next option
CONTINUED_LEN = MAX_OPTION_LEN - 3

# Characters a raw segment or parameter may not contain: they would change
# the structure of the HTTP request line the other gateway writes.
_FORBIDDEN_IN_SEGMENT = frozenset("/?#") | frozenset(map(chr, range(0x21))) | {"\x7f"}
_FORBIDDEN_IN_QUERY = frozenset("&#") | frozenset(map(chr, range(0x21))) | {"\x7f"}


@dataclass(frozen=True)
class Template:
    code: int
    name: str
    template: str
    #: literal text per segment, None where a parameter stands
    segments: tuple[str | None, ...]

    @property
    def code_char(self) -> str:
        return chr(self.code)

    @property
    def param_count(self) -> int:
        return sum(1 for s in self.segments if s is None)

    @property
    def literal_positions(self) -> frozenset[int]:
        return frozenset(i for i, s in enumerate(self.segments) if s is not None)

    def matches(self, segments: Sequence[str]) -> bool:
        return len(segments) == len(self.segments) and all(
            lit is None or lit == seg for lit, seg in zip(self.segments, segments)
        )

    def expand(self, params: Sequence[str]) -> str:
        it = iter(params)
        return "/" + "/".join(next(it) if lit is None else lit for lit in self.segments)


def _parse_template(template: str) -> tuple[str | None, ...]:
    if not template.startswith("/"):
        raise TableError(f"template {template!r} does not start with '/'")
    out: list[str | None] = []
    for seg in template[1:].split("/"):
        if seg.startswith("{") and seg.endswith("}") and len(seg) > 2:
            out.append(None)
        elif "{" in seg or "}" in seg or set(seg) & _FORBIDDEN_IN_SEGMENT:
            raise TableError(f"template {template!r}: bad segment {seg!r}")
        else:
            out.append(seg)
    return tuple(out)


def _overlap(a: Template, b: Template) -> bool:
    return len(a.segments) == len(b.segments) and all(
        x is None or y is None or x == y for x, y in zip(a.segments, b.segments)
    )


class RouteTable:
    """A versioned set of endpoint templates with their codes."""

    def __init__(self, version: int, templates: Iterable[Template], digest: str = ""):
        self.version = version
        self.digest = digest
        self.by_code: dict[int, Template] = {}
        by_name: dict[str, Template] = {}
        by_template: dict[str, Template] = {}
        self._by_length: dict[int, list[Template]] = {}
        for t in templates:
            if not 0 <= t.code <= 0x10FFFF or 0xD800 <= t.code <= 0xDFFF:
                raise TableError(f"code {t.code} is not a Unicode scalar value")
            for index, key, what in ((self.by_code, t.code, "code"), (by_name, t.name, "name"), (by_template, t.template, "template")):
                if key in index:
                    raise TableError(f"duplicate {what} {key!r}")
                index[key] = t  # type: ignore[index]
            for other in self._by_length.get(len(t.segments), ()):
                if _overlap(t, other) and not (
                    t.literal_positions < other.literal_positions
                    or other.literal_positions < t.literal_positions
                ):
                    raise TableError(f"ambiguous templates {other.template!r} and {t.template!r}")
            self._by_length.setdefault(len(t.segments), []).append(t)
        for group in self._by_length.values():
            # most specific first: among overlapping matches it must win
            group.sort(key=lambda t: -len(t.literal_positions))
        self.by_name = by_name

    def __len__(self) -> int:
        return len(self.by_code)

    def match(self, segments: Sequence[str]) -> Template | None:
        for t in self._by_length.get(len(segments), ()):
            if t.matches(segments):
                return t
        return None

    def match_target(self, target: str) -> tuple[Template, list[str]] | None:
        """The template of a raw request target (path, maybe a query) and its
        raw path segments; None for a target that is not a route or not valid."""
        try:
            segments, _ = split_target(target)
        except RouteError:
            return None
        template = self.match(segments)
        return (template, segments) if template is not None else None

    def match_path(self, path: str, names: frozenset[str]) -> tuple[Template, list[str]] | None:
        """The template of a raw path (no query) among the routes ``names``,
        and its parameters as raw segments; None for any other path."""
        found = self.match_target(path)
        if found is None or found[0].name not in names:
            return None
        template, segments = found
        return template, [seg for seg, literal in zip(segments, template.segments) if literal is None]


def parse_route_table(doc: Any, digest: str = "") -> RouteTable:
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise TableError(f"not a {FORMAT} document")
    version = doc.get("version")
    if type(version) is not int:
        raise TableError("version must be an integer")
    routes = doc.get("routes")
    if not isinstance(routes, list):
        raise TableError("routes must be a list")
    templates = []
    for r in routes:
        if not (isinstance(r, dict) and type(r.get("code")) is int and isinstance(r.get("template"), str) and isinstance(r.get("name"), str)):
            raise TableError(f"bad route entry {r!r}")
        templates.append(Template(r["code"], r["name"], r["template"], _parse_template(r["template"])))
    return RouteTable(version, templates, digest)


@cache
def load_route_table(version: int) -> RouteTable:
    name = f"routes-v{version}.json"
    raw = datafiles.read_bytes(name)
    table = parse_route_table(datafiles.parse_json_document(raw, name), datafiles.content_digest(raw))
    if table.version != version:
        raise TableError(f"{name} declares version {table.version}")
    return table


# ------------------------------------------------------------ option chunks


def chunk_value(value: str) -> list[str]:
    """Cut a value into option-sized chunks (see module doc)."""
    data = value.encode("utf-8")
    chunks: list[str] = []
    while len(data) >= CONTINUED_LEN:
        cut = MAX_OPTION_LEN
        while cut < len(data) and (data[cut] & 0xC0) == 0x80:  # inside a character
            cut -= 1
        cut = min(cut, len(data))
        chunks.append(data[:cut].decode("utf-8"))
        data = data[cut:]
    chunks.append(data.decode("utf-8"))
    return chunks


def join_chunks(options: Sequence[str]) -> list[str]:
    """Inverse of :func:`chunk_value` over a run of options."""
    values: list[str] = []
    current: list[str] = []
    for opt in options:
        size = len(opt.encode("utf-8"))
        if size > MAX_OPTION_LEN:
            raise RouteError(f"option of {size} bytes exceeds {MAX_OPTION_LEN}")
        current.append(opt)
        if size < CONTINUED_LEN:
            values.append("".join(current))
            current = []
    if current:
        raise RouteError("last option chunk announces a continuation that never comes")
    return values


# ------------------------------------------------------------ the mapping


@dataclass(frozen=True)
class CoapRequestLine:
    """The part of a CoAP request that stands for the HTTP request line."""

    method: int
    uri_path: tuple[str, ...]
    uri_query: tuple[str, ...]
    #: the template used, None for the literal form
    template: Template | None = None


def check_segment(seg: str) -> str:
    if set(seg) & _FORBIDDEN_IN_SEGMENT:
        raise RouteError(f"path segment {seg!r} contains a forbidden character")
    if seg in (".", ".."):
        raise RouteError("dot segments are not allowed in a path")
    return seg


def check_query_param(param: str) -> str:
    if set(param) & _FORBIDDEN_IN_QUERY:
        raise RouteError(f"query parameter {param!r} contains a forbidden character")
    return param


def split_target(target: str) -> tuple[list[str], list[str] | None]:
    """Raw path segments and raw query parameters (None: no '?') of a request target."""
    path, sep, query = target.partition("?")
    if not path.startswith("/"):
        raise RouteError(f"request target {target!r} is not an absolute path")
    if "#" in target:
        raise RouteError("a request target cannot contain a fragment")
    segments = [check_segment(s) for s in path[1:].split("/")]
    params = [check_query_param(p) for p in query.split("&")] if sep else None
    return segments, params


def http_to_coap(method: str, target: str, table: RouteTable) -> CoapRequestLine:
    """Map an HTTP method and request target (path?query, raw) to CoAP."""
    code = METHODS.get(method.upper())
    if code is None:
        raise RouteError(f"method {method!r} has no CoAP equivalent")
    segments, params = split_target(target)
    template = table.match(segments)
    if template is not None:
        values = [template.code_char] + [s for s, lit in zip(segments, template.segments) if lit is None]
        uri_path = [c for v in values for c in chunk_value(v)]
    else:
        uri_path = [c for s in segments for c in chunk_value(s)]
        if len(segments[0]) <= 1:
            uri_path.insert(0, "")
    uri_query = [c for p in params for c in chunk_value(p)] if params is not None else []
    return CoapRequestLine(code, tuple(uri_path), tuple(uri_query), template)


def coap_to_http(method: int, uri_path: Sequence[str], uri_query: Sequence[str], table: RouteTable) -> tuple[str, str]:
    """Map a CoAP request's code, Uri-Path and Uri-Query back to HTTP."""
    name = METHOD_NAMES.get(method)
    if name is None:
        raise RouteError(f"CoAP code 0.{method:02d} is not a request method")
    values = join_chunks(uri_path)
    if not values:
        path = "/"
    elif len(values[0]) == 1:
        template = table.by_code.get(ord(values[0]))
        if template is None:
            raise RouteError(f"unknown route code {ord(values[0])} in table v{table.version}")
        params = [check_segment(v) for v in values[1:]]
        if len(params) != template.param_count:
            raise RouteError(f"route {template.name} takes {template.param_count} parameters, got {len(params)}")
        path = template.expand(params)
    else:
        if values[0] == "":
            values = values[1:]
            if not values or len(values[0]) > 1:
                raise RouteError("escaped literal path must start with a segment of at most one character")
        path = "/" + "/".join(check_segment(v) for v in values)
    if uri_query:
        path += "?" + "&".join(check_query_param(p) for p in join_chunks(uri_query))
    return name, path

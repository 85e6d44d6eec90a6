"""The Wireshark dissector for the secure link (docs/wireshark.md).

``coap_gateway.lua`` in this folder is a Lua plugin: copy it to
``~/.local/lib/wireshark/plugins/`` or run ``tshark -X lua_script:PATH``.
It names the handshake frames, and with a key log (``--keylog``) decrypts
the sealed frames and hands their CoAP to Wireshark's own dissector.  The
route tables it needs to show a request's route are generated from the
profiles into the marked block of the Lua file: ``python -m
coap_gateway.tools.wireshark`` rewrites it (a test checks it is current).
"""

from __future__ import annotations

import re
from pathlib import Path

from ...codec import load_profile, profile_names

PLUGIN = Path(__file__).with_name("coap_gateway.lua")
BEGIN = "-- BEGIN GENERATED TABLES"
END = "-- END GENERATED TABLES"


def lua_string(text: str) -> str:
    out = []
    for ch in text:
        if ch in '\\"':
            out.append("\\" + ch)
        elif " " <= ch <= "~":
            out.append(ch)
        else:
            out.extend(f"\\{b}" for b in ch.encode("utf-8"))
    return '"' + "".join(out) + '"'


def generated_tables() -> str:
    """The Lua block: profiles, route tables, schema tables, enumerated values."""
    profiles, routes, schemas, values = [], {}, {}, {}
    for name in profile_names():
        p = load_profile(name)
        schema_version = p.schemas.version if p.schemas is not None else None
        profiles.append(f"  [{p.id}] = {{name = {lua_string(p.name)}, routes = {p.routes.version}, "
                        f"cbor = {p.cbor_table.version}, schemas = {schema_version or 'nil'}}},")
        routes[p.routes.version] = p.routes
        values[p.cbor_table.version] = p.cbor_table
        if p.schemas is not None:
            schemas[p.schemas.version] = p.schemas
    lines = [BEGIN + " (python -m coap_gateway.tools.wireshark; do not edit by hand)", "local PROFILES = {"]
    lines += profiles + ["}", "local ROUTES = {"]
    for version, table in sorted(routes.items()):
        lines.append(f"  [{version}] = {{")
        for code, t in sorted(table.by_code.items()):
            lines.append(f"    [{code}] = {{{lua_string(t.name)}, {lua_string(t.template)}}},")
        lines.append("  },")
    lines += ["}", "local SCHEMAS = {"]
    for version, s in sorted(schemas.items()):
        short = ", ".join(lua_string(n) for n in s.short_routes)
        kinds = ", ".join(f"[{lua_string(k)}] = {lua_string(v)}" for k, v in sorted(s.param_kinds.items()))
        message = ", ".join(f"[{lua_string(n)}] = true" for n in sorted(s.message_routes))
        lines += [f"  [{version}] = {{", f"    short_routes = {{{short}}},", f"    param_kinds = {{{kinds}}},",
                  f"    message_routes = {{{message}}},",
                  f"    message_event_type = {lua_string(s.message_event_type)},", "  },"]
    lines += ["}", "local VALUES = {"]
    for version, table in sorted(values.items()):
        lines.append(f"  [{version}] = {{")
        for key in ("type", "msgtype"):
            names = table.value_names.get(key, {})
            items = ", ".join(f"[{code}] = {lua_string(name)}" for code, name in sorted(names.items()))
            lines.append(f"    {key} = {{{items}}},")
        lines.append("  },")
    lines += ["}", END]
    return "\n".join(lines)


def current_plugin(text: str | None = None) -> str:
    """The plugin's text with the generated block made current."""
    text = PLUGIN.read_text(encoding="utf-8") if text is None else text
    pattern = re.compile(re.escape(BEGIN) + r".*?" + re.escape(END), re.S)
    if not pattern.search(text):
        raise ValueError(f"{PLUGIN}: no generated block")
    return pattern.sub(lambda _: generated_tables(), text, count=1)


def write_plugin() -> bool:
    """Rewrite the generated block; True when it changed."""
    old = PLUGIN.read_text(encoding="utf-8")
    new = current_plugin(old)
    if new != old:
        PLUGIN.write_text(new, encoding="utf-8")
    return new != old


__all__ = ["PLUGIN", "current_plugin", "generated_tables", "write_plugin"]

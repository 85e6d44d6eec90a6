"""docs/protocol.md §2 and §10: the content identifiers and profile digests
the text gives, recomputed the way the text says (an implementer's check)."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest

from coap_gateway.codec import load_profile
from coap_gateway.transport.secure_codec import profile_wire_digest

SPEC = (Path(__file__).resolve().parents[2] / "docs" / "protocol.md").read_text(encoding="utf-8")
ROOT = Path(__file__).resolve().parents[2] / "dictionaries"


def spec_id(row: str) -> str:
    match = re.search(r"^\| " + re.escape(row) + r" \| `(sha256:[0-9a-f]{64})` \|$", SPEC, re.M)
    assert match, row
    return match.group(1)


@pytest.mark.parametrize("profile,digest", [("msc3079", "d2dc"), ("lb2", "bab8"), ("lb3", "bfa0"), ("lb4", "898a")])
def test_profile_digests_as_the_text_defines_them(profile, digest):
    p = load_profile(profile)
    lines = [p.cbor_table.digest, p.routes.digest, p.flate.digest if p.flate else "none"]
    if p.schemas is not None:
        lines.append(p.schemas.digest)
    if p.timeline is not None:
        lines.append(p.timeline.digest)
    text = "".join(line + "\n" for line in lines)
    assert hashlib.sha256(text.encode("ascii")).digest()[:2].hex() == digest == profile_wire_digest(p).hex()
    assert f"({p.id}) `{digest}`" in SPEC


def test_content_identifiers_in_the_text():
    lb3, msc = load_profile("lb3"), load_profile("msc3079")
    assert spec_id("CBOR table v1") == msc.cbor_table.digest
    assert spec_id("CBOR table v2") == lb3.cbor_table.digest
    assert spec_id("route table (msc3079)") == msc.routes.digest
    assert spec_id("route table (lb2, lb3, lb4)") == lb3.routes.digest
    assert spec_id("Flate dictionary (lb2, lb3, lb4)") == lb3.flate.digest
    assert spec_id("schema table (lb3, lb4)") == lb3.schemas.digest
    lb4 = load_profile("lb4")
    assert (lb4.cbor_table, lb4.routes, lb4.flate, lb4.schemas) == (lb3.cbor_table, lb3.routes, lb3.flate, lb3.schemas)
    assert spec_id("timeline table v2 (lb4)") == lb4.timeline.digest
    assert lb4.timeline.digest == "sha256:" + hashlib.sha256((ROOT / "timeline-v2.json").read_bytes()).hexdigest()


def test_cbor_table_identifier_is_the_resolved_form_of_the_text():
    # v1 is a whole table (extends nothing): its resolved form follows from the
    # file alone, as §2 describes — recomputed here without the project's loader
    doc = json.loads((ROOT / "cbor-table-v1.json").read_text(encoding="utf-8"))
    assert doc.get("extends") in (None, 0)
    keys = sorted((c, n) for c, n in doc["keys"])
    preferred = sorted((n, c) for c, n in doc["keys"])
    values = {k: sorted((c, v) for c, v in pairs) for k, pairs in sorted(doc.get("values", {}).items())}
    resolved = {"version": doc["version"], "binary_fields": doc.get("binary_fields", False),
                "keys": keys, "preferred": preferred, "values": values}
    text = json.dumps(resolved, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    assert "sha256:" + hashlib.sha256(text).hexdigest() == spec_id("CBOR table v1")


def test_prologue_example_10():
    from coap_gateway.secure import frame as sf

    text = SPEC.split("Example (IK, lb3): `", 1)[1].split("`", 1)[0]
    expected = bytes.fromhex(text.replace(" ", ""))
    assert sf.handshake_prologue(sf.DatagramKind.IK1, 3, profile_wire_digest(load_profile("lb3"))) == expected


def test_examples_written_out_in_the_text():
    """Examples docs/protocol.md once showed with '…', now whole: recomputed."""
    from coap_gateway.codec.json_cbor import json_to_cbor
    from coap_gateway.codec.payload import body_to_payload

    msc = body_to_payload(b'{"msgtype":"m.text","body":"Hello, see you at 5pm"}', "application/json",
                          load_profile("msc3079"))
    assert msc.content_format == 60 and f"and 34 B: `{msc.payload.hex()}`." in SPEC
    event = json_to_cbor(b'{"event_id": "$6CWRrXHkZKJ8FV8yEzM5_SwOlGZxN5ky18Eqf0F8ePc"}', load_profile("lb2").cbor_table)
    assert f"`a1 01 58 21 01 {event[5:].hex()}` (37 B" in SPEC and event[:5].hex() == "a101582101"
    assert "0d 10 " + "!AbCdEfGhIjKlMnOp:example.org".encode().hex() in SPEC


VECTORS = json.loads((Path(__file__).resolve().parents[1] / "vectors" / "spec.json").read_text(encoding="utf-8"))


@pytest.mark.parametrize("name", sorted(VECTORS["profiles"]))
def test_spec_vectors_profiles(name):
    """tests/vectors/spec.json, recomputed with hashlib as §10 says, and by the code."""
    v = VECTORS["profiles"][name]
    text = "".join(line + "\n" for line in v["digest_lines"])
    digest = hashlib.sha256(text.encode("ascii")).digest()[:2]
    assert digest.hex() == v["profile_digest"] == profile_wire_digest(load_profile(name)).hex()
    label = b"coap-gateway/1"
    assert bytes.fromhex(v["ik_prologue"]) == label + bytes([1, v["id"]]) + digest
    assert bytes.fromhex(v["xx_prologue"]) == label + bytes([3, v["id"]]) + digest


def test_spec_vectors_numbers_binary_and_session_id():
    from coap_gateway.codec.json_cbor import cbor_to_json, json_to_cbor
    from coap_gateway.codec.tables import load_cbor_table
    from coap_gateway.secure import frame as sf

    v2 = load_cbor_table(2)
    for v in VECTORS["numbers"]:
        assert json_to_cbor(v["json"].encode(), v2).hex() == v["cbor_hex"]
        assert cbor_to_json(bytes.fromhex(v["cbor_hex"]), v2) == v["json_out"].encode()
    for v in VECTORS["binary_threshold"]:
        assert json_to_cbor(v["json"].encode(), v2).hex() == v["cbor_hex"]
    h = bytes.fromhex(VECTORS["session_id"]["handshake_hash_hex"])
    assert hashlib.blake2s(h).digest()[:8].hex() == VECTORS["session_id"]["session_id_hex"]
    assert sf.session_id_from_hash(h).hex() == VECTORS["session_id"]["session_id_hex"]
    assert hashlib.blake2s(h, digest_size=8).digest().hex() != VECTORS["session_id"]["session_id_hex"]

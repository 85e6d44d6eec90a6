"""Write tests/vectors/codec.json: byte-level examples of the codec layer.

Run once per table version and review the diff: the file freezes the wire
format, tests/test_vectors.py replays it, and docs/protocol.md quotes it.

    .venv/bin/python tests/vectors/generate.py
"""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

from aiocoap import Message
from aiocoap.numbers.codes import Code
from aiocoap.optiontypes import OpaqueOption, UintOption

from coap_gateway.codec import json_cbor, options, payload, routes, status, timeline
from coap_gateway.codec.compression import decompress
from coap_gateway.codec.profile import load_profile
from coap_gateway.codec.tables import load_cbor_table

OUT = Path(__file__).parent / "codec.json"

EVENT_ID = "$" + base64.urlsafe_b64encode(hashlib.sha256(b"vector event").digest()).decode().rstrip("=")
ROOM_V12 = "!" + base64.urlsafe_b64encode(hashlib.sha256(b"vector room").digest()).decode().rstrip("=")
SHA = base64.b64encode(hashlib.sha256(b"vector content").digest()).decode().rstrip("=")
SIG = base64.b64encode(hashlib.sha512(b"vector signature").digest()).decode().rstrip("=")

CBOR_CASES = [
    (1, {"type": "m.room.message", "content": {"msgtype": "m.text", "body": "Hello World"},
         "sender": "@alice:localhost", "room_id": "!foo:localhost",
         "unsigned": {"bool_value": True, "null_value": None}}, "MSC3079 vector 1"),
    (1, {"error": "something", "errcode": "M_UNKNOWN"}, "MSC3079 vector 2"),
    (2, {"msgtype": "m.text", "body": "Hello, see you at 5pm"}, "reference send body: aliases -1, -2 and value code 0"),
    (2, {"event_id": EVENT_ID}, "send response: event ID as marker 0x01 + 32 bytes"),
    (2, {"errcode": "M_LIMIT_EXCEEDED", "error": "Too Many Requests", "retry_after_ms": 2000}, "error with enumerated errcode"),
    (2, {"type": 7, "membership": [1, 2], "8": "stays text", "msgtype": "m.unknown"}, "escapes: integers and arrays under enumerated keys"),
    (2, {"room_id": ROOM_V12, "hashes": {"sha256": SHA}, "signatures": {"hs": {"ed25519:a": SIG}}},
     "binary fields: room v12 ID (0x03), hash and signature (0x00)"),
]

ROUTE_CASES = [
    ("lb2", "PUT", "/_matrix/client/v3/rooms/!AbCdEfGhIjKlMnOp:example.org/send/m.room.message/txn42"),
    ("lb2", "GET", "/_matrix/client/v3/sync?since=s33_14_0_1_1_1_1_14_0_1_1_1_1_1&timeout=30000"),
    ("lb2", "PUT", "/_matrix/client/v3/rooms/%21r%3Ahs/state/m.room.name/"),
    ("lb2", "GET", "/_matrix/client/v3/unknown/endpoint?x=1"),
    ("lb2", "GET", "/a/b"),
    ("msc3079", "PUT", "/_matrix/client/r0/rooms/!foo:localhost/send/m.room.message/t1"),
]

STATUS_CASES = [(200, None), (201, None), (202, None), (404, None), (418, None), (429, "5"), (503, "Wed, 21 Oct 2026 07:28:00 GMT")]


def route_vector(profile_name: str, method: str, target: str) -> dict:
    table = load_profile(profile_name).routes
    line = routes.http_to_coap(method, target, table)
    opts = Message(code=Code(line.method), uri_path=line.uri_path, uri_query=line.uri_query).opt.encode()
    return {"profile": profile_name, "method": method, "target": target, "coap_code": f"0.{line.method:02d}",
            "route": line.template.name if line.template else None,
            "uri_path": list(line.uri_path), "uri_query": list(line.uri_query), "options_hex": opts.hex()}


def status_vector(http: int, retry_after: str | None) -> dict:
    st = status.http_to_coap(http, retry_after)
    msg = Message(code=Code(st.code))
    if st.http_status is not None:
        msg.opt.add_option(UintOption(options.HTTP_STATUS, st.http_status))
    if st.max_age is not None:
        msg.opt.max_age = st.max_age
    if st.retry_after_header is not None:
        from aiocoap.optiontypes import OpaqueOption
        msg.opt.add_option(OpaqueOption(options.HTTP_HEADER, payload.encode_header("Retry-After", st.retry_after_header)))
    return {"http_status": http, "retry_after": retry_after, "coap_code": status.format_code(st.code),
            "http_status_option": st.http_status, "max_age": st.max_age,
            "retry_after_header": st.retry_after_header, "options_hex": msg.opt.encode().hex()}


def payload_vector(profile_name: str, body: bytes, comment: str) -> dict:
    profile = load_profile(profile_name)
    pl = payload.body_to_payload(body, "application/json", profile)
    vector = {"profile": profile_name, "json": body.decode(), "content_format": pl.content_format,
              "payload_hex": pl.payload.hex(), "dictionary": profile.flate.digest if profile.flate else None,
              "comment": comment}
    if pl.content_format == options.CF_TIMELINE:
        # deflate's bytes are not unique (§5.2): what it must inflate to is
        vector["inflated_hex"] = decompress(pl.payload, timeline.dictionary(profile)).hex()
    return vector


#: a login's answer as Synapse writes it (a real token: its format, its CRC)
LOGIN_ANSWER = (b'{"user_id":"@erin-t1:localhost","access_token":"syt_ZXJpbi10MQ_zdXqPHRdLvnuKSoiqmAN_2JL63s",'
                b'"home_server":"localhost","device_id":"WVWIYXURMJ"}')
#: two messages of a page of events: timestamps 21 ms apart, ages written at one moment
TIMELINE_PAGE = json.dumps({"chunk": [
    {"content": {"body": "Morning! Are we still on for today?", "msgtype": "m.text"},
     "event_id": "$bMGFAoCIeuRtezx2Y5RUYwrdiwpBytqKS2DkrnST6eU", "origin_server_ts": 1796383627465,
     "sender": "@erin:localhost", "type": "m.room.message", "unsigned": {"age": 257}},
    {"content": {"body": "Yes, see you at 5pm", "msgtype": "m.text"},
     "event_id": "$6CWRrXHkZKJ8FV8yEzM5_SwOlGZxN5ky18Eqf0F8ePc", "origin_server_ts": 1796383627486,
     "sender": "@erin:localhost", "type": "m.room.message", "unsigned": {"age": 236}}]},
    separators=(",", ":")).encode()


BINDING_ROOM = "!" + base64.urlsafe_b64encode(hashlib.sha256(b"vector room").digest()).decode().rstrip("=")


#: Synapse tokens of the shape synapse/handlers/auth.py makes (the CRC is right)
SYNAPSE_TOKENS = ("syt_YWxpY2U_MmnDKbQWmwFcIPgPXJoP_1S2WKO", "syr_Ym9i_QWERTYuiopASDFGhjklz_0Nikh6")


def token_definition_vectors() -> list[dict]:
    """Access-Token values (§8a): a Synapse token packed as its column entry
    in a profile with the token column (lb4), as text otherwise."""
    from coap_gateway.codec import ClientBinding
    from coap_gateway.codec.binding import encode_token_definition

    out = []
    for profile_name, handle, token in (("lb4", 0, SYNAPSE_TOKENS[0]), ("lb4", 1, SYNAPSE_TOKENS[1]),
                                        ("lb4", 2, "tok-not-synapse"), ("lb3", 0, SYNAPSE_TOKENS[0])):
        packed = ClientBinding(load_profile(profile_name)).packs_tokens
        out.append({"profile": profile_name, "handle": handle, "token": token,
                    "value_hex": encode_token_definition(handle, token, packed).hex()})
    return out


def binding_vectors() -> list[dict]:
    """Whole CoAP requests (plaintext bytes, MID 0x1234, empty token) as the
    client binding builds them, in order, each answered before the next: the
    token defined then bare, a second account's handle, No-Token."""
    from aiocoap.numbers.types import CON

    from coap_gateway.codec import Attempt, ClientBinding, HttpRequest, response_to_coap
    from coap_gateway.codec.mapping import HttpResponse

    profile = load_profile("lb3")
    client = ClientBinding(profile)
    client.wire.scope = "lbvectors000"
    body = b'{"msgtype":"m.text","body":"Hello, see you at 5pm"}'
    send = f"/_matrix/client/v3/rooms/{BINDING_ROOM}/send/m.room.message/"
    steps = [
        ("the first request of alice's token: Access-Token = handle 0 + token; room and scope defined",
         HttpRequest("PUT", send + "nio-1", body, "application/json", "syt_YWxpY2U_vector")),
        ("alice again, confirmed: no token option (handle 0), room handle 0, txn 1",
         HttpRequest("PUT", send + "nio-2", body, "application/json", "syt_YWxpY2U_vector")),
        ("bob's first request on the same device: Access-Token = handle 1 + token",
         HttpRequest("GET", "/_matrix/client/v3/account/whoami", b"", None, "syt_Ym9i_vector")),
        ("bob again, confirmed: Token-Handle 1",
         HttpRequest("GET", "/_matrix/client/v3/account/whoami", b"", None, "syt_Ym9i_vector")),
        ("a request without a token: No-Token",
         HttpRequest("GET", "/_matrix/client/versions")),
        ("a login: No-Token = 3, bind the answer's token as handle 2 (answered with Token-Bound)",
         HttpRequest("POST", "/_matrix/client/v3/login", BINDING_LOGIN, "application/json")),
        ("carol's first request: her token was bound at login, Token-Handle 2 bare",
         HttpRequest("GET", "/_matrix/client/v3/account/whoami", b"", None, BINDING_LOGIN_TOKEN)),
    ]
    out = []
    for comment, request in steps:
        attempt = Attempt()
        message = client.request(request, attempt)
        message.mtype, message.mid, message.token = CON, 0x1234, b""
        vector = {"comment": comment, "method": request.method, "target": request.target,
                  "token": request.access_token, "coap_hex": message.encode().hex()}
        answer = response_to_coap(HttpResponse(200, b"{}", "application/json"), profile)
        if request.target.endswith("/login"):
            vector["answer"] = BINDING_LOGIN_ANSWER.decode()
            answer = response_to_coap(HttpResponse(200, BINDING_LOGIN_ANSWER, "application/json"), profile)
            answer.opt.add_option(OpaqueOption(options.TOKEN_BOUND, b""))
        out.append(vector)
        client.reply(request, message, answer, attempt)
    return out


#: a new device's static public key (X25519 public keys are any 32 bytes)
SHORT_DEVICE_KEY = bytes(range(0x20, 0x40))
SHORT_OTHER_ROOM = "!aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"


def short_definition_vectors() -> dict:
    """A new device's first send (§7a, "Short definitions"): its key names
    the scope, and the room goes as 4 bytes of a digest keyed with the key,
    matched against the account's joined rooms."""
    from aiocoap.numbers.types import CON

    from coap_gateway.codec import Attempt, ClientBinding, HttpRequest
    from coap_gateway.codec.route_option import key_scope, room_digest

    profile = load_profile("lb4")
    client = ClientBinding(profile, SHORT_DEVICE_KEY, fresh_key=True)
    body = b'{"msgtype":"m.text","body":"Hello, see you at 5pm"}'
    target = f"/_matrix/client/v3/rooms/{BINDING_ROOM}/send/m.room.message/nio-1"
    message = client.request(HttpRequest("PUT", target, body, "application/json", SYNAPSE_TOKENS[0]), Attempt())
    message.mtype, message.mid, message.token = CON, 0x1234, b""
    return {"profile": "lb4", "device_key_hex": SHORT_DEVICE_KEY.hex(), "key_scope": key_scope(SHORT_DEVICE_KEY),
            "room": BINDING_ROOM, "room_digest_hex": room_digest(SHORT_DEVICE_KEY, BINDING_ROOM).hex(),
            "joined_rooms": [SHORT_OTHER_ROOM, BINDING_ROOM], "method": "PUT", "target": target,
            "token": SYNAPSE_TOKENS[0], "coap_hex": message.encode().hex(),
            "comment": "a new device's first send: packed token, room by digest [0, h'digest'], txn [0] (the key's "
                       "scope); the server asks the homeserver for joined_rooms and matches the digest"}


BINDING_LOGIN = b'{"type":"m.login.password","identifier":{"type":"m.id.user","user":"carol"},"password":"pw"}'
BINDING_LOGIN_TOKEN = "syt_Y2Fyb2w_vector"
BINDING_LOGIN_ANSWER = (b'{"user_id":"@carol:hs","access_token":"' + BINDING_LOGIN_TOKEN.encode()
                        + b'","home_server":"hs","device_id":"CAROLDEV"}')


def main() -> None:
    doc = {
        "description": "Byte-level vectors of the codec layer; see docs/protocol.md. Generated by tests/vectors/generate.py.",
        "tables": {v: load_cbor_table(v).digest for v in (1, 2)},
        "cbor": [{"table": t, "json": j, "cbor_hex": json_cbor.encode(j, load_cbor_table(t)).hex(), "comment": c}
                 for t, j, c in CBOR_CASES],
        "routes": [route_vector(*case) for case in ROUTE_CASES],
        "status": [status_vector(*case) for case in STATUS_CASES],
        "binding": binding_vectors(),
        "token_definitions": token_definition_vectors(),
        "short_definitions": short_definition_vectors(),
        "payload": [
            payload_vector("lb2", b'{"msgtype":"m.text","body":"Hello, see you at 5pm"}', "deflated: Content-Format absent"),
            payload_vector("lb2", json.dumps({"event_id": EVENT_ID}, separators=(",", ":")).encode(), "whichever is smaller"),
            payload_vector("msc3079", b'{"msgtype":"m.text","body":"Hello, see you at 5pm"}', "MSC3079 never deflates: CF 60"),
            payload_vector("lb3", TIMELINE_PAGE, "lb3 timeline form: timestamps and ages as differences"),
            payload_vector("lb4", TIMELINE_PAGE, "lb4 timeline form: the texts, then the event IDs in the column after the body"),
            payload_vector("lb4", LOGIN_ANSWER, "lb4 timeline form without timestamps: the token in the column"),
        ],
    }
    OUT.write_text(json.dumps(doc, indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()


# ------------------------------------------------- federation (issue 12, appended)

FEDERATION_OUT = Path(__file__).parent / "federation.json"


def _b64(data: bytes, urlsafe: bool = False) -> str:
    return (base64.urlsafe_b64encode if urlsafe else base64.b64encode)(data).decode().rstrip("=")


def federation_vectors() -> dict:
    """One federation transaction with one m.room.message PDU, as gateway A
    sends it to gateway B (profile lb3, the plain mapping), and its answer."""
    from aiocoap.numbers.types import ACK, CON

    from coap_gateway.codec import HttpResponse
    from coap_gateway.federation import FederationRequest, federation_to_coap
    from coap_gateway.federation.mapping import answer_to_coap

    profile = load_profile("lb3")
    event_ids = ["$" + _b64(hashlib.sha256(f"vector event {i}".encode()).digest(), urlsafe=True) for i in range(4)]
    pdu = {
        "auth_events": event_ids[:3],
        "content": {"body": "Hello, see you at 5pm", "msgtype": "m.text"},
        "depth": 12,
        "hashes": {"sha256": _b64(hashlib.sha256(b"vector content").digest())},
        "origin_server_ts": 1764800000000,
        "prev_events": event_ids[3:],
        "room_id": "!" + _b64(hashlib.sha256(b"vector room").digest()[:12], urlsafe=True) + ":hs-a.test",
        "sender": "@alice:hs-a.test",
        "signatures": {"hs-a.test": {"ed25519:a_AbCd": _b64(hashlib.sha512(b"vector event signature").digest())}},
        "type": "m.room.message",
        "unsigned": {"age_ts": 1764800000000},
    }
    txn = {"edus": [], "origin": "hs-a.test", "origin_server_ts": 1764800000123, "pdus": [pdu]}
    body = json.dumps(txn, separators=(",", ":"), sort_keys=True).encode()
    authorization = ('X-Matrix origin="hs-a.test",destination="hs-b.test",key="ed25519:a_AbCd",'
                     f'sig="{_b64(hashlib.sha512(b"vector request signature").digest())}"')
    request = FederationRequest("PUT", "/_matrix/federation/v1/send/1764800000123", body, "application/json",
                                [authorization])
    message = federation_to_coap(request, profile)
    message.mtype, message.mid, message.token = CON, 0x1234, b""
    answer_body = json.dumps({"pdus": {"$" + _b64(hashlib.sha256(b"vector pdu id").digest(), urlsafe=True): {}}},
                             separators=(",", ":")).encode()
    answer = answer_to_coap(HttpResponse(200, answer_body, "application/json"), profile)
    answer.mtype, answer.mid, answer.token = ACK, 0x1234, b""
    return {
        "description": "Federation, the plain mapping (docs/protocol.md 'Federation (plain mapping)'); "
                       "generated by tests/vectors/generate.py.",
        "profile": "lb3",
        "request": {"method": request.method, "target": request.target, "content_type": request.content_type,
                    "authorization": authorization, "body": body.decode(), "coap_hex": message.encode().hex()},
        "answer": {"status": 200, "body": answer_body.decode(), "coap_hex": answer.encode().hex()},
    }


def write_federation_vectors() -> None:
    FEDERATION_OUT.write_text(json.dumps(federation_vectors(), indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {FEDERATION_OUT}")


if __name__ == "__main__":
    write_federation_vectors()


# --- the values docs/protocol.md defines byte by byte (issue 14) ---------------

SPEC_OUT = Path(__file__).parent / "spec.json"


def spec_vectors() -> dict:
    from coap_gateway.codec import profile_names
    from coap_gateway.secure import frame as sf
    from coap_gateway.transport.secure_codec import profile_wire_digest

    profiles = {}
    for name in profile_names():
        p = load_profile(name)
        lines = [p.cbor_table.digest, p.routes.digest, p.flate.digest if p.flate else "none"]
        if p.schemas is not None:
            lines.append(p.schemas.digest)
        if p.timeline is not None:
            lines.append(p.timeline.digest)
        profiles[name] = {"id": p.id, "digest_lines": lines, "profile_digest": profile_wire_digest(p).hex(),
                          "ik_prologue": sf.handshake_prologue(sf.DatagramKind.IK1, p.id, profile_wire_digest(p)).hex(),
                          "xx_prologue": sf.handshake_prologue(sf.DatagramKind.XX1, p.id, profile_wire_digest(p)).hex()}
    v2 = load_cbor_table(2)
    numbers = []
    for text in ('{"a":1.0}', '{"a":1}', '{"a":-0.0}', '{"a":1.5e0}', '{"a":1e300}', '{"a":-7}', '{"a":1e15}',
                 '{"a":1e16}', '{"a":0.0001}', '{"a":0.00001}', '{"a":-2.5E+3}'):
        cbor = json_cbor.json_to_cbor(text.encode(), v2)
        numbers.append({"json": text, "cbor_hex": cbor.hex(), "json_out": json_cbor.cbor_to_json(cbor, v2).decode()})
    binary = [{"json": json.dumps({"event_id": eid}), "cbor_hex": json_cbor.json_to_cbor(
        json.dumps({"event_id": eid}).encode(), v2).hex()}
        for eid in ("$" + "A" * 21 + "Q", "$" + "A" * 20, "$6CWRrXHkZKJ8FV8yEzM5_SwOlGZxN5ky18Eqf0F8ePc")]
    handshake_hash = hashlib.sha256(b"spec vector handshake hash").digest()
    return {
        "comment": "values docs/protocol.md defines (§2 content identifiers, §6.1 numbers, §6.4 binary "
                   "threshold, §10 profile digests, prologues, session_id); tests/codec/test_spec_digests.py",
        "profiles": profiles,
        "numbers": numbers,
        "binary_threshold": binary,
        "session_id": {"handshake_hash_hex": handshake_hash.hex(),
                       "session_id_hex": sf.session_id_from_hash(handshake_hash).hex()},
    }


def write_spec_vectors() -> None:
    SPEC_OUT.write_text(json.dumps(spec_vectors(), indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {SPEC_OUT}")


if __name__ == "__main__":
    write_spec_vectors()


# --- federation, the compact transaction (issue 12, item 2) --------------------

COMPACT_OUT = Path(__file__).parent / "federation-compact.json"

#: a real transaction: stock Synapse 1.163 (room version 12) sent it to hs-b.test,
#: which answered with the event ID in "answer" (captured at gateway A)
REAL_TRANSACTION = {
    "target": "/_matrix/federation/v1/send/1796351748852",
    "authorization": 'X-Matrix origin="hs-a.test",key="ed25519:a_IOlN",sig="Mt08o+wIX3/0csHtDGjWE94yQZOdtpKG/'
                     'da9+ugGxSTuaWiQ5RMZROSDNYgR3XhNdUv/kn99B75VuKKGveVNCA",destination="hs-b.test"',
    "body": '{"origin":"hs-a.test","origin_server_ts":1796351750459,"pdus":[{"auth_events":["$cYvvOXRS31eZSwFoINjgz'
            'NqonP42K_8_PB9BC2y2pF8","$Fmw97m1cmsAuVOqZCYnqXwuj-DG0pB4YqINka9dvg6M"],"content":{"body":"Hello, see '
            'you at 5pm","msgtype":"m.text"},"depth":9,"hashes":{"sha256":"ho9aktri5QbfjQj7Z8jqfGR2MsA8Ul6Xf/HrImCzL'
            'oA"},"origin_server_ts":1796351750436,"prev_events":["$HPNtUlAMGjlkvPgMd3cDqqSegcWWWPKFRCzDhgl9Miw"],"'
            'room_id":"!xjOdVmk8WYveSRD2p_4SfbOHnsMM13_5PW6u8dVHN1A","sender":"@alice:hs-a.test","signatures":{"hs-'
            'a.test":{"ed25519:a_IOlN":"C8owvnETPoKxE/mssmaAHTduG8kDSPe24zdTAIF3+Ap/IAD8FkD0u8ILi4g6RFu1o6PP80fI4ASY'
            'nonNLhXoAQ"}},"type":"m.room.message","unsigned":{"age_ts":1796351750436}}]}',
    "answer": '{"pdus":{"$f9tkba9ZRuSM_-Su5M4nyxCppWRzGU78ZSTm_5QNo78":{}}}',
}
#: the sender's clock when it sent it, and the receiver's when it arrived (ms)
COMPACT_SENT_AT, COMPACT_RECEIVED_AT = 1796351750470, 1796351752900


def compact_vectors() -> dict:
    """The real transaction above in the compact form: every ID whole (first
    contact), then with references and the key ID left out (the IDs and key
    both gateways hold, listed); the "all accepted" answer."""
    from aiocoap.numbers.types import ACK, CON

    from coap_gateway.federation import FederationRequest
    from coap_gateway.federation.compact import KnownIds, content_hash, encode_send, event_id

    profile = load_profile("lb3")
    real = REAL_TRANSACTION
    request = FederationRequest("PUT", real["target"], real["body"].encode(), "application/json", [real["authorization"]])
    pdu = json.loads(real["body"])["pdus"][0]
    known = KnownIds()
    shared = [pdu["room_id"], *pdu["prev_events"], *pdu["auth_events"]]
    known.learn(shared)
    cases = []
    for name, ids, keys in (("whole", None, frozenset()), ("references", known, frozenset({"a_IOlN"}))):
        message, _ = encode_send(request, profile, origin="hs-a.test", destination="hs-b.test", known=ids,
                                 now_ms=COMPACT_SENT_AT, known_keys=keys)
        message.mtype, message.mid, message.token = CON, 0x2345, b""
        cases.append({"name": name, "known_ids": shared if ids is not None else [], "known_keys": sorted(keys),
                      "payload_hex": message.payload.hex(), "coap_hex": message.encode().hex()})
    accepted = Message(code=Code.CHANGED)
    accepted.mtype, accepted.mid, accepted.token = ACK, 0x2345, b""
    return {
        "description": "Federation, the compact transaction (docs/protocol.md 'Federation (compact "
                       "transactions)'); generated by tests/vectors/generate.py from a transaction stock "
                       "Synapse sent.",
        "profile": "lb3",
        "origin": "hs-a.test", "destination": "hs-b.test",
        "sent_at_ms": COMPACT_SENT_AT, "received_at_ms": COMPACT_RECEIVED_AT,
        "request": {"target": real["target"], "authorization": real["authorization"], "body": real["body"]},
        "synapse_answer": real["answer"],
        "event_id": event_id(pdu),
        "content_hash": base64.b64encode(content_hash(pdu)).decode().rstrip("="),
        "cases": cases,
        "accepted_answer_hex": accepted.encode().hex(),
    }


def write_compact_vectors() -> None:
    COMPACT_OUT.write_text(json.dumps(compact_vectors(), indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {COMPACT_OUT}")


if __name__ == "__main__":
    write_compact_vectors()

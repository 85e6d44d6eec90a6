"""Token and handle binding (codec.binding), sans-I/O: both sides, no loop, no link."""

from __future__ import annotations

import base64
import json
import random
import zlib

import cbor2
import pytest
from aiocoap import Message
from aiocoap.numbers.codes import Code
from aiocoap.numbers.types import ACK, CON
from aiocoap.optiontypes import OpaqueOption
from hypothesis import given, settings
from hypothesis import strategies as st

from coap_gateway.codec.mapping import coap_to_response
from coap_gateway.codec import (
    Attempt,
    ClientBinding,
    HttpRequest,
    HttpResponse,
    Refused,
    Resend,
    Resolved,
    RoomsWanted,
    ServerBinding,
    is_logout,
    load_profile,
    options,
    response_to_coap,
)
from coap_gateway.codec.binding import (
    MAX_TOKENS_PER_DEVICE,
    decode_token_definition,
    encode_token_definition,
    issues_token,
)
from coap_gateway.codec import column
from coap_gateway.codec.route_option import ServerWireState
from coap_gateway.errors import CodecError

LB3 = load_profile("lb3")
ROOM = "!Z_3p6J2e5-kYV4J1fal9-sgzkAvoytJ1NYsGTdpIa3g"
ROOM2 = "!aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
SEND = f"/_matrix/client/v3/rooms/{ROOM}/send/m.room.message/nio-1"
BODY = b'{"msgtype":"m.text","body":"Hello, see you at 5pm"}'
WHOAMI = "/_matrix/client/v3/account/whoami"


def send(token: str | None = "tok-alice", txn: str = "nio-1", room: str = ROOM) -> HttpRequest:
    return HttpRequest("PUT", SEND.replace("nio-1", txn).replace(ROOM, room), BODY, "application/json", token)


def whoami(token: str | None = "tok-alice") -> HttpRequest:
    return HttpRequest("GET", WHOAMI, access_token=token)


def crossing(message: Message, remote: object = "device-a") -> Message:
    """The request as the server gateway reads it off the link (bytes and back)."""
    message.mtype, message.mid, message.token = CON, 1, b""
    return Message.decode(message.encode(), remote)


def token_options(message: Message) -> tuple[bytes | None, int | None, bool]:
    """(Access-Token value, Token-Handle, No-Token) of a request."""
    given_ = message.opt.get_option(options.ACCESS_TOKEN)
    bare = message.opt.get_option(options.TOKEN_HANDLE)
    return ((given_[0].value if given_ else None), (bare[0].value if bare else None),
            bool(message.opt.get_option(options.NO_TOKEN)))


def answered(message: Message) -> Message:
    """What the server gateway sends back for a forwarded request."""
    return response_to_coap(HttpResponse(200, b"{}", "application/json"), LB3)


def test_token_definition_bytes():
    assert encode_token_definition(0, "syt_abc") == b"\x00syt_abc"
    assert encode_token_definition(23, "t") == b"\x17t"
    assert encode_token_definition(24, "t") == b"\x18\x18t"
    assert encode_token_definition(300, "t") == b"\x19\x01\x2ct"
    for handle, token in ((0, "syt_abc"), (23, "t"), (24, "t"), (300, "t"), (70000, "x" * 1024)):
        assert decode_token_definition(encode_token_definition(handle, token)) == (handle, token)
    for bad in (b"", b"\x00", b"\x20tok", b"\x18", b"\x00to k", b"\x00t\x00k", b"\x00" + b"x" * 1025, b"\x00\xc3\xa9"):
        with pytest.raises(CodecError):
            decode_token_definition(bad)


BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def synapse_token(localpart: str, letters: str, prefix: str = "syt") -> str:
    """A token as Synapse makes them (synapse/handlers/auth.py): the rest's
    CRC-32 in base62 at the end."""
    base = f"{prefix}_{base64.b64encode(localpart.encode()).decode().rstrip('=')}_{letters}"
    num, crc = zlib.crc32(base.encode()), ""
    while num:
        num, digit = divmod(num, 62)
        crc = BASE62[digit] + crc
    return f"{base}_{crc.rjust(6, '0')}"


def test_a_synapse_token_is_defined_packed():
    token = synapse_token("alice", "MmnDKbQWmwFcIPgPXJoP")
    value = encode_token_definition(0, token, packed=True)
    # handle 0, kind 0 (syt), the localpart's 5 bytes, the 20 letters as 15 bytes: 23 B, not 40
    assert value[:8] == b"\x00\x00\x05alice" and len(value) == 23 and len(token) == 39
    assert decode_token_definition(value) == (0, token)
    refresh = synapse_token("bob", "QWERTYuiopASDFGhjklz", "syr")
    assert decode_token_definition(encode_token_definition(7, refresh, packed=True)) == (7, refresh)
    # anything else stays text: another shape, a wrong CRC, a profile without the column
    wrong_crc = token[:-1] + ("A" if token[-1] != "A" else "B")
    assert encode_token_definition(0, wrong_crc, packed=True) == b"\x00" + wrong_crc.encode()
    assert encode_token_definition(0, "tok-alice", packed=True) == b"\x00tok-alice"
    assert encode_token_definition(0, token) == b"\x00" + token.encode()
    # packed values the reader refuses: cut, followed by more, an unknown kind, no
    # localpart, a random part out of range
    for bad in (value[:-1], value + b"x", b"\x00\x02" + value[2:], b"\x00\x00\x00" + value[8:],
                value[:8] + b"\xff" * 15):
        with pytest.raises(CodecError):
            decode_token_definition(bad)


def test_an_lb4_client_defines_a_synapse_token_packed_and_the_server_reads_it():
    lb4 = load_profile("lb4")
    token = synapse_token("alice", "MmnDKbQWmwFcIPgPXJoP")
    client, server = ClientBinding(lb4), ServerBinding(lb4)
    message = client.request(whoami(token), Attempt())
    assert token_options(message) == (b"\x00" + column.token_entry(token), None, False)
    resolved = server.resolve(crossing(message))
    assert isinstance(resolved, Resolved) and resolved.token == token
    assert token_options(ClientBinding(LB3).request(whoami(token), Attempt()))[0] == b"\x00" + token.encode()


def test_a_token_is_defined_until_confirmed_then_its_handle_stands_for_it():
    client = ClientBinding(LB3)
    a1, a2 = Attempt(), Attempt()
    first = client.request(whoami(), a1)
    concurrent = client.request(whoami(), a2)  # before the first was answered: it defines the token too
    assert token_options(first) == (b"\x00tok-alice", None, False)
    assert token_options(concurrent) == (b"\x00tok-alice", None, False)
    assert client.resend(answered(first), a1) is None  # answered: confirmed
    later = client.request(whoami())
    assert token_options(later) == (None, None, False)  # handle 0: no option at all
    assert client.counters.token_sent == 2
    # a request without a token says so
    assert token_options(client.request(HttpRequest("GET", "/_matrix/client/versions"))) == (None, None, True)


def test_a_second_account_gets_its_own_handle():
    client, server = ClientBinding(LB3), ServerBinding(LB3)
    for token in ("tok-alice", "tok-bob"):
        attempt = Attempt()
        message = client.request(whoami(token), attempt)
        assert isinstance(server.resolve(crossing(message)), Resolved)
        client.resend(answered(message), attempt)
    alice, bob = client.request(whoami("tok-alice")), client.request(whoami("tok-bob"))
    assert token_options(alice) == (None, None, False)
    assert token_options(bob) == (None, 1, False)  # Token-Handle 1: 4 bytes on the wire
    # the server resolves each by the handle it names, in any order
    for message, token in ((bob, "tok-bob"), (alice, "tok-alice"), (bob, "tok-bob")):
        resolved = server.resolve(crossing(message))
        assert isinstance(resolved, Resolved) and resolved.token == token


def test_token_unbound_then_resent_with_the_token():
    client = ClientBinding(LB3)
    attempt = Attempt()
    client.resend(answered(client.request(whoami(), attempt)), attempt)  # confirmed by a server that then restarted
    server = ServerBinding(LB3)
    attempt = Attempt()
    message = client.request(whoami(), attempt)
    refused = server.resolve(crossing(message))
    assert isinstance(refused, Refused) and refused.reason == "token_unbound"
    assert refused.reply.code == Code.UNAUTHORIZED and refused.reply.opt.get_option(options.TOKEN_UNBOUND)
    assert client.resend(refused.reply, attempt) == Resend(with_token=True)
    assert client.counters.token_rebinds == 1
    resent = client.request(whoami(), attempt)
    assert token_options(resent) == (b"\x00tok-alice", None, False)
    resolved = server.resolve(crossing(resent))
    assert isinstance(resolved, Resolved) and resolved.token == "tok-alice" and resolved.http.target == WHOAMI
    # a second Token-Unbound for the same request is an answer, not another resend
    assert client.resend(refused.reply, attempt) is None


def test_handle_unknown_then_resent_with_definitions():
    client, server = ClientBinding(LB3), ServerBinding(LB3)
    attempt = Attempt()
    first = client.request(send(), attempt)
    assert isinstance(server.resolve(crossing(first)), Resolved)
    client.resend(answered(first), attempt)
    server.device("device-a").wire = ServerWireState()  # the server lost the definitions, not the token
    attempt = Attempt()
    bare = client.request(send(txn="nio-2"), attempt)
    route = bare.opt.get_option(options.ROUTE)[0].value
    assert len(route) < len(first.opt.get_option(options.ROUTE)[0].value)  # handle and scope, undefined
    refused = server.resolve(crossing(bare))
    assert isinstance(refused, Refused) and refused.reason == "handle_unknown"
    assert refused.reply.code == Code.BAD_REQUEST and refused.reply.opt.get_option(options.HANDLE_UNKNOWN)
    assert client.resend(refused.reply, attempt) == Resend(with_token=False)
    assert client.counters.handle_resends == 1
    defined = client.request(send(txn="nio-2"), attempt)
    assert len(defined.opt.get_option(options.ROUTE)[0].value) > len(route)
    resolved = server.resolve(crossing(defined))
    assert isinstance(resolved, Resolved)
    assert resolved.http.target == SEND.replace("nio-1", f"{client.wire.scope}.1")


def test_resends_end_after_four_attempts():
    # token, definitions, and a room in full after its digest matched nothing
    client = ClientBinding(LB3)
    attempt = Attempt()
    reply = Message(code=Code.BAD_REQUEST)
    reply.opt.add_option(OpaqueOption(options.HANDLE_UNKNOWN, b""))
    outcomes = []
    for _ in range(5):
        message = client.request(send(), attempt)
        outcome = client.reply(send(), message, reply, attempt)
        outcomes.append(type(outcome).__name__)
        if isinstance(outcome, HttpResponse):
            break
    assert outcomes == ["Resend", "Resend", "Resend", "HttpResponse"]
    assert client.wire.confirmed == set()  # a refusal confirms nothing


def test_a_successful_logout_retires_the_handle_on_both_sides():
    client, server = ClientBinding(LB3), ServerBinding(LB3)
    attempt = Attempt()
    message = client.request(whoami(), attempt)
    server.resolve(crossing(message))
    client.resend(answered(message), attempt)
    logout = HttpRequest("POST", "/_matrix/client/v3/logout", b"{}", "application/json", "tok-alice")
    message = client.request(logout)
    resolved = server.resolve(crossing(message))
    assert isinstance(resolved, Resolved) and resolved.token == "tok-alice" and resolved.handle == 0
    ok = HttpResponse(200, b"{}", "application/json")
    server.after(crossing(message), resolved, ok)
    assert 0 not in server.device("device-a").tokens
    client.response(logout, message, response_to_coap(ok, LB3))
    # handle 0 is never used again: the next login's token is handle 1
    assert token_options(client.request(whoami("tok-alice-2")))[0] == b"\x01tok-alice-2"


def test_a_refused_token_keeps_nothing_it_defined():
    """Definitions are kept only for a device whose token the homeserver accepts."""
    client, server = ClientBinding(LB3), ServerBinding(LB3)
    message = client.request(send("bogus"))
    resolved = server.resolve(crossing(message))
    assert isinstance(resolved, Resolved) and server.sizes()["handles"] == 1 and server.sizes()["tokens"] == 1
    refused = HttpResponse(401, b'{"errcode":"M_UNKNOWN_TOKEN","error":"Invalid access token passed."}',
                           "application/json")
    server.after(crossing(message), resolved, refused)
    assert server.sizes() == {"devices": 1, "tokens": 0, "token_bytes": 0, "handles": 0, "handle_bytes": 0}
    assert server.device("device-a").wire.scope is None


def test_a_client_that_lost_its_state_is_recognised():
    server = ServerBinding(LB3)
    old, new = ClientBinding(LB3), ClientBinding(LB3)
    first = server.resolve(crossing(old.request(send())))
    assert isinstance(first, Resolved) and not first.redefined
    again = server.resolve(crossing(old.request(send(txn="nio-2"))))
    assert isinstance(again, Resolved) and not again.redefined  # the same definitions again: nothing changed
    # a new instance (no state) gives handle 0 to another token and room handle 0 to another room
    restarted = server.resolve(crossing(new.request(send("tok-other", room=ROOM2))))
    assert isinstance(restarted, Resolved) and restarted.redefined
    assert restarted.token == "tok-other" and ROOM2 in restarted.http.target


LOGIN = "/_matrix/client/v3/login"
LOGIN_BODY = b'{"type":"m.login.password","identifier":{"type":"m.id.user","user":"alice"},"password":"pw"}'


def login() -> HttpRequest:
    return HttpRequest("POST", LOGIN, LOGIN_BODY, "application/json", None)


def logged_in(token: str) -> HttpResponse:
    return HttpResponse(200, b'{"user_id":"@alice:hs","access_token":"%s","device_id":"D"}' % token.encode(),
                        "application/json")


def received(reply: Message) -> Message:
    """A reply as the client gateway reads it off the link."""
    reply.mtype, reply.mid, reply.token = ACK, 1, b""
    return Message.decode(reply.encode(), "server")


def log_in(client: ClientBinding, server: ServerBinding, answer: HttpResponse) -> tuple[Message, Message]:
    """One login through both halves; the request and the server's reply."""
    attempt, http = Attempt(), login()
    message = client.request(http, attempt)
    resolved = server.resolve(crossing(message))
    assert isinstance(resolved, Resolved) and resolved.token is None
    reply = response_to_coap(answer, LB3)
    if server.after(crossing(message), resolved, answer):
        reply.opt.add_option(OpaqueOption(options.TOKEN_BOUND, b""))
    reply = received(reply)
    assert client.resend(reply, attempt) is None
    assert json.loads(client.response(http, message, reply).body) == json.loads(answer.body)
    return message, reply


def test_a_login_answer_token_is_bound_without_crossing_back():
    """No-Token = handle + 1 on a login; the server binds the token its answer
    holds and says Token-Bound; the token's first request carries no token option."""
    client, server = ClientBinding(LB3), ServerBinding(LB3)
    message, reply = log_in(client, server, logged_in("syt_fresh"))
    assert message.opt.get_option(options.NO_TOKEN)[0].encode() == b"\x01"  # handle 0, as uint 1
    assert reply.opt.get_option(options.TOKEN_BOUND)
    assert token_options(client.request(whoami("syt_fresh"))) == (None, None, False)
    resolved = server.resolve(crossing(client.request(whoami("syt_fresh"))))
    assert isinstance(resolved, Resolved) and resolved.token == "syt_fresh" and resolved.handle == 0
    assert client.counters.token_sent == 0
    # a request that cannot issue a token asks for nothing
    assert token_options(client.request(HttpRequest("GET", "/_matrix/client/v3/login")))[2]
    assert client.request(HttpRequest("GET", "/_matrix/client/v3/login")).opt.get_option(options.NO_TOKEN)[0].value == b""


def test_a_failed_login_gives_its_handle_back_and_a_bound_handle_never_changes_meaning():
    client, server = ClientBinding(LB3), ServerBinding(LB3)
    _, reply = log_in(client, server, HttpResponse(403, b'{"errcode":"M_FORBIDDEN"}', "application/json"))
    assert not reply.opt.get_option(options.TOKEN_BOUND)
    assert client.next_token_handle == 0 and client.tokens == {}
    log_in(client, server, logged_in("syt_one"))
    assert client.tokens == {"syt_one": 0}
    # a server already holding the next handle for another token binds nothing over it
    server.device("device-a").tokens[1] = "syt_someone_else"
    _, reply = log_in(client, server, logged_in("syt_two"))
    assert not reply.opt.get_option(options.TOKEN_BOUND) and "syt_two" not in client.tokens
    assert server.device("device-a").tokens[1] == "syt_someone_else"
    # the client then defines the token itself, under a number never used
    assert token_options(client.request(whoami("syt_two")))[0] == b"\x01syt_two"
    # an answer token that no definition could carry is not bound
    _, reply = log_in(client, server, logged_in("syt with space"))
    assert not reply.opt.get_option(options.TOKEN_BOUND)


def test_a_login_reserves_its_handle_for_the_whole_exchange():
    """Another token met while a login is under way gets another number (rule 1)."""
    client, server = ClientBinding(LB3), ServerBinding(LB3)
    attempt, http = Attempt(), login()
    message = client.request(http, attempt)
    other = client.request(whoami("tok-other"))
    assert token_options(other)[0] == b"\x01tok-other"
    assert server.resolve(crossing(other)).token == "tok-other"  # type: ignore[union-attr]
    resolved = server.resolve(crossing(message))
    answer = logged_in("syt_fresh")
    assert server.after(crossing(message), resolved, answer)  # type: ignore[arg-type]
    reply = response_to_coap(answer, LB3)
    reply.opt.add_option(OpaqueOption(options.TOKEN_BOUND, b""))
    client.response(http, message, received(reply))
    assert client.tokens == {"tok-other": 1, "syt_fresh": 0}
    for token, handle in (("tok-other", 1), ("syt_fresh", 0)):
        resolved = server.resolve(crossing(client.request(whoami(token))))
        assert isinstance(resolved, Resolved) and (resolved.token, resolved.handle) == (token, handle)


@pytest.mark.parametrize("target, method, issues", [
    ("/_matrix/client/v3/login", "POST", True),
    ("/_matrix/client/r0/register?kind=user", "POST", True),
    ("/_matrix/client/v3/refresh", "POST", True),
    ("/_matrix/client/v3/login", "GET", False),
    ("/_matrix/client/v3/register/available", "GET", False),
    ("/_matrix/client/v3/register/email/requestToken", "POST", False),
    ("/_matrix/media/v3/login", "POST", False),
])
def test_which_requests_may_issue_a_token(target, method, issues):
    assert issues_token(method, target) is issues


@pytest.mark.parametrize("target, logout", [
    ("/_matrix/client/v3/logout", True),
    ("/_matrix/client/r0/logout", True),
    ("/_matrix/client/v3/logout/all", True),
    ("/_matrix/client/v3/logout?x=1", True),
    ("/_matrix/client/v3/rooms/!r:hs/logout", False),
    ("/_matrix/media/v3/logout", False),
    ("/logout", False),
    ("/_matrix/client/v3/logout/elsewhere", False),
])
def test_which_targets_are_logouts(target, logout):
    assert is_logout(target) is logout


def test_malformed_requests_are_refused_before_anything_is_forwarded():
    server = ServerBinding(LB3)
    bad = Message(code=Code.PUT)
    bad.opt.add_option(OpaqueOption(options.ROUTE, b"\xff\xff"))
    bad.opt.add_option(OpaqueOption(options.NO_TOKEN, b""))
    refused = server.resolve(crossing(bad))
    assert isinstance(refused, Refused) and refused.reason == "malformed"
    assert refused.reply.code == Code.BAD_REQUEST and refused.reply.payload
    # the diagnostic is text and says so: the client gateway shows it as text
    # (without Content-Format it would be taken for deflated CBOR, and fail)
    assert refused.reply.opt.content_format == 0
    shown = coap_to_response(refused.reply, LB3)
    assert shown.status == 400 and shown.content_type.startswith("text/plain")
    assert shown.body == refused.reply.payload
    # and a CoAP library's own error text without Content-Format (aiocoap's
    # renderable errors) is shown as text too, not refused as bad CBOR
    bare = Message(code=Code.REQUEST_ENTITY_INCOMPLETE, payload=b"blocks missing")
    shown = coap_to_response(bare, LB3)
    assert shown.status == 400 and shown.body == b"blocks missing" and shown.content_type.startswith("text/plain")
    two = Message(code=Code.GET, uri_path=["_matrix", "client", "versions"])
    two.opt.add_option(OpaqueOption(options.NO_TOKEN, b""))
    two.opt.add_option(OpaqueOption(options.ACCESS_TOKEN, b"\x00tok"))
    assert isinstance(server.resolve(crossing(two)), Refused)
    assert server.sizes()["tokens"] == 0


BIGNUM = cbor2.dumps(cbor2.CBORTag(2, b"\xff" * 2030))  # ~4890 decimal digits


@pytest.mark.parametrize("route", [
    b"\x00" + BIGNUM + b"\x00\x00",  # as the room handle
    b"\x00" + cbor2.dumps([5, "!evil:x"]) + BIGNUM + b"\x00",  # as the event type, after a room definition
    b"\x00" + cbor2.dumps([5, "!evil:x"]) + b"\x00" + BIGNUM,  # as the txn
    b"\x00" + cbor2.dumps([5, "!evil:x"]) + cbor2.dumps(cbor2.CBORTag(3, b"\xff" * 2020)) + b"\x00",  # negative
], ids=["room", "event type", "txn", "negative"])
def test_a_bignum_in_the_route_option_is_a_4_00_and_defines_nothing(route):
    """§7a: a tag is refused (bignums were let through, and printing one of
    4300+ digits in the error raised ValueError: a crash, the client saw
    4.08, and the request's Access-Token and room definitions stayed)."""
    server = ServerBinding(LB3)
    message = Message(code=Code.PUT)
    message.opt.add_option(OpaqueOption(options.ACCESS_TOKEN, encode_token_definition(0, "syt_bogus")))
    message.opt.add_option(OpaqueOption(options.ROUTE, route))
    refused = server.resolve(crossing(message))
    assert isinstance(refused, Refused) and refused.reason == "malformed" and refused.reply.code == Code.BAD_REQUEST
    assert b"tag" in refused.reply.payload
    assert server.sizes()["handles"] == 0 and server.sizes()["tokens"] == 0


def test_definitions_are_taken_back_whatever_refuses_the_request(monkeypatch):
    """A request that defines a room and is then refused — by a malformed
    item, or by an error nobody foresaw — leaves no definition behind."""
    from coap_gateway.codec import route_option

    server = ServerBinding(LB3)
    route = b"\x00" + cbor2.dumps([5, "!evil:x"]) + b"\x00\xf5"  # the txn is `true`
    message = Message(code=Code.PUT)
    message.opt.add_option(OpaqueOption(options.NO_TOKEN, b""))
    message.opt.add_option(OpaqueOption(options.ROUTE, route))
    assert isinstance(server.resolve(crossing(message)), Refused)
    assert server.sizes()["handles"] == 0

    def broken(*args):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(route_option.routes, "check_segment", broken)
    ok = b"\x00" + cbor2.dumps([5, "!evil:x"]) + b"\x00" + cbor2.dumps([0, "lbscope"])
    message.opt.delete_option(options.ROUTE)
    message.opt.add_option(OpaqueOption(options.ROUTE, ok))
    with pytest.raises(ZeroDivisionError):
        server.resolve(crossing(message))
    assert server.sizes()["handles"] == 0 and server.device("device-a").wire.scope is None


@pytest.mark.parametrize("body", [
    b'{"errcode":["M_UNKNOWN_TOKEN"],"error":"x"}',  # a list: unhashable, `in TOKEN_REFUSED` raised TypeError
    b'{"errcode":{"a":1}}',
    b"[" * 100_000 + b"]" * 100_000,  # json.loads raises RecursionError
])
def test_a_401_with_an_odd_body_is_no_crash_on_either_side(body):
    client, server = ClientBinding(LB3), ServerBinding(LB3)
    http = whoami()
    message = client.request(http)
    resolved = server.resolve(crossing(message))
    assert isinstance(resolved, Resolved)
    answer = HttpResponse(401, body, "application/json")
    assert server.after(crossing(message), resolved, answer) is False
    assert server.sizes()["tokens"] == 1  # not a token refusal: kept
    reply = response_to_coap(answer, LB3)
    assert client.response(http, message, reply).status == 401
    assert client.tokens == {"tok-alice": 0}


def test_device_table_and_tokens_are_bounded():
    server = ServerBinding(LB3, max_devices=3)
    for n in range(5):
        server.device(f"device-{n}")
    assert list(server.devices) == ["device-2", "device-3", "device-4"]
    server.device("device-2")
    server.device("device-5")
    assert list(server.devices) == ["device-4", "device-2", "device-5"]
    client = ClientBinding(LB3)
    for n in range(MAX_TOKENS_PER_DEVICE + 5):
        server.resolve(crossing(client.request(whoami(f"tok-{n}")), "device-5"))
    assert len(server.device("device-5").tokens) == MAX_TOKENS_PER_DEVICE


# ----------------------------------------------------- the property itself


@settings(max_examples=300, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), loss=st.sampled_from([0.0, 0.2, 0.5]),
       restarts=st.booleans(), evict=st.booleans(), client_restarts=st.booleans(), secure=st.booleans())
def test_no_request_ever_runs_under_another_token_or_room(seed, loss, restarts, evict, client_restarts, secure):
    """Four accounts on one device, requests interleaved at random, lost,
    reordered and duplicated; the server restarting and evicting; the client
    gateway restarting without its state while its old requests are still
    on the way: every request the server forwards runs under its own token,
    in its own room.  ``secure``: the device has a static key (new at first),
    so it defines rooms by digest and its scope by its key; each account has
    joined three of the four rooms, and sends go to the fourth too."""
    rng = random.Random(seed)
    key = bytes(rng.randrange(256) for _ in range(32)) if secure else None
    client, server = ClientBinding(LB3, key, fresh_key=True), ServerBinding(LB3)
    if key is not None:
        server.session_started("device-a", key)
    generation, closed_below = 0, 0
    tokens = ["tok-a", "tok-b", "tok-c", "tok-d"]
    rooms = [ROOM, ROOM2, "!bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb", "!c:example.org"]
    joined = {token: [room for room in rooms if room != rooms[i]] for i, token in enumerate(tokens)}
    in_flight: list[tuple[int, int, Message]] = []  # (request index, client generation, message) on the link
    pending: dict[int, tuple[ClientBinding, HttpRequest, Attempt]] = {}
    forwarded = 0
    issued: list[str] = []  # tokens the logins' answers gave (a new one each time one is forwarded)
    login_replies: dict[int, tuple[ServerBinding, Message, Message]] = {}  # a login's copy -> (server that ran it, reply, copy)
    logins_done: set[int] = set()
    for step in range(150):
        action = rng.random()
        if action < 0.35 or not in_flight:
            token = rng.choice(tokens + [t for t in issued if t in client.tokens])
            kind = rng.random()
            request = (send(token, f"t{step}", rng.choice(rooms)) if kind < 0.6 else
                       whoami(token) if kind < 0.85 else login())
            attempt = Attempt()
            pending[step] = (client, request, attempt)
            in_flight.append((step, generation, client.request(request, attempt)))
            continue
        if client_restarts and action > 0.98:
            # a new instance, every handle numbered anew; its first handshake
            # says UNBOUND, and once it is validated the server closes the
            # device's older sessions (their frames stop) and resets its binding
            client, generation = ClientBinding(LB3, key), generation + 1  # the key is not new any more
            closed_below = generation
            server.reset_device(key or "device-a")
            rng.shuffle(tokens)
            rng.shuffle(rooms)
            continue
        if restarts and action > 0.96:
            server = ServerBinding(LB3)  # every definition lost
            if key is not None:
                server.session_started("device-a", key)
            continue
        if evict and action > 0.93:
            device = server.device("device-a")
            if rng.random() < 0.5:
                device.tokens.clear()  # the server evicted the device's tokens
            else:
                device.wire = ServerWireState()  # … or its handle definitions
            continue
        i, gen, message = in_flight.pop(rng.randrange(len(in_flight)))  # any order
        if gen < closed_below or rng.random() < loss:
            continue  # its session was closed, or it (or its answer) was lost
        if rng.random() < 0.1:
            in_flight.append((i, gen, message))  # duplicated
        owner, request, attempt = pending[i]
        if request.access_token is None:
            # a login is not idempotent (each run gives a new token), and the
            # transport runs it at most once: a copy the server already ran is
            # answered from CoAP's deduplication, and none is sent once the
            # client has its answer (retransmission stops; the replay window
            # and the 64 remembered message IDs cover copies on the way, §10)
            if i in logins_done:
                continue
            cached = login_replies.get(id(message))
            if cached is not None and cached[0] is server:
                if not isinstance(owner.reply(request, message, cached[1], attempt), Resend):
                    logins_done.add(i)
                continue
        result = server.resolve(crossing(message))
        if isinstance(result, RoomsWanted):
            result = server.resolve(crossing(message), joined.get(result.token, []))
        if isinstance(result, Resolved):
            forwarded += 1
            assert result.token == request.access_token, (i, result.token, request.access_token)
            if request.method == "PUT":
                assert result.http.target.split("/")[5] == request.target.split("/")[5]
            assert not result.redefined  # a client never gives a handle another value
            if request.access_token is None:
                issued.append(f"tok-issued-{len(issued)}")
                answer = logged_in(issued[-1])
                reply = response_to_coap(answer, LB3)
                if server.after(crossing(message), result, answer):
                    reply.opt.add_option(OpaqueOption(options.TOKEN_BOUND, b""))
                reply = received(reply)
                login_replies[id(message)] = (server, reply, message)  # the message kept: its id stays its own
            else:
                reply = answered(message)
        else:
            reply = result.reply
        outcome = owner.reply(request, message, reply, attempt)
        if request.access_token is None and not isinstance(outcome, Resend):
            logins_done.add(i)
        if isinstance(outcome, Resend) and owner is client:
            in_flight.append((i, gen, owner.request(request, attempt)))
    assert forwarded > 0


# ---------------------------------------------------------------- state across restarts (issue 15, item 3)


def test_a_device_state_round_trips_through_its_stored_form() -> None:
    from coap_gateway.codec import DeviceState

    state = DeviceState()
    state.tokens[0], state.tokens[3] = "syt_alice", "syt_bob"
    state.wire.define(1, "!room:hs")
    state.wire.define(2, "@alice:hs")
    state.wire.define_scope("Xy12")
    back = DeviceState.from_json(state.to_json())
    assert list(back.tokens.items()) == [(0, "syt_alice"), (3, "syt_bob")]
    assert list(back.wire.handles.items()) == [(1, "!room:hs"), (2, "@alice:hs")]
    assert back.wire.scope == "Xy12" and back.wire.bytes == state.wire.bytes
    for bad in ("", "[]", '{"v": 2}', '{"v": 1, "tokens": [["0", "t"]], "handles": [], "scope": null}',
                '{"v": 1, "tokens": [], "handles": [[1, 2]], "scope": null}', '{"v": 1}'):
        with pytest.raises(CodecError):
            DeviceState.from_json(bad)


def test_a_server_binding_loads_a_stored_device_and_reports_changes() -> None:
    from coap_gateway.codec import DeviceState, ServerBinding

    stored = DeviceState()
    stored.tokens[0] = "syt_stored"
    changes: list[tuple[bytes, DeviceState | None]] = []
    binding = ServerBinding(LB3, loader=lambda key: stored if key == b"k" * 32 else None,
                            on_change=lambda key, state: changes.append((key, state)))
    binding.session_started("session-1", b"k" * 32)
    assert binding.device("session-1").tokens[0] == "syt_stored"  # restored, not defined again
    binding.session_started("session-2", b"n" * 32)
    assert binding.device("session-2").tokens == {}
    binding.reset_device(b"k" * 32)
    assert changes == [(b"k" * 32, None)]
    # a plaintext device (keyed by its address) is never stored
    binding.reset_device(("127.0.0.1", 5683))
    assert len(changes) == 1


def test_a_client_binding_round_trips_and_refuses_what_it_did_not_write() -> None:
    from coap_gateway.codec import ClientBinding

    binding = ClientBinding(LB3)
    binding.token_handle("syt_a")
    binding.confirmed_tokens.add(0)
    assert binding.wire is not None
    binding.wire.handle_for("room", "!r:hs")
    binding.wire.confirm({0})
    binding.wire.txn_for("m1%20x")
    text = binding.to_json()
    other = ClientBinding(LB3)
    other.load_json(text)
    assert other.to_json() == text
    assert other.wire is not None and other.wire.originals == {0: "m1 x"} and other.wire.scope == binding.wire.scope
    assert other.wire.txn_for("m2") == 1  # the next transaction ID is a new one
    before = other.to_json()
    for bad in ("nope", '{"v": 9}', '{"v": 1, "tokens": 3}'):
        with pytest.raises(CodecError):
            other.load_json(bad)
        assert other.to_json() == before  # nothing changed


# ---------------------------------------------------------------- a new device's short definitions

KEY = bytes(range(1, 33))


def test_a_new_key_names_the_scope_and_a_restored_state_keeps_it() -> None:
    from coap_gateway.codec.route_option import key_scope

    fresh = ClientBinding(LB3, KEY, fresh_key=True)
    assert fresh.wire is not None and fresh.wire.scope == key_scope(KEY) and fresh.wire.scope_from_key
    used = ClientBinding(LB3, KEY)  # a key that may have made transactions before: a random scope
    assert used.wire is not None and used.wire.scope != key_scope(KEY) and not used.wire.scope_from_key
    used.load_json(fresh.to_json())
    assert used.wire is not None and used.wire.scope_from_key and used.wire.digest_key == KEY
    moved = ClientBinding(LB3, bytes(32))  # the state file beside another key: its scope is defined in full
    moved.load_json(fresh.to_json())
    assert moved.wire is not None and moved.wire.scope == key_scope(KEY) and not moved.wire.scope_from_key


def test_a_room_digest_binds_nothing_until_the_joined_rooms_are_in() -> None:
    client, server = ClientBinding(LB3, KEY, fresh_key=True), ServerBinding(LB3)
    server.session_started("device-a", KEY)
    message = client.request(send("tok-alice"), Attempt())
    wanted = server.resolve(crossing(message))
    assert wanted == RoomsWanted("tok-alice")
    assert server.device("device-a").tokens == {} and server.device("device-a").wire.handles == {}
    resolved = server.resolve(crossing(message), [ROOM2, ROOM])
    assert isinstance(resolved, Resolved) and resolved.http.target.startswith(f"/_matrix/client/v3/rooms/{ROOM}/")
    assert resolved.token == "tok-alice" and server.device("device-a").wire.lookup(0) == ROOM
    # a request without a token has no account to ask: the digest is unknown, the room goes in full
    anonymous = client.request(send(None, "nio-2"), Attempt())
    refused = ServerBinding(LB3)
    refused.session_started("device-b", KEY)
    assert isinstance(refused.resolve(crossing(anonymous, "device-b")), Refused)

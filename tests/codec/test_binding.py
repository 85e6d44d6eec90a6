"""Token and handle binding (codec.binding), sans-I/O: both sides, no loop, no link."""

from __future__ import annotations

import pytest
from aiocoap import Message
from aiocoap.numbers.codes import Code
from aiocoap.numbers.types import CON
from aiocoap.optiontypes import OpaqueOption

from coap_gateway.codec import (
    Attempt,
    ClientBinding,
    HttpRequest,
    HttpResponse,
    Refused,
    Resend,
    Resolved,
    ServerBinding,
    is_logout,
    load_profile,
    options,
    response_to_coap,
)
from coap_gateway.codec.route_option import ServerWireState

LB3 = load_profile("lb3")
ROOM = "!Z_3p6J2e5-kYV4J1fal9-sgzkAvoytJ1NYsGTdpIa3g"
SEND = f"/_matrix/client/v3/rooms/{ROOM}/send/m.room.message/nio-1"
BODY = b'{"msgtype":"m.text","body":"Hello, see you at 5pm"}'


def send(token: str | None = "tok-alice", txn: str = "nio-1") -> HttpRequest:
    return HttpRequest("PUT", SEND.replace("nio-1", txn), BODY, "application/json", token)


def crossing(message: Message, remote: object = "device-a") -> Message:
    """The request as the server gateway reads it off the link (bytes and back)."""
    message.mtype, message.mid, message.token = CON, 1, b""
    return Message.decode(message.encode(), remote)


def token_options(message: Message) -> tuple[bytes | None, bool]:
    given = message.opt.get_option(options.ACCESS_TOKEN)
    return (given[0].value if given else None), bool(message.opt.get_option(options.NO_TOKEN))


def test_the_token_crosses_once_then_the_binding_stands_for_it():
    client = ClientBinding(LB3)
    first = client.request(send())
    assert token_options(first) == (b"tok-alice", False)
    second = client.request(send(txn="nio-2"))
    assert token_options(second) == (None, False)  # the bound token: no option at all
    assert client.counters.token_sent == 1
    # a request without a token says so: "no option" always means "the bound token"
    assert token_options(client.request(HttpRequest("GET", "/_matrix/client/versions"))) == (None, True)
    # a different token crosses again (and is bound instead)
    assert token_options(client.request(send("tok-bob", "nio-3"))) == (b"tok-bob", False)
    assert client.counters.token_sent == 2


def test_server_binds_the_token_to_the_device_across_sessions():
    client, server = ClientBinding(LB3), ServerBinding(LB3)
    server.session_started("session-1", b"device-key")
    resolved = server.resolve(crossing(client.request(send()), "session-1"))
    assert isinstance(resolved, Resolved) and resolved.token == "tok-alice"
    assert resolved.http.target == SEND.replace("nio-1", f"{client.wire.scope}.0")
    assert resolved.http.body == BODY
    server.forget_session("session-1")  # the device's state outlives the session
    server.session_started("session-2", b"device-key")
    again = server.resolve(crossing(client.request(send(txn="nio-2")), "session-2"))
    assert isinstance(again, Resolved) and again.token == "tok-alice"


WHOAMI = "/_matrix/client/v3/account/whoami"


def whoami(token: str | None = "tok-alice") -> HttpRequest:
    return HttpRequest("GET", WHOAMI, access_token=token)


def test_token_unbound_then_resent_with_the_token():
    client = ClientBinding(LB3)
    client.request(whoami())  # believed bound; the server never read it (lost, or it restarted)
    server = ServerBinding(LB3)
    attempt = Attempt()
    message = client.request(whoami(), attempt)
    refused = server.resolve(crossing(message))
    assert isinstance(refused, Refused) and refused.reason == "token_unbound"
    assert refused.reply.code == Code.UNAUTHORIZED and refused.reply.opt.get_option(options.TOKEN_UNBOUND)
    assert client.resend(refused.reply, attempt) == Resend(with_token=True)
    assert client.bound_token is None and client.counters.token_rebinds == 1
    resent = client.request(whoami(), attempt)
    assert token_options(resent) == (b"tok-alice", False)
    resolved = server.resolve(crossing(resent))
    assert isinstance(resolved, Resolved) and resolved.token == "tok-alice" and resolved.http.target == WHOAMI
    # a second Token-Unbound for the same request is an answer, not another resend
    assert client.resend(refused.reply, attempt) is None


def test_handle_unknown_then_resent_with_definitions():
    client, server = ClientBinding(LB3), ServerBinding(LB3)
    first = client.request(send())
    assert isinstance(server.resolve(crossing(first)), Resolved)
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


def test_resends_end_after_three_attempts():
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
    assert outcomes == ["Resend", "Resend", "HttpResponse"]


def test_a_successful_logout_unbinds_on_both_sides():
    client, server = ClientBinding(LB3), ServerBinding(LB3)
    server.resolve(crossing(client.request(send())))
    logout = HttpRequest("POST", "/_matrix/client/v3/logout", b"{}", "application/json", "tok-alice")
    message = client.request(logout)
    resolved = server.resolve(crossing(message))
    assert isinstance(resolved, Resolved) and resolved.token == "tok-alice"
    ok = HttpResponse(200, b"{}", "application/json")
    server.after(crossing(message), resolved, ok)
    assert server.device("device-a").token is None
    client.response(logout, message, response_to_coap(ok, LB3))
    assert client.bound_token is None
    # the next request with that token carries it again (and Synapse will refuse it)
    assert token_options(client.request(send(txn="nio-9")))[0] == b"tok-alice"


def test_a_failed_logout_keeps_the_binding():
    client, server = ClientBinding(LB3), ServerBinding(LB3)
    logout = HttpRequest("POST", "/_matrix/client/v3/logout", b"{}", "application/json", "tok-alice")
    message = client.request(logout)
    resolved = server.resolve(crossing(message))
    refused = HttpResponse(401, b'{"errcode":"M_UNKNOWN_TOKEN"}', "application/json")
    server.after(crossing(message), resolved, refused)
    assert server.device("device-a").token == "tok-alice"
    client.response(logout, message, response_to_coap(refused, LB3))
    assert client.bound_token == "tok-alice"


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
    refused = server.resolve(crossing(bad))
    assert isinstance(refused, Refused) and refused.reason == "malformed"
    assert refused.reply.code == Code.BAD_REQUEST and refused.reply.payload


def test_device_table_is_bounded_least_recent_first():
    server = ServerBinding(LB3, max_devices=3)
    for n in range(5):
        server.device(f"device-{n}")
    assert list(server.devices) == ["device-2", "device-3", "device-4"]
    server.device("device-2")
    server.device("device-5")
    assert list(server.devices) == ["device-4", "device-2", "device-5"]

"""codec.revalidation: the ETag of an answer, the server's choice of GETs, and
the client's bounded store of tagged answers."""

from __future__ import annotations

from coap_gateway.codec import HttpRequest, HttpResponse, load_profile
from coap_gateway.codec.revalidation import (
    ETAG_BYTES,
    MAX_KEYED_BODY,
    TAGGED_READS,
    TAGGED_ROUTES,
    AnswerStore,
    etag,
    tagged,
)

VERSIONS = b'{"versions":["v1.11"]}'
CONTENT, VALID = 0x45, 0x43  # 2.05, 2.03


def test_the_etag_is_eight_bytes_and_changes_with_any_part_of_what_crosses():
    tag = etag(CONTENT, b"", VERSIONS)
    assert len(tag) == ETAG_BYTES == 8 and tag == etag(CONTENT, b"", bytes(VERSIONS))
    others = [etag(CONTENT, b"", b'{"versions":["v1.12"]}'), etag(VALID, b"", VERSIONS),
              etag(CONTENT, b"\xc1\x3c", VERSIONS)]  # Content-Format 60
    assert len({tag, *others}) == 1 + len(others)
    # the options are length-prefixed: moving a byte into the payload is a change
    assert etag(CONTENT, b"\xc1\x3c", b"x") != etag(CONTENT, b"\xc1", b"\x3cx")


def test_only_successful_gets_of_the_chosen_routes_are_tagged():
    assert tagged("GET", "client.versions", 200)
    assert not tagged("PUT", "client.versions", 200)
    assert not tagged("GET", "client.sync", 200)  # sync has its push
    assert not tagged("GET", None, 200)
    assert not tagged("GET", "client.versions", 404)
    # a POST only where it only reads
    assert tagged("POST", "client.keys_query", 200) and not tagged("GET", "client.keys_query", 200)
    assert not tagged("POST", "client.create_room", 200)


def test_every_tagged_route_is_a_route_of_the_table():
    names = set(load_profile("lb4").routes.by_name)
    assert TAGGED_ROUTES | TAGGED_READS <= names, sorted((TAGGED_ROUTES | TAGGED_READS) - names)


def test_the_store_keeps_answers_per_target_and_token():
    store = AnswerStore()
    alice = HttpRequest("GET", "/_matrix/client/v3/pushrules/", access_token="tok-alice")
    bob = HttpRequest("GET", "/_matrix/client/v3/pushrules/", access_token="tok-bob")
    store.put(alice, b"A" * 8, HttpResponse(200, b"alice's", "application/json"))
    assert store.get(bob) is None  # one account never gets another's answer
    assert store.get(alice) == (b"A" * 8, HttpResponse(200, b"alice's", "application/json"))
    assert store.get(HttpRequest("PUT", alice.target, access_token="tok-alice")) is None
    # an untagged (or failed) answer to the same request drops what was held
    store.put(alice, None, HttpResponse(200, b"new", "application/json"))
    assert store.get(alice) is None and len(store) == 0 and store.bytes == 0
    store.put(alice, b"A" * 8, HttpResponse(500, b"{}", "application/json"))
    assert store.get(alice) is None


def test_the_store_is_bounded_in_entries_and_bytes_least_recently_used_first():
    store = AnswerStore(max_entries=3, max_bytes=4000)
    requests = [HttpRequest("GET", f"/r{i}") for i in range(5)]
    for request in requests[:3]:
        store.put(request, b"t" * 8, HttpResponse(200, b"x" * 500))
    store.get(requests[0])  # used: the oldest is now r1
    store.put(requests[3], b"t" * 8, HttpResponse(200, b"x" * 500))
    assert [store.get(r) is not None for r in requests[:4]] == [True, False, True, True]
    assert len(store) == 3 and store.bytes == 1500
    # an answer over a quarter of the budget is not kept (nor does it evict)
    store.put(requests[4], b"t" * 8, HttpResponse(200, b"x" * 1001))
    assert store.get(requests[4]) is None and len(store) == 3
    # bytes (body and headers): a fifth answer of 499 B would pass 2 000 B
    small = AnswerStore(max_entries=10, max_bytes=2000)
    for request in requests:
        small.put(request, b"t" * 8, HttpResponse(200, b"x" * 450, headers=[("k", "v" * 48)]))
    assert len(small) == 4 and small.bytes == 4 * 499 and small.get(requests[0]) is None


def test_a_read_by_post_is_kept_per_body():
    store = AnswerStore()
    alice = HttpRequest("POST", "/_matrix/client/v3/keys/query", b'{"device_keys":{"@a:x":[]}}', access_token="t")
    other = HttpRequest("POST", alice.target, b'{"device_keys":{"@b:x":[]}}', access_token="t")
    store.put(alice, b"K" * 8, HttpResponse(200, b"a's keys"))
    assert store.get(other) is None and store.get(alice) == (b"K" * 8, HttpResponse(200, b"a's keys"))
    assert store.bytes == len(alice.body) + len(b"a's keys")  # the body it is keyed by counts
    # a body too long to be a key is not kept
    long = HttpRequest("POST", alice.target, b"x" * (MAX_KEYED_BODY + 1), access_token="t")
    store.put(long, b"K" * 8, HttpResponse(200, b"{}"))
    assert store.get(long) is None and len(store) == 1


def test_the_store_survives_a_restart_as_cbor_without_tokens():
    store = AnswerStore()
    alice = HttpRequest("GET", "/_matrix/client/v3/pushrules/", access_token="syt_secret_alice")
    plain = HttpRequest("GET", "/_matrix/client/versions")
    store.put(alice, b"A" * 8, HttpResponse(200, b"alice's", "application/json", [("X-Kept", "1")]))
    store.put(plain, b"V" * 8, HttpResponse(200, VERSIONS, "application/json"))
    data = store.to_cbor()
    assert b"syt_secret_alice" not in data  # accounts by digest: the file holds no token
    back = AnswerStore.from_cbor(data)
    assert back.get(alice) == store.get(alice) and back.get(plain) == store.get(plain)
    assert back.bytes == store.bytes and back.to_cbor() == store.to_cbor()  # the order (LRU) kept too
    # loading keeps this store's bounds (oldest out first)
    small = AnswerStore.from_cbor(data, max_entries=1)
    assert len(small) == 1 and small.get(plain) is not None


def test_put_says_whether_what_is_held_changed():
    store = AnswerStore()
    request = HttpRequest("GET", "/_matrix/client/versions")
    assert store.put(request, b"V" * 8, HttpResponse(200, VERSIONS))
    assert not store.put(request, b"V" * 8, HttpResponse(200, VERSIONS))  # the same again: nothing to write
    assert store.put(request, b"W" * 8, HttpResponse(200, b"{}"))
    assert store.put(request, None, HttpResponse(200, b"{}"))  # dropped
    assert not store.put(request, None, HttpResponse(200, b"{}"))


def test_a_kept_store_that_is_not_one_is_refused():
    import cbor2
    import pytest

    from coap_gateway.errors import CodecError

    good = [b"GET", "/x", b"", None, b"t" * 8, 200, b"{}", None, []]
    for bad in (b"", b"\xff", cbor2.dumps([2, []]), cbor2.dumps([1, {}]), cbor2.dumps([1, [good]]),
                cbor2.dumps([1, [["GET", "/x", b"", "a token in clear", b"t" * 8, 200, b"{}", None, []]]]),
                cbor2.dumps([1, [["GET", "/x", b"", None, b"t" * 9, 200, b"{}", None, []]]]),
                cbor2.dumps([1, [["GET", "/x", b"", None, b"t" * 8, 404, b"{}", None, []]]]),
                cbor2.dumps([1, [["GET", "/x", b"", None, b"t" * 8, 200, b"{}", None, [["a"]]]]]),
                b"\x00" * (1 << 20)):
        with pytest.raises(CodecError):
            AnswerStore.from_cbor(bad)

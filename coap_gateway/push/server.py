"""Sync push, server side, sans-I/O: which homeserver answers are pushed, and how.

For each observation the server gateway runs the long-poll loop against the
homeserver itself — with the device's bound token — and pushes a
notification only when the answer says something:

* an answer with events (or an error) is pushed, as a CON notification
  answering the stream's current ``since`` (implicitly: the previous
  answer's ``next_batch``), delta-encoded (``push.format``);
* an empty answer — equal, but for its ``next_batch``, to the template the
  client already holds — is not pushed at all: the loop just continues
  from its ``next_batch``.  The first empty answer of an observation is
  pushed once, as the template, so the client can answer idle polls itself.
  One with another template (new key counts) is pushed as an answer to
  adopt; when its ``next_batch`` is the since it answers (Synapse's idle
  answer after keys were uploaded or claimed) it is no step of the chain:
  the client gets it once, and the history does not keep it.
* an answer too large for one notification goes in several (parts,
  ``format.split_parts``) to a client that registered with Push-Parts and
  reassembles them; otherwise the observation ends and the client fetches
  it plainly (``Fetch``).

Nothing is lost and nothing arrives twice: the loop polls past a
``next_batch`` only after the notification carrying it was acknowledged
(Synapse deletes to-device messages once a later ``since`` is used), and
the last answers pushed per stream are kept (``ReplayHistory``), so an
observation registered again from a ``since`` already answered gets the
very same bytes.

``PushChain`` decides, per homeserver answer, the next ``Step``;
``gateway.push_server`` is its asyncio shell.
"""

from __future__ import annotations

import hashlib
from collections import Counter, OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass

from ..codec import CborTable, HttpResponse, matrix_error
from ..errors import CodecError
from .echo import Sent, fold
from .format import (
    FIRST_OBSERVE,
    MAX_PARTED,
    OBSERVE_MODULUS,
    SYNC,
    DeltaState,
    LongPoll,
    Notification,
    PollKind,
    encode_body,
    encode_notification,
    is_empty_sync,
    moves_to_device,
    next_batch_of,
    split_next_batch,
    split_parts,
)


@dataclass
class SyncPushServerConfig:
    #: the homeserver long-poll of each loop
    poll_timeout_ms: int = 30_000
    #: observations at most, per session and in all
    max_per_session: int = 4
    max_observations: int = 1024
    #: answers kept per stream for a registration from an answered since
    history_per_stream: int = 4
    history_streams: int = 1024
    history_bytes: int = 16 << 20
    #: of those bytes, what one device's streams may hold (a device cycling
    #: filters must not push other devices' answers out: each is a to-device
    #: message that would be lost after a lost notification)
    history_bytes_per_device: int = 4 << 20
    #: bodies (encoded) the per-stream deflate dictionary holds
    delta_keep: int = 2
    #: longest wait for the ACK of a notification; None: as long as the
    #: message layer retransmits it (an ACK, an RST or its last
    #: retransmission ends the wait).  A clock of its own (600 s) came first
    #: at 100 bit/s, where 10 retransmissions run 11 minutes, and ended an
    #: observation whose notification was then acknowledged, in silence
    ack_wait: float | None = None
    #: back-off when the homeserver is down or busy (5xx, 429)
    backoff_max: float = 60.0
    #: longest a send's answer waits for its echo to fold (the homeserver
    #: wakes the loop within milliseconds; a loop waiting for an ACK misses it)
    echo_wait: float = 1.0
    #: sliding sync: after pushing to-device events, how long the loop waits
    #: for the client's next request (which names their next_batch) before
    #: polling on with the old one, which Synapse answers with the same events
    hold_wait: float = 60.0


@dataclass(frozen=True)
class Silent:
    """Nothing to push: poll again (from ``PushChain.poll_from``)."""


@dataclass(frozen=True)
class Push:
    payload: bytes
    #: the since this answers and the body, for the history (None for a
    #: template, and for an answer whose next_batch is that since: no step)
    answered: str | None = None
    body: bytes | None = None
    #: the notifications that carry ``payload``, in order: itself, or its parts
    parts: tuple[bytes, ...] = ()
    #: the client's next request differs (``format.moves_to_device``): wait
    #: for it (it replaces this observation) rather than poll with this one
    hold: bool = False


@dataclass(frozen=True)
class Folded:
    """The answer is the echo of the device's send: it rides in the send's
    answer as ``fold`` (``push.echo``) and takes ``observe`` in the chain."""

    fold: bytes
    observe: int
    answered: str
    body: bytes


@dataclass(frozen=True)
class Fetch:
    """The answer is too large for one notification (and the client takes
    no parts, or too large for parts): end the observation; the client sends
    this long-poll as a plain request (blockwise)."""


@dataclass(frozen=True)
class Finish:
    """End with this response, exactly as the homeserver gave it (an error)."""

    response: HttpResponse


@dataclass(frozen=True)
class Retry:
    """The homeserver is down or busy: poll again after ``delay`` seconds."""

    delay: float
    response: HttpResponse


Step = Silent | Push | Folded | Fetch | Finish | Retry


class PushChain:
    """One observation's place in the sync chain and what to push (sans-I/O).

    ``head`` is the since the client will ask for next: the registration's,
    then each pushed answer's ``next_batch``.  ``poll_from`` runs ahead of
    it through empty answers, which are not pushed — the answer to a later
    since with nothing in between is the answer to ``head``.
    """

    def __init__(self, since: str, table: CborTable, preset: bytes, max_payload: int, *,
                 delta_keep: int = 2, backoff_max: float = 60.0, parts: bool = False, kind: PollKind = SYNC,
                 delta: DeltaState | None = None):
        self.kind = kind
        self.head = since
        self.poll_from = since
        #: the empty-answer template the client holds (None: none yet)
        self.template: bytes | None = None
        #: a fresh state, or the one of the observation this one continues (Push-Continue)
        self.delta = delta or DeltaState(preset, delta_keep, kind)
        self.table = table
        self.max_payload = max_payload
        #: the client reassembles notifications sent in parts (Push-Parts)
        self.parts = parts
        self.backoff_max = backoff_max
        self.failures = 0
        self._observe: int | None = None
        #: an answer was encoded (its body remembered) but not pushed: the
        #: client's state no longer matches this chain's at any Observe number
        self._diverged = False

    def continued(self, observe: int) -> DeltaState | None:
        """The state a registration that replaces this chain goes on from,
        when the client took its notifications up to ``observe`` — exactly
        the ones this chain sent, so both ends hold the same state; else None."""
        if self._observe is None or self._observe != observe or self._diverged:
            return None
        return self.delta.continued(self.template, self.table)

    def next_observe(self) -> int:
        """FIRST_OBSERVE for the registration's answer, then consecutive numbers."""
        self._observe = FIRST_OBSERVE if self._observe is None else (self._observe + 1) % OBSERVE_MODULUS
        return self._observe

    def poll_timeout(self, normal_ms: int) -> int:
        # without a template the client cannot answer idle polls: learn it now
        return 0 if self.template is None else normal_ms

    def on_response(self, response: HttpResponse) -> Step:
        status = response.status
        if status == 429 or status >= 500:
            self.failures += 1
            return Retry(self._delay(response), response)
        if status != 200:
            return Finish(response)
        split = split_next_batch(response.body, self.kind)
        if split is None:
            return Finish(response)  # no position to chain on: the client gets it as it is
        self.failures = 0
        template, token = split
        empty = is_empty_sync(response.body, self.kind)
        if empty and template == self.template:
            self.poll_from = token
            return Silent()
        if empty and self.template is None:
            payload = encode_notification(Notification(template, template=True), self.head, self.delta, self.table,
                                          self.kind)
            parts = self._carriers(payload)
            if parts is None:
                self._diverged = True
                return Fetch()
            self.template = template
            self.poll_from = token
            return Push(payload, parts=parts)
        return self._answer(response.body, template, token, adopt=empty)

    def on_echo(self, response: HttpResponse, sent: Sent) -> Folded | None:
        """The answer as a fold into the answer to ``sent``, when it is
        exactly that send's echo as the client can build it; None: treat it
        as any answer (``on_response``)."""
        if response.status != 200:
            return None
        token = next_batch_of(response.body, self.kind)
        observe = FIRST_OBSERVE if self._observe is None else (self._observe + 1) % OBSERVE_MODULUS
        data = None if token is None else fold(response.body, self.head, sent, self.delta.echo, observe)
        if data is None or token is None:
            return None
        # the same state change a pushed answer makes, at both ends
        self.delta.remember(encode_body(response.body, self.table)[1])
        self.delta.echo.note(response.body)
        self.next_observe()
        answered, self.head = self.head, token
        self.poll_from = token
        self.failures = 0
        return Folded(data, observe, answered, response.body)

    def on_replay(self, body: bytes) -> Step:
        """Push an answer kept from an earlier observation (it is one)."""
        split = split_next_batch(body, self.kind)
        if split is None:
            return Fetch()
        template, token = split
        return self._answer(body, template, token, adopt=is_empty_sync(body, self.kind))

    def on_unreachable(self) -> Step:
        self.failures += 1
        return Retry(self._delay(None), matrix_error(502, "M_UNKNOWN", "the homeserver is unreachable from the gateway"))

    def _answer(self, body: bytes, template: bytes, token: str, adopt: bool) -> Step:
        payload = encode_notification(Notification(body, adopt=adopt), self.head, self.delta, self.table, self.kind)
        parts = self._carriers(payload)
        if parts is None:
            self._diverged = True
            return Fetch()
        answered = self.head
        self.head = self.poll_from = token
        if adopt:
            self.template = template
        if token == answered:
            # Synapse's idle answer with new key counts (keys uploaded or
            # claimed: no stream moves, so next_batch is the since it answers).
            # The client gets it once; it is no step of the chain: kept as the
            # answer to its own since, a registration from there would replay
            # it forever, and answer nothing new
            return Push(payload, parts=parts, hold=moves_to_device(body, self.kind))
        return Push(payload, answered, body, parts, hold=moves_to_device(body, self.kind))

    def _carriers(self, payload: bytes) -> tuple[bytes, ...] | None:
        """The notifications that carry ``payload``; None: fetch it plainly."""
        if len(payload) <= self.max_payload:
            return (payload,)
        if not self.parts or len(payload) > MAX_PARTED:
            return None
        try:
            return tuple(split_parts(payload, self.max_payload))
        except CodecError:  # no last piece can be told from a part: fetched plainly
            return None

    def _delay(self, response: HttpResponse | None) -> float:
        if response is not None:
            retry_after = next((v for n, v in response.headers if n.lower() == "retry-after"), None)
            if retry_after is not None and retry_after.strip().isdigit():
                return min(float(retry_after), self.backoff_max)
        return min(float(2 ** min(self.failures - 1, 16)), self.backoff_max)


class ReplayHistory:
    """The last answers pushed per stream, by the since they answer (sans-I/O).

    A stream is named by a digest of (token, path, parameters, and a
    sliding-sync request's body: ``stream_key``), so a device
    that registers again — after a lost notification, from a new session or
    a restarted client gateway — gets the same bytes for a since it was
    already answered, and to-device messages the loop has moved past are
    never lost.  Bounded per stream, in streams and in bytes, and in bytes
    per owner (the device whose observation pushed the answers): its own
    oldest go first when it holds more than its share.
    """

    def __init__(self, per_stream: int = 4, max_streams: int = 1024, max_bytes: int = 16 << 20,
                 max_bytes_per_owner: int | None = None):
        self.per_stream = per_stream
        self.max_streams = max_streams
        self.max_bytes = max_bytes
        self.max_bytes_per_owner = max_bytes if max_bytes_per_owner is None else max_bytes_per_owner
        self.bytes = 0
        self._streams: OrderedDict[bytes, OrderedDict[str, bytes]] = OrderedDict()
        self._owner: dict[bytes, Hashable] = {}
        self._owner_bytes: Counter[Hashable] = Counter()

    def put(self, key: bytes, since: str, body: bytes, owner: Hashable = None) -> None:
        answers = self._streams.setdefault(key, OrderedDict())
        self._streams.move_to_end(key)
        previous = self._owner.get(key, owner)
        if previous != owner:  # the same stream from the device's new process: its bytes move with it
            held = sum(len(b) for b in answers.values())
            self._owner_bytes[previous] -= held
            self._owner_bytes[owner] += held
            if self._owner_bytes[previous] <= 0:
                del self._owner_bytes[previous]
        self._owner[key] = owner
        old = answers.pop(since, None)
        if old is not None:
            self._count(key, -len(old))
        answers[since] = body
        self._count(key, len(body))
        while len(answers) > self.per_stream:
            self._drop_oldest(key)
        while self._owner_bytes[owner] > self.max_bytes_per_owner:
            self._drop_oldest(next(k for k in self._streams if self._owner[k] == owner))
        while self._streams and (len(self._streams) > self.max_streams or self.bytes > self.max_bytes):
            self._drop_oldest(next(iter(self._streams)))

    def _count(self, key: bytes, size: int) -> None:
        self.bytes += size
        owner = self._owner[key]
        self._owner_bytes[owner] += size
        if self._owner_bytes[owner] <= 0:
            del self._owner_bytes[owner]

    def _drop_oldest(self, key: bytes) -> None:
        answers = self._streams[key]
        self._count(key, -len(answers.popitem(last=False)[1]))
        if not answers:
            del self._streams[key]
            del self._owner[key]

    def get(self, key: bytes, since: str) -> bytes | None:
        answers = self._streams.get(key)
        return answers.get(since) if answers is not None else None

    def __len__(self) -> int:
        return sum(len(a) for a in self._streams.values())


def connection_key(token: str, poll: LongPoll) -> bytes:
    """What names a stream: the token and every parameter but position and
    timeout (and a sliding-sync connection's ID).  One observation per
    stream: a registration replaces the stream's observation.  A digest,
    so nothing here keeps tokens."""
    text = "\0".join((token, poll.path, *poll.params))
    return hashlib.sha256(text.encode("utf-8")).digest()


def stream_key(token: str, poll: LongPoll) -> bytes:
    """What names the answers the history keeps: the stream, and (sliding
    sync) the request body they answer — the same position answered for
    another request is another answer."""
    if not poll.body:
        return connection_key(token, poll)
    return hashlib.sha256(connection_key(token, poll) + poll.body).digest()


__all__ = [
    "Fetch",
    "Finish",
    "Folded",
    "Push",
    "PushChain",
    "ReplayHistory",
    "Retry",
    "Silent",
    "Step",
    "SyncPushServerConfig",
    "connection_key",
    "stream_key",
]

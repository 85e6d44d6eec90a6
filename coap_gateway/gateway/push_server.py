"""Sync push, server side: hold the device's sync loop, push what changed.

A client gateway registers a CoAP observation on a ``/sync`` long-poll
(GET with Observe 0, ``since`` and the client's parameters).  For each one
the server gateway runs the long-poll loop against the homeserver itself —
with the device's bound token — and pushes a notification only when the
answer says something:

* an answer with events (or an error) is pushed, as a CON notification
  answering the stream's current ``since`` (implicitly: the previous
  answer's ``next_batch``), delta-encoded (``sync_push``);
* an empty answer — equal, but for its ``next_batch``, to the template the
  client already holds — is not pushed at all: the loop just continues
  from its ``next_batch``.  The first empty answer of an observation is
  pushed once, as the template, so the client can answer idle polls itself.

Nothing is lost and nothing arrives twice: the loop polls past a
``next_batch`` only after the notification carrying it was acknowledged
(Synapse deletes to-device messages once a later ``since`` is used), and
the last answers pushed per stream are kept, so an observation registered
again from a ``since`` already answered gets the very same bytes.

``PushChain`` and ``ReplayHistory`` are sans-I/O; ``SyncPushServer`` is the
asyncio shell the ``ServerGateway`` hands observations and control requests
to.  Every observation is one task on its own aiohttp request: a slow
homeserver answer or a slow link holds up nobody else.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp
from aiocoap import Message
from aiocoap.numbers.codes import Code
from aiocoap.numbers.types import CON
from aiocoap.optiontypes import OpaqueOption
from yarl import URL

from ..codec import options
from ..codec.tables import CborTable
from ..errors import GatewayError
from ..codec.mapping import HttpRequest, HttpResponse, matrix_error, response_to_coap
from ..codec.profile import Profile
from ..push.format import (
    push_preset,
    END_FETCH,
    MAX_PUSH_BODY,
    OP_CANCEL,
    OP_CHECK,
    DeltaState,
    LongPoll,
    Notification,
    encode_notification,
    is_empty_sync,
    parse_long_poll,
    split_next_batch,
)

log = logging.getLogger(__name__)

#: Observe numbers are 24 bits (RFC 7641 §3.4)
OBSERVE_MODULUS = 1 << 24


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
    #: bodies (encoded) the per-stream deflate dictionary holds
    delta_keep: int = 2
    #: longest wait for the ACK of a notification (the CON's own
    #: retransmissions end the observation well before, on any real link)
    ack_wait: float = 600.0
    #: back-off when the homeserver is down or busy (5xx, 429)
    backoff_max: float = 60.0


@dataclass
class SyncPushServerCounters:
    registrations: int = 0
    #: registrations answered as a plain long-poll (not pushable, over limits)
    declined: int = 0
    notifications: int = 0
    notification_bytes: int = 0
    #: homeserver polls, and the empty answers among them that were not pushed
    polls: int = 0
    silent: int = 0
    replayed: int = 0
    fetches: int = 0
    finals: int = 0
    upstream_errors: int = 0
    checks: int = 0
    cancels: int = 0


# ------------------------------------------------------------- sans-I/O


@dataclass(frozen=True)
class Silent:
    """Nothing to push: poll again (from ``PushChain.poll_from``)."""


@dataclass(frozen=True)
class Push:
    payload: bytes
    #: the since this answers (None for a template) and the body, for the history
    answered: str | None = None
    body: bytes | None = None


@dataclass(frozen=True)
class Fetch:
    """The answer is too large for one notification: end the observation;
    the client sends this long-poll as a plain request (blockwise)."""


@dataclass(frozen=True)
class Finish:
    """End with this response, exactly as the homeserver gave it (an error)."""

    response: HttpResponse


@dataclass(frozen=True)
class Retry:
    """The homeserver is down or busy: poll again after ``delay`` seconds."""

    delay: float
    response: HttpResponse


Step = Silent | Push | Fetch | Finish | Retry


class PushChain:
    """One observation's place in the sync chain and what to push (sans-I/O).

    ``head`` is the since the client will ask for next: the registration's,
    then each pushed answer's ``next_batch``.  ``poll_from`` runs ahead of
    it through empty answers, which are not pushed — the answer to a later
    since with nothing in between is the answer to ``head``.
    """

    def __init__(self, since: str, table: CborTable, preset: bytes, max_payload: int, *,
                 delta_keep: int = 2, backoff_max: float = 60.0):
        self.head = since
        self.poll_from = since
        #: the empty-answer template the client holds (None: none yet)
        self.template: bytes | None = None
        self.delta = DeltaState(preset, delta_keep)
        self.table = table
        self.max_payload = max_payload
        self.backoff_max = backoff_max
        self.failures = 0
        self._observe = -1

    def next_observe(self) -> int:
        self._observe = (self._observe + 1) % OBSERVE_MODULUS
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
        split = split_next_batch(response.body)
        if split is None:
            return Finish(response)  # no next_batch to chain on: the client gets it as it is
        self.failures = 0
        template, token = split
        empty = is_empty_sync(response.body)
        if empty and template == self.template:
            self.poll_from = token
            return Silent()
        if empty and self.template is None:
            payload = encode_notification(Notification(template, template=True), self.head, self.delta, self.table)
            if len(payload) > self.max_payload:
                return Fetch()
            self.template = template
            self.poll_from = token
            return Push(payload)
        return self._answer(response.body, template, token, adopt=empty)

    def on_replay(self, body: bytes) -> Step:
        """Push an answer kept from an earlier observation (it is one)."""
        split = split_next_batch(body)
        if split is None:
            return Fetch()
        template, token = split
        return self._answer(body, template, token, adopt=is_empty_sync(body))

    def on_unreachable(self) -> Step:
        self.failures += 1
        return Retry(self._delay(None), matrix_error(502, "M_UNKNOWN", "the homeserver is unreachable from the gateway"))

    def _answer(self, body: bytes, template: bytes, token: str, adopt: bool) -> Step:
        payload = encode_notification(Notification(body, adopt=adopt), self.head, self.delta, self.table)
        if len(payload) > self.max_payload:
            return Fetch()
        answered = self.head
        self.head = self.poll_from = token
        if adopt:
            self.template = template
        return Push(payload, answered, body)

    def _delay(self, response: HttpResponse | None) -> float:
        if response is not None:
            retry_after = next((v for n, v in response.headers if n.lower() == "retry-after"), None)
            if retry_after is not None and retry_after.strip().isdigit():
                return min(float(retry_after), self.backoff_max)
        return min(float(2 ** min(self.failures - 1, 16)), self.backoff_max)


class ReplayHistory:
    """The last answers pushed per stream, by the since they answer (sans-I/O).

    A stream is named by a digest of (token, path, parameters), so a device
    that registers again — after a lost notification, from a new session or
    a restarted client gateway — gets the same bytes for a since it was
    already answered, and to-device messages the loop has moved past are
    never lost.  Bounded per stream, in streams and in bytes.
    """

    def __init__(self, per_stream: int = 4, max_streams: int = 1024, max_bytes: int = 16 << 20):
        self.per_stream = per_stream
        self.max_streams = max_streams
        self.max_bytes = max_bytes
        self.bytes = 0
        self._streams: OrderedDict[bytes, OrderedDict[str, bytes]] = OrderedDict()

    def put(self, key: bytes, since: str, body: bytes) -> None:
        answers = self._streams.setdefault(key, OrderedDict())
        self._streams.move_to_end(key)
        old = answers.pop(since, None)
        if old is not None:
            self.bytes -= len(old)
        answers[since] = body
        self.bytes += len(body)
        while len(answers) > self.per_stream:
            self.bytes -= len(answers.popitem(last=False)[1])
        while self._streams and (len(self._streams) > self.max_streams or self.bytes > self.max_bytes):
            oldest = next(iter(self._streams))
            answers = self._streams[oldest]
            self.bytes -= len(answers.popitem(last=False)[1])
            if not answers:
                del self._streams[oldest]

    def get(self, key: bytes, since: str) -> bytes | None:
        answers = self._streams.get(key)
        return answers.get(since) if answers is not None else None

    def __len__(self) -> int:
        return sum(len(a) for a in self._streams.values())


def stream_key(token: str, poll: LongPoll) -> bytes:
    """What names a stream: the token and every parameter but since and
    timeout.  A digest, so the history keeps no tokens."""
    text = "\0".join((token, poll.path, *poll.params))
    return hashlib.sha256(text.encode("utf-8")).digest()


class AckTracker:
    """Futures for "this CON we sent was acknowledged", fed by the message
    layer (``LinkAwareMessageManager.on_acknowledged``)."""

    def __init__(self) -> None:
        self._waiting: dict[tuple[Hashable, int], asyncio.Future[None]] = {}

    def expect(self, remote: Hashable, mid: int) -> asyncio.Future[None]:
        future = self._waiting[(remote, mid)] = asyncio.get_running_loop().create_future()
        return future

    def forget(self, remote: Hashable, mid: int) -> None:
        self._waiting.pop((remote, mid), None)

    def acknowledged(self, remote: Hashable, mid: int) -> None:
        future = self._waiting.pop((remote, mid), None)
        if future is not None and not future.done():
            future.set_result(None)


# ------------------------------------------------------------ the shell


class PushGateway(Protocol):
    """What sync push needs from the ServerGateway."""

    base: str
    config: Any  # .profile
    counters: Any  # .requests

    @property
    def http(self) -> aiohttp.ClientSession: ...

    def request_for(self, request: Message) -> HttpRequest: ...

    def token_for(self, request: Message) -> str | None | object: ...


@dataclass(eq=False)
class _Observation:
    remote: Hashable
    token: bytes  # CoAP token of the registration: names it in control requests
    key: bytes
    poll: LongPoll
    access_token: str
    chain: PushChain
    task: asyncio.Task | None = None
    #: why we ended it ourselves (None: the peer did, or it runs)
    ended: str | None = None


class _Ended(Exception):
    pass


#: an answer longer than any notification could carry (not read to the end)
_TOO_BIG = HttpResponse(0)


def _close_quietly(pipe: Any) -> None:
    """End an observation we ended ourselves without sending anything:
    no_response suppresses a 2.xx answer, and aiocoap forgets the token."""
    pipe.add_response(Message(code=Code.CONTENT, no_response=2), is_last=True)


class SyncPushServer:
    def __init__(self, gateway: PushGateway, config: SyncPushServerConfig | None = None):
        self.gateway = gateway
        self.config = config or SyncPushServerConfig()
        self.history = ReplayHistory(self.config.history_per_stream, self.config.history_streams,
                                     self.config.history_bytes)
        self.acks = AckTracker()
        #: without ACKs from the message layer the loop cannot wait for
        #: delivery; runner.start_server always attaches them
        self.ack_tracking = False
        self.observations: dict[tuple[Hashable, bytes], _Observation] = {}
        self._by_stream: dict[bytes, _Observation] = {}
        self.counters = SyncPushServerCounters()
        #: test and debug observers: (polled since, homeserver response)
        self.upstream_observers: list[Callable[[str, HttpResponse], None]] = []
        self._closing = False

    def attach(self, message_manager: Any) -> None:
        """Learn of acknowledged CONs from ``LinkAwareMessageManager``."""
        message_manager.on_acknowledged.append(self.acks.acknowledged)
        self.ack_tracking = True

    @property
    def profile(self) -> Profile:
        return self.gateway.config.profile

    # -- entry points from the ServerGateway

    @staticmethod
    def claims(request: Message) -> bool:
        return bool(request.opt.get_option(options.SYNC_PUSH)) or (
            request.opt.observe == 0 and request.code == Code.GET)

    async def render_to_pipe(self, pipe: Any) -> bool:
        """Serve an observation or control request; False: not ours after
        all (the gateway answers it as a plain request)."""
        request = pipe.request
        control = request.opt.get_option(options.SYNC_PUSH)
        if control:
            self.gateway.counters.requests += 1
            pipe.add_response(self._control(request, control[0].value), is_last=True)
            return True
        try:
            http_request = self.gateway.request_for(request)
        except GatewayError:
            return False  # the plain path answers with the right error
        poll = parse_long_poll(http_request.method, http_request.target, self.profile.routes)
        if poll is None:
            return False
        access_token = self.gateway.token_for(request)
        if not isinstance(access_token, str):
            return False  # Token-Unbound or no token: the plain path says so
        key = stream_key(access_token, poll)
        previous = self._by_stream.get(key)
        if not self._room_for(request.remote, previous):
            self.counters.declined += 1
            return False  # over limits: answered as the plain long-poll it also is
        self.counters.registrations += 1
        self.gateway.counters.requests += 1
        if previous is not None:
            self._end(previous, "replaced")
        max_payload = max(16, request.remote.maximum_payload_size)
        chain = PushChain(poll.since, self.profile.cbor_table, push_preset(self.profile),
                          max_payload, delta_keep=self.config.delta_keep, backoff_max=self.config.backoff_max)
        obs = _Observation(request.remote, request.token, key, poll, access_token, chain, asyncio.current_task())
        self.observations[(obs.remote, obs.token)] = obs
        self._by_stream[key] = obs
        try:
            await self._run(pipe, obs)
        except _Ended:
            _close_quietly(pipe)
        except asyncio.CancelledError:
            if obs.ended is None:
                raise  # the peer lost interest (RST, CON timed out) or aiocoap shut down
            asyncio.current_task().uncancel()  # type: ignore[union-attr]
            _close_quietly(pipe)
        finally:
            if self.observations.get((obs.remote, obs.token)) is obs:
                del self.observations[(obs.remote, obs.token)]
            if self._by_stream.get(key) is obs:
                del self._by_stream[key]
        return True

    def forget_session(self, remote: Hashable) -> None:
        """The secure session is gone, and its observations with it."""
        for obs in [o for o in self.observations.values() if o.remote == remote]:
            self._end(obs, "session closed")

    async def close(self) -> None:
        self._closing = True
        tasks = [o.task for o in self.observations.values() if o.task is not None]
        for obs in list(self.observations.values()):
            self._end(obs, "closing")
        if tasks:
            await asyncio.wait(tasks, timeout=5)

    # -- internals

    def _room_for(self, remote: Hashable, replacing: _Observation | None) -> bool:
        """Whether one more observation fits (``replacing`` one goes away)."""
        if self._closing:
            return False
        others = [o for o in self.observations.values() if o is not replacing]
        return (len(others) < self.config.max_observations
                and sum(1 for o in others if o.remote == remote) < self.config.max_per_session)

    def _end(self, obs: _Observation, reason: str) -> None:
        if obs.ended is None and obs.task is not None and not obs.task.done():
            obs.ended = reason
            obs.task.cancel()
        self.observations.pop((obs.remote, obs.token), None)
        if self._by_stream.get(obs.key) is obs:
            del self._by_stream[obs.key]

    def _control(self, request: Message, value: bytes) -> Message:
        op, token = (value[0], bytes(value[1:])) if value else (0, b"")
        obs = self.observations.get((request.remote, token))
        if op == OP_CHECK:
            self.counters.checks += 1
            return Message(code=Code.VALID if obs is not None else Code.NOT_FOUND)
        if op == OP_CANCEL:
            self.counters.cancels += 1
            if obs is not None:
                self._end(obs, "cancelled")
            return Message(code=Code.DELETED)
        return Message(code=Code.BAD_OPTION)

    async def _run(self, pipe: Any, obs: _Observation) -> None:
        chain = obs.chain
        first = True
        # answers kept from earlier observations go first, then the homeserver
        replaying = True
        while True:
            replay = self.history.get(obs.key, chain.head) if replaying else None
            if replay is not None:
                self.counters.replayed += 1
                step = chain.on_replay(replay)
            else:
                replaying = False
                timeout = 0 if first else chain.poll_timeout(self.config.poll_timeout_ms)
                response = await self._poll(obs, chain.poll_from, timeout)
                if response is _TOO_BIG:
                    step = Fetch()
                else:
                    step = chain.on_unreachable() if response is None else chain.on_response(response)
            if isinstance(step, Retry):
                if first:  # the registration gets the homeserver's error, as a plain poll would
                    step = Finish(step.response)
                else:
                    await asyncio.sleep(step.delay)
                    continue
            if isinstance(step, Silent):
                self.counters.silent += 1
                continue
            if isinstance(step, Push):
                message = Message(code=Code.CONTENT, payload=step.payload, observe=chain.next_observe())
                if step.answered is not None and step.body is not None:
                    self.history.put(obs.key, step.answered, step.body)
                self.counters.notifications += 1
                self.counters.notification_bytes += len(step.payload)
                pipe.add_response(message, is_last=False)
                first = False
                await self._delivered(message)
                continue
            if isinstance(step, Fetch):
                self.counters.fetches += 1
                message = Message(code=Code.CONTENT)
                message.opt.add_option(OpaqueOption(options.SYNC_PUSH, bytes([END_FETCH])))
            else:
                assert isinstance(step, Finish)
                self.counters.finals += 1
                message = response_to_coap(step.response, self.profile)
            pipe.add_response(message, is_last=True)
            return

    async def _delivered(self, message: Message) -> None:
        """Wait until the client acknowledged a CON notification (a piggybacked
        answer needs nothing: a lost one is asked for again)."""
        if not self.ack_tracking or message.mtype is not CON or message.mid is None:
            return
        remote, mid = message.remote, message.mid
        future = self.acks.expect(remote, mid)
        try:
            await asyncio.wait_for(future, self.config.ack_wait)
        except TimeoutError:
            raise _Ended("notification never acknowledged") from None
        finally:
            self.acks.forget(remote, mid)

    async def _poll(self, obs: _Observation, since: str, timeout_ms: int) -> HttpResponse | None:
        """One long-poll to the homeserver; None when it is unreachable,
        ``_TOO_BIG`` when its answer could never be pushed."""
        self.counters.polls += 1
        target = obs.poll.target(since=since, timeout_ms=timeout_ms)
        url = URL(self.gateway.base + target, encoded=True)
        headers = {"Authorization": f"Bearer {obs.access_token}"}
        timeout = aiohttp.ClientTimeout(total=timeout_ms / 1000 + 60)
        try:
            async with self.gateway.http.get(url, headers=headers, allow_redirects=False, timeout=timeout) as upstream:
                data = bytearray()
                async for chunk in upstream.content.iter_chunked(1 << 16):
                    data += chunk
                    if len(data) > MAX_PUSH_BODY:
                        return _TOO_BIG
                response = HttpResponse(upstream.status, bytes(data), upstream.headers.get("Content-Type"),
                                        [(k, v) for k, v in upstream.headers.items()])
        except (aiohttp.ClientError, TimeoutError) as exc:
            self.counters.upstream_errors += 1
            log.warning("sync push: homeserver unreachable: %s", type(exc).__name__)
            return None
        for observer in self.upstream_observers:
            observer(since, response)
        return response


__all__ = [
    "AckTracker",
    "Fetch",
    "Finish",
    "Push",
    "PushChain",
    "ReplayHistory",
    "Retry",
    "Silent",
    "SyncPushServer",
    "SyncPushServerConfig",
    "SyncPushServerCounters",
    "stream_key",
]

"""Sync push, client side: answer the client's long-polls from pushed answers.

A Matrix client long-polls ``GET …/sync?since=S&timeout=T…`` over and over.
Instead of carrying each poll across the link, the client gateway keeps one
*stream* per (access token, path, parameters other than since and timeout)
and registers one CoAP observation for it; the server gateway then pushes
each answer that says something (``sync_server``).  A poll for ``since=S``:

* is answered at once from the pushed answers when one answers S;
* else, when S is the stream's head (the since the next push answers),
  waits for that push up to the client's own timeout, and then answers with
  the empty-response template the server pushed, ``next_batch`` = S —
  exactly what Synapse says to an idle poll, and nothing crossed the link;
* else (a new stream, a since from elsewhere) registers the observation
  from S, replacing any other for the stream.

Initial syncs, ``timeout=0``, ``full_state`` and anything unusual go the
plain way.  An observation that is lost — the server restarted, a
notification never arrived, a new secure session, a check that finds it
gone — is registered again from the stream's head at the next poll, and the
server replays what it had already answered, so nothing is lost or doubled.
When the client stops polling (3× its timeout) the observation is cancelled
and the server stops its loop.

``SyncPushState`` is the sans-I/O core (all decisions, no sockets or
clocks); ``SyncPushClient`` is the asyncio shell the ``ClientGateway``
hands sync requests to.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiocoap import Message, error
from aiocoap.numbers.codes import Code
from aiocoap.numbers.constants import Reliable
from aiocoap.optiontypes import OpaqueOption
from aiocoap.pipe import Pipe

from ..codec import options
from ..errors import GatewayError
from ..codec.mapping import HttpRequest, HttpResponse, coap_to_response, matrix_error
from ..codec.profile import Profile
from ..push.format import (
    push_preset,
    END_FETCH,
    OP_CANCEL,
    OP_CHECK,
    DeltaState,
    LongPoll,
    decode_notification,
    expand_template,
    next_batch_of,
    parse_long_poll,
    split_next_batch,
)

log = logging.getLogger(__name__)

JSON = "application/json"
OBSERVE_MODULUS = 1 << 24


@dataclass
class SyncPushClientConfig:
    #: answer long-polls from pushes (False: only the keepalive runs)
    enabled: bool = True
    #: check an observation silent this long (seconds; 0: never) — the one
    #: way to notice, without other traffic, that the server lost it
    check_interval: float = 3600.0
    #: NAT keepalive: a CoAP ping after this long without a frame sent (None: off)
    keepalive: float | None = None
    #: cancel an observation when its client has not polled for this many
    #: times its timeout (and at least min_idle seconds)
    idle_factor: float = 3.0
    min_idle: float = 30.0
    max_streams: int = 8
    #: pushed answers held per stream for a client that is not polling
    max_answers: int = 16
    delta_keep: int = 2
    #: after the server answered a registration as a plain poll, poll plainly this long
    decline_for: float = 600.0
    #: how often the maintenance loop looks (seconds; costs nothing on the link)
    tick: float = 1.0
    #: longest local wait, whatever timeout the client asks for
    max_wait: float = 3600.0
    #: longest wait for the answer to a registration or control request
    #: (its homeserver poll has timeout 0: it is quick unless the link is not)
    answer_timeout: float = 300.0


@dataclass
class SyncPushClientCounters:
    registrations: int = 0
    notifications: int = 0
    #: polls answered from a pushed answer, and idle polls answered from the template
    answered_pushed: int = 0
    answered_idle: int = 0
    #: polls sent the plain way although a stream exists (timeout=0, too large, no template)
    plain: int = 0
    lost: int = 0
    checks: int = 0
    cancels: int = 0
    pings: int = 0


# ------------------------------------------------------------- sans-I/O


class Status(enum.Enum):
    IDLE = "idle"  # no observation (never registered, lost, cancelled)
    REGISTERING = "registering"
    ACTIVE = "active"
    DECLINED = "declined"  # the server answered plainly: poll plainly for a while


@dataclass(eq=False)
class Stream:
    key: tuple[str, str, tuple[str, ...]]
    poll: LongPoll  # the last request's, for registering again
    access_token: str
    status: Status = Status.IDLE
    #: the since the next push answers
    head: str | None = None
    #: pushed answers by the since they answer, in chain order
    answers: OrderedDict[str, HttpResponse] = field(default_factory=OrderedDict)
    template: bytes | None = None
    delta: DeltaState | None = None
    observe: int | None = None
    #: bumped by every registration: events of an older observation are ignored
    generation: int = 0
    #: a since whose answer was too large to push: poll it plainly once
    fetch: str | None = None
    last_request: float = 0.0
    last_heard: float = 0.0
    timeout_ms: int = 30_000
    declined_until: float = 0.0
    waiting: int = 0


@dataclass(frozen=True)
class Answer:
    response: HttpResponse


@dataclass(frozen=True)
class Wait:
    pass


@dataclass(frozen=True)
class Register:
    since: str


@dataclass(frozen=True)
class Plain:
    pass


Action = Answer | Wait | Register | Plain


class Outcome(enum.Enum):
    OK = "ok"
    LOST = "lost"  # the observation cannot go on: register again
    PAUSE = "pause"  # the client is not taking answers: cancel until it does


class SyncPushState:
    """Streams, their pushed answers and templates (sans-I/O): requests and
    CoAP payloads in, decisions out."""

    def __init__(self, profile: Profile, config: SyncPushClientConfig | None = None):
        self.profile = profile
        self.config = config or SyncPushClientConfig()
        self.streams: OrderedDict[tuple[str, str, tuple[str, ...]], Stream] = OrderedDict()

    @property
    def preset(self) -> bytes:
        return push_preset(self.profile)

    def classify(self, method: str, target: str, access_token: str | None) -> LongPoll | None:
        if access_token is None:
            return None
        return parse_long_poll(method, target, self.profile.routes)

    def stream(self, poll: LongPoll, access_token: str) -> tuple[Stream, list[Stream]]:
        """The stream a poll belongs to, and streams evicted to make room."""
        key = (access_token, poll.path, poll.params)
        stream = self.streams.get(key)
        evicted: list[Stream] = []
        if stream is None:
            stream = self.streams[key] = Stream(key, poll, access_token)
            while len(self.streams) > self.config.max_streams:
                evicted.append(self.streams.popitem(last=False)[1])
        else:
            self.streams.move_to_end(key)
            stream.poll = poll
        return stream, evicted

    def on_request(self, stream: Stream, poll: LongPoll, now: float) -> Action:
        stream.last_request = now
        stream.timeout_ms = poll.timeout_ms
        since = poll.since
        answers = stream.answers
        if since in answers:
            while next(iter(answers)) != since:  # what comes before was taken
                answers.popitem(last=False)
            response = answers[since]
            if response.status != 200:
                del answers[since]  # an error is said once; asking again asks the homeserver
            return Answer(response)
        if stream.fetch == since:
            stream.fetch = None
            return Plain()
        if poll.timeout_ms == 0:
            return Plain()
        if stream.status is Status.DECLINED:
            if now < stream.declined_until:
                return Plain()
            stream.status = Status.IDLE
        if stream.status in (Status.ACTIVE, Status.REGISTERING) and since == stream.head:
            answers.clear()  # the client is at the head: it took every answer
            return Wait()
        return Register(since)

    def begin(self, stream: Stream, since: str, now: float) -> int:
        """A registration from ``since`` starts; returns its generation."""
        stream.generation += 1
        stream.status = Status.REGISTERING
        stream.head = since
        stream.delta = DeltaState(self.preset, self.config.delta_keep)
        stream.observe = None
        stream.last_heard = now
        # the client asks for a since we hold no answer to: what we hold was
        # taken, or belongs to a chain it left (the server replays its last
        # answers to a registration from a since it already answered)
        stream.answers.clear()
        return stream.generation

    def on_registered(self, stream: Stream, generation: int, observe: int, payload: bytes, now: float) -> Outcome:
        if generation != stream.generation:
            return Outcome.LOST
        stream.status = Status.ACTIVE
        stream.observe = observe
        return self._apply(stream, payload, now)

    def on_notification(self, stream: Stream, generation: int, observe: int, payload: bytes, now: float) -> Outcome:
        if generation != stream.generation or stream.status is not Status.ACTIVE:
            return Outcome.OK  # a late event of an observation we left
        if stream.observe is not None:
            step = (observe - stream.observe) % OBSERVE_MODULUS
            if step == 0 or step > OBSERVE_MODULUS // 2:
                return Outcome.OK  # a duplicate or an older one: already applied
            if step != 1:
                return self.on_lost(stream, generation)  # one went missing: the chain broke
        stream.observe = observe
        return self._apply(stream, payload, now)

    def _apply(self, stream: Stream, payload: bytes, now: float) -> Outcome:
        assert stream.delta is not None and stream.head is not None
        stream.last_heard = now
        try:
            n = decode_notification(payload, stream.head, stream.delta, self.profile.cbor_table)
        except GatewayError as exc:
            log.warning("sync push: undecodable notification: %s", exc)
            return self.on_lost(stream, stream.generation)
        if n is None:
            return Outcome.OK
        if n.template:
            stream.template = n.body
            return Outcome.OK
        token = next_batch_of(n.body)
        if token is None:
            return self.on_lost(stream, stream.generation)
        stream.answers[stream.head] = HttpResponse(200, n.body, JSON)
        stream.head = token
        if n.adopt:
            split = split_next_batch(n.body)
            if split is not None:
                stream.template = split[0]
        if len(stream.answers) > self.config.max_answers:
            return Outcome.PAUSE
        return Outcome.OK

    def on_final(self, stream: Stream, generation: int, response: HttpResponse | None) -> None:
        """The observation ended with ``response`` (the homeserver's error, the
        answer to the head) or, for None, with "too large: poll it plainly"."""
        if generation != stream.generation or stream.head is None:
            return
        if response is None:
            stream.fetch = stream.head
        else:
            stream.answers[stream.head] = response
        stream.status = Status.IDLE

    def on_declined(self, stream: Stream, generation: int, now: float) -> None:
        if generation == stream.generation:
            stream.status = Status.DECLINED
            stream.declined_until = now + self.config.decline_for

    def on_lost(self, stream: Stream, generation: int) -> Outcome:
        if generation == stream.generation and stream.status in (Status.ACTIVE, Status.REGISTERING):
            stream.status = Status.IDLE
        return Outcome.LOST

    def on_cancelled(self, stream: Stream) -> None:
        stream.generation += 1
        if stream.status in (Status.ACTIVE, Status.REGISTERING):
            stream.status = Status.IDLE

    def on_timeout(self, stream: Stream, since: str) -> HttpResponse | None:
        """The client's timeout passed with no push: the idle answer, if we can."""
        if stream.status is Status.ACTIVE and stream.head == since and stream.template is not None:
            return HttpResponse(200, expand_template(stream.template, since), JSON)
        return None

    def idle_window(self, stream: Stream) -> float:
        return max(self.config.min_idle, self.config.idle_factor * stream.timeout_ms / 1000)

    def idle(self, now: float) -> list[Stream]:
        """Observations whose client stopped polling."""
        return [s for s in self.streams.values()
                if s.status is Status.ACTIVE and not s.waiting and now - s.last_request > self.idle_window(s)]

    def due_checks(self, now: float) -> list[Stream]:
        """Observations silent for a check interval while their client polls."""
        interval = self.config.check_interval
        if not interval:
            return []
        due = [s for s in self.streams.values() if s.status is Status.ACTIVE and now - s.last_heard >= interval
               and now - s.last_request <= self.idle_window(s)]
        for s in due:
            s.last_heard = now
        return due

    def active(self) -> list[Stream]:
        return [s for s in self.streams.values() if s.status in (Status.ACTIVE, Status.REGISTERING)]


# ------------------------------------------------------------ the shell


@dataclass(eq=False)
class _Observation:
    """One registration's aiocoap pipe (we drive it directly: aiocoap's
    observation iterator may drop a final notification)."""

    message: Message
    pipe: Pipe
    unregister: Callable[[], None] | None = None

    @property
    def token(self) -> bytes:
        return self.message.token or b""

    def close(self) -> None:
        if self.unregister is not None:
            self.unregister()
            self.unregister = None


class SyncPushClient:
    def __init__(self, gateway: Any, config: SyncPushClientConfig | None = None):
        self.gateway = gateway
        self.config = config or SyncPushClientConfig()
        self.state = SyncPushState(gateway.profile, self.config)
        self.counters = SyncPushClientCounters()
        #: test and debug observers: (the client's request, the answer it got from a push or template)
        self.answer_observers: list[Callable[[HttpRequest, HttpResponse], None]] = []
        self._observations: dict[Stream, _Observation] = {}
        self._changed: dict[Stream, asyncio.Event] = {}
        self._registering: dict[Stream, asyncio.Task] = {}
        self._background: set[asyncio.Task] = set()
        self._maintenance: asyncio.Task | None = None
        self._session: bytes | None = None
        self._frames_out = -1
        self._quiet_since = 0.0
        self._closing = False

    @property
    def _answer_timeout(self) -> float:
        timeout = self.gateway.request_timeout
        return self.config.answer_timeout if timeout is None else min(timeout, self.config.answer_timeout)

    @property
    def loop_time(self) -> float:
        return asyncio.get_running_loop().time()

    async def start(self) -> None:
        self._maintenance = asyncio.create_task(self._maintain(), name="sync push maintenance")

    async def close(self) -> None:
        self._closing = True
        for stream in list(self.state.streams.values()):
            self._wake(stream)  # waiting polls end now
        if self._maintenance is not None:
            self._maintenance.cancel()
        for stream in list(self._observations):
            await self._cancel(stream, timeout=1.0)
        for task in [*self._registering.values(), *self._background]:
            task.cancel()

    # -- the client gateway hands every request here first

    async def handle(self, http_request: HttpRequest) -> HttpResponse | None:
        """The answer to a push-eligible long-poll; None: not one (the plain path)."""
        if not self.config.enabled or self._closing:
            return None
        poll = self.state.classify(http_request.method, http_request.target, http_request.access_token)
        if poll is None:
            return None
        assert http_request.access_token is not None
        stream, evicted = self.state.stream(poll, http_request.access_token)
        for old in evicted:
            self._spawn(self._cancel(old))
        deadline = self.loop_time + min(poll.timeout_ms / 1000, self.config.max_wait)
        stream.waiting += 1
        try:
            while True:
                changed = self._event(stream)
                action = self.state.on_request(stream, poll, self.loop_time)
                if isinstance(action, Answer):
                    self.counters.answered_pushed += 1
                    return self._deliver(http_request, action.response)
                if isinstance(action, Plain):
                    self.counters.plain += 1
                    return None
                if isinstance(action, Register):
                    response = await self._register(stream, action.since)
                    if response is not None:
                        return response
                    continue
                remaining = deadline - self.loop_time
                if self._closing:
                    return self.state.on_timeout(stream, poll.since) or matrix_error(
                        503, "M_UNKNOWN", "the gateway is shutting down")
                if remaining <= 0:
                    idle = self.state.on_timeout(stream, poll.since)
                    if idle is not None:
                        self.counters.answered_idle += 1
                        return self._deliver(http_request, idle)
                    # no template yet: ask the homeserver now, the plain way
                    self.counters.plain += 1
                    return await self.gateway.exchange(
                        HttpRequest("GET", poll.target(timeout_ms=0), access_token=http_request.access_token))
                try:
                    await asyncio.wait_for(changed.wait(), remaining)
                except TimeoutError:
                    pass
        finally:
            stream.waiting -= 1

    def on_session(self, session_id: bytes) -> None:
        """A secure session was established: one after the first means the
        server may have restarted — its observations are gone."""
        if self._session is not None and session_id != self._session:
            for stream in list(self._observations):
                if stream.status is Status.ACTIVE:
                    self._lose(stream, stream.generation)
        self._session = session_id

    # -- registration

    async def _register(self, stream: Stream, since: str) -> HttpResponse | None:
        """Register (or wait for a registration under way); an HttpResponse
        for the request that started it, when the server answered plainly."""
        running = self._registering.get(stream)
        if running is not None:
            await asyncio.shield(running)
            return None  # look again at what the stream says now
        task = self._registering[stream] = asyncio.create_task(self._registration(stream, since))
        task.add_done_callback(lambda _t: self._registering.pop(stream, None))
        # a client that gives up must not cut the registration short
        return await asyncio.shield(task)

    async def _registration(self, stream: Stream, since: str) -> HttpResponse | None:
        """Register from ``since``; an HttpResponse to give the client when the
        server answered it as a plain poll (or with an error)."""
        self._drop_observation(stream)
        generation = self.state.begin(stream, since, self.loop_time)
        self.counters.registrations += 1
        request = HttpRequest("GET", stream.poll.target(since=since), access_token=stream.access_token)
        resend_token = False
        reply: Message | None = None
        obs: _Observation | None = None
        for _attempt in range(3):
            message = self.gateway.coap_request(request, resend_token=resend_token)
            message.opt.observe = 0
            obs = _Observation(message, Pipe(message, log))
            reply = await self._start(stream, generation, obs)
            if reply is None:
                self.state.on_lost(stream, generation)
                self._wake(stream)
                return matrix_error(504, "M_UNKNOWN", "the low-bandwidth link did not deliver the request")
            resend = self.gateway.resend_for(reply, resend_token)
            if resend is None:
                break
            obs.close()
            resend_token = resend_token or resend == "token"
        assert reply is not None and obs is not None
        now = self.loop_time
        if reply.opt.observe is not None and reply.code.is_successful():
            self._observations[stream] = obs
            outcome = self.state.on_registered(stream, generation, reply.opt.observe, reply.payload, now)
            if outcome is Outcome.LOST:
                # a first answer we cannot read will not read better next time
                self._drop_observation(stream)
                self.state.on_declined(stream, generation, now)
            else:
                self._after(stream, generation, outcome)
            self._wake(stream)
            return None
        obs.close()
        control = reply.opt.get_option(options.SYNC_PUSH)
        if control:
            if control[0].value == bytes([END_FETCH]):
                self.state.on_final(stream, generation, None)  # too large to push: poll it plainly
            else:
                self.state.on_declined(stream, generation, now)  # a reason we do not know
            self._wake(stream)
            return None
        response = coap_to_response(reply, self.gateway.profile)
        if response.status == 200:
            self.state.on_declined(stream, generation, now)  # the server answered it as a plain poll
        else:
            self.state.on_lost(stream, generation)  # an error: said once, asked again next time
        self._wake(stream)
        return self._restore(response)

    async def _start(self, stream: Stream, generation: int, obs: _Observation) -> Message | None:
        """Send the registration; its first answer (None: the link failed).
        Later events feed ``_on_event``."""
        first: asyncio.Future[Message] = asyncio.get_running_loop().create_future()

        def on_event(event: Pipe.Event) -> bool:
            if not first.done():
                if event.message is not None:
                    first.set_result(event.message)
                else:
                    first.set_exception(event.exception or error.NetworkError("observation ended"))
                return not event.is_last
            self._on_event(stream, generation, obs, event)
            return not event.is_last

        obs.unregister = obs.pipe.on_event(on_event)
        try:
            interface = await self.gateway.endpoint.context.find_remote_and_interface(obs.message)
            interface.request(obs.pipe)
            return await asyncio.wait_for(asyncio.shield(first), self._answer_timeout)
        except (error.Error, TimeoutError, GatewayError) as exc:
            obs.close()
            self.gateway.counters.link_failures += 1
            log.warning("sync push registration failed: %s", type(exc).__name__)
            return None

    def _on_event(self, stream: Stream, generation: int, obs: _Observation, event: Pipe.Event) -> None:
        if generation != stream.generation:
            return
        message = event.message
        if message is None:  # an error, or the pipe ended: the observation is gone
            self._lose(stream, generation)
            return
        if message.opt.observe is not None and message.code.is_successful():
            self.counters.notifications += 1
            outcome = self.state.on_notification(stream, generation, message.opt.observe, message.payload,
                                                 self.loop_time)
            self._after(stream, generation, outcome)
        else:  # a final answer: the observation ends here
            self._observations.pop(stream, None)
            obs.close()
            control = message.opt.get_option(options.SYNC_PUSH)
            if control:
                self.state.on_final(stream, generation, None)  # END_FETCH: too large to push
            else:
                self.state.on_final(stream, generation, coap_to_response(message, self.gateway.profile))
        self._wake(stream)

    def _after(self, stream: Stream, generation: int, outcome: Outcome) -> None:
        if outcome is Outcome.LOST:
            self._lose(stream, generation)
        elif outcome is Outcome.PAUSE:
            self._spawn(self._cancel(stream))

    def _lose(self, stream: Stream, generation: int) -> None:
        self.counters.lost += 1
        self.state.on_lost(stream, generation)
        self._drop_observation(stream)
        self._wake(stream)

    def _drop_observation(self, stream: Stream) -> None:
        obs = self._observations.pop(stream, None)
        if obs is not None:
            obs.close()  # a later notification is answered RST: the server ends it too

    # -- control requests

    def _control_message(self, op: int, obs: _Observation) -> Message:
        message = Message(code=Code.GET)
        message.opt.add_option(OpaqueOption(options.SYNC_PUSH, bytes([op]) + obs.token))
        message.remote = self.gateway.endpoint.remote(self.gateway.server_key)
        return message

    async def _cancel(self, stream: Stream, timeout: float | None = None) -> None:
        """End the observation: the server stops its loop (and its polling
        keeps the user "online" no longer)."""
        obs = self._observations.pop(stream, None)
        self.state.on_cancelled(stream)
        self._wake(stream)
        if obs is None:
            return
        self.counters.cancels += 1
        try:
            request = self.gateway.endpoint.context.request(self._control_message(OP_CANCEL, obs))
            await asyncio.wait_for(request.response, timeout or self._answer_timeout)
        except (error.Error, TimeoutError, GatewayError) as exc:
            log.info("sync push cancel not confirmed: %s", type(exc).__name__)
        finally:
            obs.close()

    async def _check(self, stream: Stream) -> None:
        obs = self._observations.get(stream)
        if obs is None:
            return
        generation = stream.generation
        self.counters.checks += 1
        try:
            request = self.gateway.endpoint.context.request(self._control_message(OP_CHECK, obs))
            reply = await asyncio.wait_for(request.response, self._answer_timeout)
        except (error.Error, TimeoutError, GatewayError):
            return  # the link is down: the next check, or the next request, will tell
        if reply.code == Code.NOT_FOUND and self._observations.get(stream) is obs:
            self._lose(stream, generation)

    def _ping(self) -> None:
        """An empty CON (RFC 7252 §4.3): the server answers RST.  Keeps a NAT
        binding open; a server that restarted answers with a new session."""
        self.counters.pings += 1
        ping = Message(code=Code.EMPTY, transport_tuning=Reliable())
        ping.remote = self.gateway.endpoint.remote(self.gateway.server_key)
        self.gateway.endpoint.interface.mman.send_message(ping, lambda: None)

    # -- housekeeping

    async def _maintain(self) -> None:
        while True:
            await asyncio.sleep(self.config.tick)
            try:
                self._housekeeping(self.loop_time)
            except Exception:  # one bad round must not end housekeeping for good
                log.exception("sync push housekeeping failed")

    def _housekeeping(self, now: float) -> None:
        for stream in self.state.idle(now):
            self._spawn(self._cancel(stream))
        for stream in self.state.due_checks(now):
            self._spawn(self._check(stream))
        if self.config.keepalive:
            frames_out = self.gateway.endpoint.counters.frames_out
            if frames_out != self._frames_out:
                self._frames_out, self._quiet_since = frames_out, now
            elif now - self._quiet_since >= self.config.keepalive:
                self._ping()
                self._quiet_since = now

    def _event(self, stream: Stream) -> asyncio.Event:
        event = self._changed.get(stream)
        if event is None:
            event = self._changed[stream] = asyncio.Event()
        return event

    def _wake(self, stream: Stream) -> None:
        event = self._changed.pop(stream, None)
        if event is not None:
            event.set()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _deliver(self, request: HttpRequest, response: HttpResponse) -> HttpResponse:
        """A pushed or idle answer, on its way to the client."""
        for observer in self.answer_observers:
            observer(request, response)
        return self._restore(response)

    def _restore(self, response: HttpResponse) -> HttpResponse:
        wire = getattr(self.gateway, "wire", None)
        if wire is None or response.content_type != JSON:
            return response
        # the client's own events carry the homeserver's transaction IDs (the
        # compact form scopes them): give the client back its own, as exchange() does
        return HttpResponse(response.status, wire.restore_txn_ids(response.body), response.content_type,
                            response.headers)


__all__ = [
    "Answer",
    "Outcome",
    "Plain",
    "Register",
    "Status",
    "Stream",
    "SyncPushClient",
    "SyncPushClientConfig",
    "SyncPushClientCounters",
    "SyncPushState",
    "Wait",
]

"""Sync push, client side: the asyncio shell around ``push.client.SyncPushState``.

The client gateway hands every request here first; a push-eligible
long-poll is answered from pushed answers or the idle template, or starts a
registration (an Observe GET; FETCH for sliding sync) — all decided by ``SyncPushState``.  This
module only carries the decisions out: it registers and cancels
observations over the link endpoint, wakes waiting polls when a push
arrives, and runs the maintenance loop (idle streams, checks of silent
observations, the NAT keepalive).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from typing import Any, Protocol

from aiocoap import Message
from aiocoap.numbers.codes import Code

from ..codec import (
    ClientBinding,
    HttpRequest,
    HttpResponse,
    Profile,
    link_failure,
    matrix_error,
)
from ..push import (
    JSON,
    OP_CANCEL,
    OP_CHECK,
    Answer,
    LongPoll,
    Outcome,
    Plain,
    Register,
    Sent,
    Status,
    Stream,
    SyncPushClientConfig,
    SyncPushState,
    control_request,
    delta_payload,
    offer_continue,
    offer_parts,
)
from ..transport import LinkEndpoint, LinkFailure, Observation

log = logging.getLogger(__name__)

#: a wait this close to its deadline has reached it (seconds)
DEADLINE_SLACK = 1e-3
#: at close, the longest wait for a registration under way and for each cancel's answer (seconds)
CLOSE_WAIT = 1.0


class PushHost(Protocol):
    """What sync push needs from the client gateway it serves."""

    profile: Profile
    binding: ClientBinding
    endpoint: LinkEndpoint
    server_key: Hashable
    request_timeout: float | None

    async def exchange(self, http_request: HttpRequest) -> HttpResponse: ...

    async def round_trip(self, http_request: HttpRequest,
                         send: Callable[[Message], Awaitable[Message]]) -> tuple[Message, Message]: ...



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
    #: sends whose answer carried their echo's fold
    echoes: int = 0
    #: registrations not sent: the request (a sliding-sync body) is longer than a frame
    unregistrable: int = 0


class _Unregistrable(Exception):
    """The registration would not fit one frame."""


# ------------------------------------------------------------ the shell


class SyncPushClient:
    def __init__(self, gateway: PushHost, config: SyncPushClientConfig | None = None):
        self.gateway = gateway
        self.config = config or SyncPushClientConfig()
        self.state = SyncPushState(gateway.profile, self.config)
        self.counters = SyncPushClientCounters()
        #: test and debug observers: (the client's request, the answer it got from a push or template)
        self.answer_observers: list[Callable[[HttpRequest, HttpResponse], None]] = []
        self._observations: dict[Stream, Observation] = {}
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
        if self._registering:
            # a registration under way is one the server holds (or soon will):
            # let it finish so its observation is cancelled with the others,
            # not left to push to an address nobody answers
            await asyncio.wait(list(self._registering.values()), timeout=CLOSE_WAIT)
        for stream in list(self._observations):
            await self._cancel(stream, timeout=CLOSE_WAIT)
        tasks = [*self._registering.values(), *self._background]
        if self._maintenance is not None:
            tasks.append(self._maintenance)
        for task in tasks:
            task.cancel()
        # wait until they are gone: a request they were waiting on is dropped by
        # aiocoap a loop turn or two after its cancellation (a block-wise one in
        # two steps); the endpoint shutting down before that failed the
        # cancelled request again (InvalidStateError at shutdown, seen in CI)
        await asyncio.gather(*tasks, return_exceptions=True)

    # -- the client gateway hands every request here first

    async def handle(self, http_request: HttpRequest) -> HttpResponse | None:
        """The answer to a push-eligible long-poll; None: not one (the plain path)."""
        if not self.config.enabled or self._closing:
            return None
        poll = self.state.classify(http_request.method, http_request.target, http_request.access_token,
                                   http_request.body)
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
                    if self.state.streams.get(stream.key) is not stream:
                        # evicted while this poll waited (more streams than
                        # max_streams): registered again it would be an orphan
                        # nobody cancels, holding one of the device's loops at
                        # the server.  It goes the plain way for the time left
                        self.counters.plain += 1
                        timeout_ms = max(0, int((deadline - self.loop_time) * 1000))
                        return await self.gateway.exchange(self._request(poll, poll.target(timeout_ms=timeout_ms),
                                                                         http_request.access_token))
                    response = await self._register(stream, action.since)
                    if response is not None:
                        return response
                    continue
                remaining = deadline - self.loop_time
                if self._closing:
                    return self.state.on_timeout(stream, poll.since) or matrix_error(
                        503, "M_UNKNOWN", "the gateway is shutting down")
                # within a millisecond is due: a timer at deadline - ε can fire with
                # the clock short of the deadline again and again (float sums; a
                # clock of coarse resolution, virtual time) — a spin, not a wait
                if remaining <= DEADLINE_SLACK:
                    idle = self.state.on_timeout(stream, poll.since)
                    if idle is not None:
                        self.counters.answered_idle += 1
                        return self._deliver(http_request, idle)
                    # no template yet: ask the homeserver now, the plain way
                    self.counters.plain += 1
                    return await self.gateway.exchange(self._request(poll, poll.target(timeout_ms=0),
                                                                     http_request.access_token))
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(remaining):
                        await changed.wait()
        finally:
            stream.waiting -= 1

    # -- the device's own sends (push.echo)

    def echo_target(self, http_request: HttpRequest) -> tuple[Stream, int] | None:
        """Before a send leaves: the observation its echo may fold into."""
        if not self.config.enabled or http_request.method != "PUT" or http_request.access_token is None:
            return None
        return self.state.echo_target(http_request.access_token)

    def on_echo(self, target: tuple[Stream, int], sent: Sent | None, fold: bytes) -> None:
        """The send's answer carried its echo's fold."""
        stream, generation = target
        self.counters.echoes += 1
        outcome = self.state.on_echo(stream, generation, sent, fold, self.loop_time)
        self._after(stream, stream.generation, outcome)
        self._wake(stream)

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
        replaced = self._observations.get(stream)
        self._drop_observation(stream)
        generation = self.state.begin(stream, since, self.loop_time)
        taken = self.state.continuation(stream)
        self.counters.registrations += 1
        poll = stream.poll
        request = self._request(poll, poll.target(since=since), stream.access_token)
        sent: list[Observation] = []

        async def register(message: Message) -> Message:
            for earlier in sent:  # answered "send it again": that one is over
                earlier.close()
            message.code = poll.kind.registration  # a sliding-sync POST observes as a FETCH
            if len(message.payload) > self.gateway.endpoint.remote(self.gateway.server_key).maximum_payload_size:
                # a sliding-sync request longer than a frame: an observation's
                # registration goes in one frame (no block-wise Observe here)
                raise _Unregistrable
            message.opt.observe = 0
            offer_parts(message)  # an answer too large for one frame comes in several
            if taken is not None and replaced is not None:
                # go on from the old observation's state, and write the new
                # request against the old one when that is shorter
                delta = (delta_payload(message.payload, taken[1], self.gateway.profile)
                         if message.opt.content_format is None else None)
                offer_continue(message, taken[0], replaced.token, None if delta is None else delta[1])
                if delta is not None:
                    message.payload = delta[0]
            observation, first = await self.gateway.endpoint.observe(
                message, self.gateway.server_key, lambda later: self._on_later(stream, generation, later),
                self._answer_timeout)
            sent[:] = [observation]
            return first

        try:
            message, reply = await self.gateway.round_trip(request, register)
        except _Unregistrable:
            # nothing was sent: this stream is polled plainly (block-wise) for a while
            self.counters.unregistrable += 1
            self.state.on_declined(stream, generation, self.loop_time)
            self._wake(stream)
            return None
        except LinkFailure as exc:
            self.state.on_lost(stream, generation)
            self._wake(stream)
            return link_failure(exc)
        obs = sent[-1]
        first = self.state.on_first_answer(stream, generation, reply, self.loop_time)
        if first.observing:
            self._observations[stream] = obs
            self._after(stream, generation, first.outcome)
        else:
            obs.close()
        self._wake(stream)
        return self.gateway.binding.response(request, message, reply) if first.plain else None

    def _on_later(self, stream: Stream, generation: int, message: Message | None) -> None:
        if generation != stream.generation:
            return  # a late event of an observation we left
        later = self.state.on_later(stream, generation, message, self.loop_time)
        if later.notification:
            self.counters.notifications += 1
        if later.ended:
            obs = self._observations.pop(stream, None)
            if obs is not None:
                obs.close()
            if later.outcome is Outcome.LOST:
                self.counters.lost += 1
        else:
            self._after(stream, generation, later.outcome)
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
            await self.gateway.endpoint.request(control_request(OP_CANCEL, obs.token), self.gateway.server_key,
                                                timeout or self._answer_timeout)
        except LinkFailure as exc:
            log.info("sync push cancel not confirmed: %s", exc)
        finally:
            obs.close()

    async def _check(self, stream: Stream) -> None:
        obs = self._observations.get(stream)
        if obs is None:
            return
        generation = stream.generation
        self.counters.checks += 1
        try:
            reply = await self.gateway.endpoint.request(control_request(OP_CHECK, obs.token),
                                                        self.gateway.server_key, self._answer_timeout)
        except LinkFailure:
            return  # the link is down: the next check, or the next request, will tell
        if reply.code == Code.NOT_FOUND and self._observations.get(stream) is obs:
            self._lose(stream, generation)

    # -- housekeeping

    async def _maintain(self) -> None:
        while True:
            await asyncio.sleep(self.config.tick)
            try:
                self._housekeeping(self.loop_time)
            except Exception:  # one bad round must not end housekeeping for good
                log.exception("sync push housekeeping failed")

    def _housekeeping(self, now: float) -> None:
        # the observations held, not the streams listed: one whose stream was
        # evicted is nobody's any more (a poll for its key makes a new stream)
        listed, evicted = [], []
        for stream in self._observations:
            (listed if self.state.streams.get(stream.key) is stream else evicted).append(stream)
        for stream in evicted + self.state.idle(now, listed):
            self._spawn(self._cancel(stream))
        for stream in self.state.due_checks(now, listed):
            self._spawn(self._check(stream))
        if self.config.keepalive:
            frames_out = self.gateway.endpoint.counters.frames_out
            if frames_out != self._frames_out:
                self._frames_out, self._quiet_since = frames_out, now
            elif now - self._quiet_since >= self.config.keepalive:
                # keeps a NAT binding open; a restarted server answers with a new session
                self.counters.pings += 1
                self.gateway.endpoint.ping(self.gateway.server_key)
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

    @staticmethod
    def _request(poll: LongPoll, target: str, access_token: str | None) -> HttpRequest:
        """The long-poll ``poll`` as a request to ``target``."""
        return HttpRequest(poll.kind.method, target, poll.body, JSON if poll.body else None, access_token)

    def _deliver(self, request: HttpRequest, response: HttpResponse) -> HttpResponse:
        """A pushed or idle answer, on its way to the client: with the client's
        own transaction IDs, as every answer that crossed the link."""
        for observer in self.answer_observers:
            observer(request, response)
        return self.gateway.binding.restore(response)


__all__ = ["PushHost", "SyncPushClient", "SyncPushClientCounters"]

"""Sync push, server side: the asyncio shell around ``push.server.PushChain``.

The server gateway hands observations of ``/sync`` long-polls and their
control requests (check, cancel) here.  Each observation is one task: it
polls the homeserver through the gateway's ``Upstream`` with the device's
bound token, asks its ``PushChain`` what to do with each answer, sends the
notifications and waits for their ACKs before polling further.  Every
observation has its own upstream request: a slow homeserver answer or a
slow link holds up nobody else.  Those requests come from the upstream's
long-poll pool, never from the one ordinary requests use: at most one per
observation, and the limits (per device, in all) are checked before an
observation starts, so the pool, ``max_observations`` large, is
never short of a connection.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

from aiocoap import Message
from aiocoap.numbers.codes import Code
from aiocoap.numbers.types import CON

from ..codec import HttpResponse, Profile, Resolved, ServerBinding, options, response_to_coap
from ..errors import GatewayError
from ..push import (
    JSON,
    MAX_PUSH_BODY,
    SYNC,
    Folded,
    Sent,
    OP_CANCEL,
    OP_CHECK,
    Fetch,
    Finish,
    LongPoll,
    Push,
    PushChain,
    ReplayHistory,
    Retry,
    Silent,
    SyncPushServerConfig,
    accepts_parts,
    connection_key,
    continue_offer,
    end_fetch,
    end_resend,
    is_push_request,
    mark_continued,
    parse_control,
    parse_long_poll,
    push_preset,
    read_delta_payload,
    stream_key,
)
from ..transport import LinkEndpoint
from .upstream import Upstream, UpstreamError

log = logging.getLogger(__name__)


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
    #: answers too large for one notification, pushed in parts
    parted: int = 0
    finals: int = 0
    upstream_errors: int = 0
    checks: int = 0
    cancels: int = 0
    #: echoes of a device's own sends folded into the send's answer
    folded: int = 0
    #: registrations that went on from the state of the observation they replaced
    continued: int = 0
    #: of those, registrations whose request body came as a delta against the old one
    delta_bodies: int = 0
    #: sliding sync: loops that waited for the client's next request after
    #: pushing to-device events, instead of polling them again
    holds: int = 0


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


@dataclass(eq=False)
class EchoWait:
    """A device's send on its way to the homeserver, whose echo the
    observation's loop may fold into the send's answer (``push.echo``).

    The homeserver wakes the loop's poll with the echo about when it answers
    the send, in either order: the loop holds an answer that carries the
    send's transaction ID until ``answered`` (the send's ``sent``, or None
    when it failed), and gives the fold through ``folded``."""

    observation: _Observation
    #: the send's room, event type and (homeserver's) transaction ID
    room_id: str
    event_type: str
    txn_id: str
    answered: asyncio.Event
    folded: asyncio.Future[bytes | None]
    sent: Sent | None = None
    #: the send's answer left (with or without a fold): fold nothing more
    closed: bool = False


@dataclass(eq=False)
class _Observation:
    remote: Hashable
    token: bytes  # CoAP token of the registration: names it in control requests
    key: bytes  # the answers' (history) key
    connection: bytes  # the stream's key: one observation each
    poll: LongPoll
    access_token: str
    chain: PushChain
    task: asyncio.Task | None = None
    #: a send by this device that is on its way to the homeserver
    echo: EchoWait | None = None
    #: it goes on from the state of the observation it replaced (Push-Continue):
    #: its first answer says so
    continued: bool = False
    #: why we ended it ourselves (None: the peer did, or it runs)
    ended: str | None = None


class _Ended(Exception):
    pass


def _close_quietly(pipe: Any) -> None:
    """End an observation we ended ourselves without sending anything:
    no_response suppresses a 2.xx answer, and aiocoap forgets the token.
    A pipe the peer already ended (RST, its CON timed out) needs nothing —
    aiocoap would log a warning for every such observation."""
    if getattr(pipe, "_event_callbacks", None) is False:  # aiocoap's mark of an ended pipe
        return
    pipe.add_response(Message(code=Code.CONTENT, no_response=2), is_last=True)


class SyncPushServer:
    """Observations of devices' sync streams, each one homeserver loop.

    ``upstream`` is the gateway's homeserver client, ``binding`` its device
    table (the token an observation polls with is resolved there, as for any
    request), ``count_request`` counts each request served here among the
    gateway's own."""

    def __init__(self, upstream: Upstream, binding: ServerBinding, profile: Profile,
                 config: SyncPushServerConfig | None = None, *, count_request: Callable[[], None] = lambda: None,
                 forwarded_for: Callable[[Hashable], str | None] = lambda remote: None):
        self.upstream = upstream
        self.binding = binding
        self.profile = profile
        self.config = config or SyncPushServerConfig()
        # one homeserver request per observation at most: that many connections, of their own
        upstream.reserve_long_polls(self.config.max_observations)
        self.count_request = count_request
        #: a device's IP address, for the homeserver (X-Forwarded-For), asked at each poll: it may move
        self.forwarded_for = forwarded_for
        self.history = ReplayHistory(self.config.history_per_stream, self.config.history_streams,
                                     self.config.history_bytes, self.config.history_bytes_per_device)
        self.acks = AckTracker()
        #: without ACKs from the message layer the loop cannot wait for
        #: delivery; ServerGateway.attach always provides them
        self.ack_tracking = False
        self.observations: dict[tuple[Hashable, bytes], _Observation] = {}
        #: the homeserver loops running: one per observation, and a loop whose
        #: observation ended only until it stops (an operator's check for orphans)
        self.loops: set[asyncio.Task[Any]] = set()
        self._by_stream: dict[bytes, _Observation] = {}
        self.counters = SyncPushServerCounters()
        #: test and debug observers: (polled since, homeserver response)
        self.upstream_observers: list[Callable[[str, HttpResponse], None]] = []
        #: ``on_watching(remote, True)`` when a device registers an
        #: observation, ``(remote, False)`` when it cancelled its last one:
        #: who to wake after a restart (the server gateway's store)
        self.on_watching: Callable[[Hashable, bool], None] | None = None
        self._closing = False

    def attach(self, endpoint: LinkEndpoint) -> None:
        """Learn of acknowledged CONs from the endpoint the pushes leave by."""
        endpoint.on_acknowledged(self.acks.acknowledged)
        self.ack_tracking = True

    # -- entry points from the ServerGateway

    @staticmethod
    def claims(request: Message) -> bool:
        return is_push_request(request)

    async def render_to_pipe(self, pipe: Any) -> bool:
        """Serve an observation or control request; False: not ours after
        all (the gateway answers it as a plain request)."""
        request = pipe.request
        control = parse_control(request)
        if control is not None:
            self.count_request()
            pipe.add_response(self._control(request, *control), is_last=True)
            return True
        if not self._read_delta_body(request):
            # a new request written against an old one we do not hold (any
            # more): nothing was forwarded; the client registers again whole
            self.count_request()
            pipe.add_response(end_resend(), is_last=True)
            return True
        resolved = self.binding.resolve(request)
        if not isinstance(resolved, Resolved) or not isinstance(resolved.token, str):
            return False  # refused (Token-Unbound, Handle-Unknown…) or no token: the plain path says so
        poll = parse_long_poll(resolved.http.method, resolved.http.target, self.profile.routes, resolved.http.body)
        if poll is None:
            return False
        access_token = resolved.token
        key, connection = stream_key(access_token, poll), connection_key(access_token, poll)
        # a sliding-sync connection has one state on the homeserver: two
        # loops on it (an old request and a new) would move it past each other
        previous = self._by_stream.get(connection)
        if not self._room_for(request.remote, previous):
            self.counters.declined += 1
            return False  # over limits: answered as the plain long-poll it also is
        self.counters.registrations += 1
        self.count_request()
        if self.on_watching is not None:
            self.on_watching(request.remote, True)
        carried = None
        if previous is not None:
            offer = continue_offer(request)
            # a new request on the same stream from the same device, which took
            # every notification the old observation sent: go on from its state
            if offer is not None and previous.remote == request.remote and previous.token == offer.token:
                carried = previous.chain.continued(offer.observe)
            self._end(previous, "replaced")
        max_payload = max(16, request.remote.maximum_payload_size)
        chain = PushChain(poll.since, self.profile.cbor_table, push_preset(self.profile),
                          max_payload, delta_keep=self.config.delta_keep, backoff_max=self.config.backoff_max,
                          parts=accepts_parts(request), kind=poll.kind, delta=carried)
        obs = _Observation(request.remote, request.token, key, connection, poll, access_token, chain,
                           asyncio.current_task(), continued=carried is not None)
        if carried is not None:
            self.counters.continued += 1
        self.observations[(obs.remote, obs.token)] = obs
        self._by_stream[connection] = obs
        self.loops.add(obs.task)
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
            self.loops.discard(obs.task)
            if self.observations.get((obs.remote, obs.token)) is obs:
                del self.observations[(obs.remote, obs.token)]
            if self._by_stream.get(connection) is obs:
                del self._by_stream[connection]
        return True

    def _read_delta_body(self, request: Message) -> bool:
        """A registration whose payload is deflated against the request body
        of the observation it replaces (Push-Continue with a CRC-32) gets its
        payload back as plain CBOR; False when that observation is not this
        device's here or the body does not read back to its CRC-32."""
        offer = continue_offer(request)
        if offer is None or offer.crc is None:
            return True
        previous = self.observations.get((request.remote, offer.token))
        if previous is None or request.opt.content_format is not None:
            return False
        try:
            request.payload = read_delta_payload(request.payload, previous.poll.body, offer.crc, self.profile)
        except GatewayError as exc:  # CodecError, CompressionError (corrupt, a bomb)
            log.info("sync push: a delta registration body not read: %s", exc)
            return False
        request.opt.content_format = options.CF_CBOR
        self.counters.delta_bodies += 1
        return True

    # -- the device's own sends (push.echo)

    def expect_echo(self, remote: Hashable, access_token: str, room_id: str, event_type: str,
                    txn_id: str) -> EchoWait | None:
        """Before a device's send goes to the homeserver: the wait through
        which its echo may be folded into the send's answer, when the device
        has one observation with this token."""
        mine = [o for o in self.observations.values()
                if o.remote == remote and o.access_token == access_token and o.ended is None]
        if len(mine) != 1 or mine[0].echo is not None:
            return None
        loop = asyncio.get_running_loop()
        wait = mine[0].echo = EchoWait(mine[0], room_id, event_type, txn_id, asyncio.Event(), loop.create_future())
        return wait

    async def echo_answer(self, wait: EchoWait, sent: Sent | None) -> bytes | None:
        """After the homeserver answered the send (``sent``; None: not a
        plain success): the fold to append to the send's answer, or None.
        Waits for the loop at most ``echo_wait`` seconds."""
        wait.sent = sent
        wait.answered.set()
        try:
            if sent is None:
                return None
            try:
                async with asyncio.timeout(self.config.echo_wait):
                    return await asyncio.shield(wait.folded)
            except TimeoutError:
                return wait.folded.result() if wait.folded.done() else None
        finally:
            self.release_echo(wait)

    @staticmethod
    def release_echo(wait: EchoWait) -> None:
        """The send's answer leaves (or never will: its request failed): the
        observation may fold the next send's echo."""
        wait.closed = True
        wait.answered.set()
        if wait.observation.echo is wait:
            wait.observation.echo = None

    async def _echo(self, obs: _Observation, response: HttpResponse) -> Folded | None:
        """``response`` as the fold of a send under way, if it is its echo."""
        wait = obs.echo
        if (wait is None or wait.closed or response.status != 200
                or b'"transaction_id":"' + wait.txn_id.encode() + b'"' not in response.body):
            return None
        if not wait.answered.is_set():  # the homeserver woke the poll before it answered the send
            try:
                async with asyncio.timeout(self.config.echo_wait):
                    await wait.answered.wait()
            except TimeoutError:
                return None
        if wait.closed or obs.echo is not wait:
            return None
        step = obs.chain.on_echo(response, wait.sent) if wait.sent is not None else None
        # folded or not, this answer decides: the send's answer need not wait longer
        wait.closed = True
        wait.folded.set_result(None if step is None else step.fold)
        return step

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
        # the remote is the device (its static key and process: all its sessions
        # share it), so max_per_session is its share of the long-poll pool
        return (len(others) < self.config.max_observations
                and sum(1 for o in others if o.remote == remote) < self.config.max_per_session)

    def _end(self, obs: _Observation, reason: str) -> None:
        if obs.ended is None and obs.task is not None and not obs.task.done():
            obs.ended = reason
            obs.task.cancel()
        self.observations.pop((obs.remote, obs.token), None)
        if self._by_stream.get(obs.connection) is obs:
            del self._by_stream[obs.connection]

    def _control(self, request: Message, op: int, token: bytes) -> Message:
        obs = self.observations.get((request.remote, token))
        if op == OP_CHECK:
            self.counters.checks += 1
            return Message(code=Code.VALID if obs is not None else Code.NOT_FOUND)
        if op == OP_CANCEL:
            self.counters.cancels += 1
            if obs is not None:
                self._end(obs, "cancelled")
                if self.on_watching is not None and not any(o.remote == obs.remote for o in self.observations.values()):
                    self.on_watching(obs.remote, False)
            return Message(code=Code.DELETED)
        return Message(code=Code.BAD_OPTION)

    async def _run(self, pipe: Any, obs: _Observation) -> None:
        chain = obs.chain
        first = True
        # answers kept from earlier observations go first, then the homeserver
        replaying = True
        while True:
            if obs.ended is not None:  # a cancellation lost in some await still ends the loop here
                raise _Ended(obs.ended)
            replay = self.history.get(obs.key, chain.head) if replaying else None
            if replay is not None:
                self.counters.replayed += 1
                head = chain.head
                step = chain.on_replay(replay)
                # a kept answer that leaves the head where it was would be found
                # again at once, and pushed without end: the homeserver goes on
                replaying = chain.head != head
            else:
                replaying = False
                timeout = 0 if first else chain.poll_timeout(self.config.poll_timeout_ms)
                step = await self._poll(obs, chain.poll_from, timeout)
            if isinstance(step, Retry):
                if first:  # the registration gets the homeserver's error, as a plain poll would
                    step = Finish(step.response)
                else:
                    await asyncio.sleep(step.delay)
                    continue
            if isinstance(step, Silent):
                self.counters.silent += 1
                continue
            if isinstance(step, Folded):
                # it rides in the send's answer: a piggybacked answer that a
                # device asks for again until it has it, so no ACK to wait for
                # (lost for good, the chain shows a gap and the history replays)
                self.history.put(obs.key, step.answered, step.body, obs.remote)
                self.counters.folded += 1
                first = False
                continue
            if isinstance(step, Push):
                if step.answered is not None and step.body is not None:
                    self.history.put(obs.key, step.answered, step.body, obs.remote)
                parts = step.parts or (step.payload,)
                if len(parts) > 1:
                    self.counters.parted += 1
                    if first:
                        # the registration's answer is a piggybacked ACK that nothing
                        # acknowledges: it says "registered", the parts follow as CONs
                        registered = Message(code=Code.CONTENT, payload=b"", observe=chain.next_observe())
                        if obs.continued:
                            mark_continued(registered)
                        pipe.add_response(registered, is_last=False)
                        first = False
                for part in parts:  # one at a time, each acknowledged before the next
                    message = Message(code=Code.CONTENT, payload=part, observe=chain.next_observe())
                    if first and obs.continued:
                        mark_continued(message)
                    self.counters.notifications += 1
                    self.counters.notification_bytes += len(part)
                    pipe.add_response(message, is_last=False)
                    first = False
                    await self._delivered(message)
                if step.hold:
                    # the client's next request takes the to-device events; it
                    # replaces this observation (which cancels this wait)
                    self.counters.holds += 1
                    await asyncio.sleep(self.config.hold_wait)
                continue
            if isinstance(step, Fetch):
                self.counters.fetches += 1
                message = end_fetch()
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
            # asyncio.timeout, not wait_for: Python 3.11's wait_for returns the
            # result when the ACK and a cancellation (the device's cancel, a
            # replacing registration) come in one loop turn — the loop then
            # carried on as an orphan, pushing to a device that had left
            async with asyncio.timeout(self.config.ack_wait):
                await future
        except TimeoutError:
            raise _Ended("notification never acknowledged") from None
        finally:
            self.acks.forget(remote, mid)

    async def _poll(self, obs: _Observation, since: str, timeout_ms: int):
        """One long-poll to the homeserver, and what the chain makes of its answer."""
        self.counters.polls += 1
        target = obs.poll.target(since=since, timeout_ms=timeout_ms)
        try:
            # every poll of the loop, timeout 0 too (an initial answer can take Synapse
            # seconds): the long-poll pool has a connection for each observation
            poll = obs.poll
            response = await self.upstream.fetch(poll.kind.method, target, body=poll.body,
                                                 content_type=JSON if poll.body else None, token=obs.access_token,
                                                 max_body=MAX_PUSH_BODY, timeout=timeout_ms / 1000 + 60,
                                                 long_poll=True, forwarded_for=self.forwarded_for(obs.remote))
        except UpstreamError as exc:
            if exc.kind == UpstreamError.TOO_LARGE:
                return Fetch()  # an answer longer than any notification could carry
            self.counters.upstream_errors += 1
            log.warning("sync push: no usable answer from the homeserver: %s", exc.kind)
            return obs.chain.on_unreachable()
        for observer in self.upstream_observers:
            observer(since, response)
        return await self._echo(obs, response) or obs.chain.on_response(response)


__all__ = ["AckTracker", "SyncPushServer", "SyncPushServerCounters"]

"""Sync push, client side, sans-I/O: which long-polls are answered from pushes, and how.

A Matrix client long-polls ``GET …/sync?since=S&timeout=T…`` over and over.
Instead of carrying each poll across the link, the client gateway keeps one
*stream* per (access token, path, parameters other than since and timeout)
and registers one CoAP observation for it; the server gateway then pushes
each answer that says something (``push.server``).  A poll for ``since=S``:

* is answered at once from the pushed answers when one answers S;
* else, when S is the stream's head (the since the next push answers),
  waits for that push up to the client's own timeout, and then answers with
  the empty-response template the server pushed, ``next_batch`` = S —
  exactly what Synapse says to an idle poll, and nothing crossed the link;
* else (a new stream, a since from elsewhere) registers the observation
  from S, replacing any other for the stream.

Sliding sync (``POST …?pos=P&timeout=T`` with the request in the body) is
the same with ``pos`` for since; its stream is the connection (``conn_id``),
and a request with another body registers again (``format.SLIDING``).

Initial syncs, ``timeout=0``, ``full_state`` and anything unusual go the
plain way.  An observation that is lost — the server restarted, a
notification never arrived, a new secure session, a check that finds it
gone — is registered again from the stream's head at the next poll, and the
server replays what it had already answered, so nothing is lost or doubled.
When the client stops polling (3× its timeout) the observation is cancelled
and the server stops its loop.

``SyncPushState`` holds every decision (requests and CoAP payloads in,
``Action``s and ``Outcome``s out); ``gateway.push_client`` is its asyncio
shell.
"""

from __future__ import annotations

import enum
import logging
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field

from aiocoap import Message

from ..codec import HttpResponse, Profile, coap_to_response
from ..errors import GatewayError
from .echo import Sent, takes_place, unfold
from .format import (
    END_FETCH,
    END_RESEND,
    FIRST_OBSERVE,
    JSON,
    OBSERVE_MODULUS,
    SYNC,
    DeltaState,
    LongPoll,
    PartBuffer,
    decode_notification,
    encode_body,
    expand_template,
    is_continued,
    next_batch_of,
    parse_control,
    parse_long_poll,
    push_preset,
    split_next_batch,
)

log = logging.getLogger(__name__)


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
    #: longest silence from the server gateway while the answer to a
    #: registration or control request is awaited (its homeserver poll has
    #: timeout 0: it is quick unless the link is not; a link busy with other
    #: answers is waited for, up to four times this in all)
    answer_timeout: float = 300.0


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
    #: the request body the observation answers (sliding sync; b"" for /sync)
    body: bytes = b""
    #: pushed answers by the since they answer, in chain order
    answers: OrderedDict[str, HttpResponse] = field(default_factory=OrderedDict)
    template: bytes | None = None
    delta: DeltaState | None = None
    observe: int | None = None
    #: a registration for a new request body under way offers to go on from
    #: the old observation (Push-Continue): the number of the last
    #: notification taken, the state to go on with if the server agrees, and
    #: the old request body (the new one is written against it)
    carry: tuple[int, DeltaState, bytes] | None = None
    #: bumped by every registration: events of an older observation are ignored
    generation: int = 0
    #: a since whose answer was too large to push: poll it plainly once
    fetch: str | None = None
    last_request: float = 0.0
    last_heard: float = 0.0
    timeout_ms: int = 30_000
    declined_until: float = 0.0
    waiting: int = 0
    #: notifications that came while the registration's first answer was
    #: still on its way to us (observe, payload): applied right after it
    early: list[tuple[int, bytes]] = field(default_factory=list)
    #: the pieces of a notification that comes in parts (format.split_parts)
    parts: PartBuffer = field(default_factory=PartBuffer)


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


@dataclass(frozen=True)
class FirstAnswer:
    """A registration's first answer: ``observing`` (keep the observation),
    the ``outcome`` of the payload it carried, and ``plain``: the client
    gets this answer itself (the server answered the poll plainly)."""

    observing: bool
    outcome: Outcome
    plain: bool = False


@dataclass(frozen=True)
class Later:
    """An event after the first answer: the ``outcome``; ``ended``: the
    observation is over (drop it); ``notification``: it was one."""

    outcome: Outcome
    ended: bool = False
    notification: bool = False


class SyncPushState:
    """Streams, their pushed answers and templates (sans-I/O): requests and
    CoAP payloads in, decisions out."""

    def __init__(self, profile: Profile, config: SyncPushClientConfig | None = None):
        self.profile = profile
        self.config = config or SyncPushClientConfig()
        self.streams: OrderedDict[tuple[str, str, tuple[str, ...]], Stream] = OrderedDict()
        #: notifications that did not decode (each ends its observation)
        self.undecodable = 0

    @property
    def preset(self) -> bytes:
        return push_preset(self.profile)

    def classify(self, method: str, target: str, access_token: str | None, body: bytes = b"") -> LongPoll | None:
        if access_token is None:
            return None
        return parse_long_poll(method, target, self.profile.routes, body)

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
        if poll.body != stream.body and stream.status is not Status.DECLINED:
            # another sliding-sync request on the connection: what was pushed
            # answers the old one; the observation follows the new one — unless
            # a later request took the connection over (the client gave this
            # one up, or asks twice at once): this one goes on as it is, never
            # registering over the later one (the two would take turns forever)
            return Plain() if poll.timeout_ms == 0 or poll is not stream.poll else Register(since)
        if since in answers:
            while next(iter(answers)) != since:  # what comes before was taken
                answers.popitem(last=False)
            response = answers[since]
            if response.status != 200 or since == stream.head:
                # said once: an error (asking again asks the homeserver), or an
                # answer whose next_batch is the since it answers (Synapse's idle
                # answer with new key counts): the client asks that since again,
                # and it waits for news, with the counts in the template now
                del answers[since]
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
        stream.carry = None
        if (stream.body != stream.poll.body and stream.status is Status.ACTIVE and stream.observe is not None
                and stream.delta is not None and not stream.parts.pending):
            # another request on a running observation whose every notification
            # we took: the new one may go on from its state (DeltaState.continued)
            stream.carry = (stream.observe, stream.delta.continued(stream.template, self.profile.cbor_table),
                            stream.body)
        stream.generation += 1
        stream.status = Status.REGISTERING
        stream.early = []
        stream.parts.clear()
        stream.head = since
        if stream.body != stream.poll.body:
            stream.template = None  # another request's idle answer (sliding sync): the server sends the new one
        stream.body = stream.poll.body
        stream.delta = DeltaState(self.preset, self.config.delta_keep, stream.poll.kind)
        stream.observe = None
        stream.last_heard = now
        # the client asks for a since we hold no answer to: what we hold was
        # taken, or belongs to a chain it left (the server replays its last
        # answers to a registration from a since it already answered)
        stream.answers.clear()
        return stream.generation

    def continuation(self, stream: Stream) -> tuple[int, bytes] | None:
        """What a registration under way offers to go on from (Push-Continue):
        the Observe number of the last notification taken and the old request
        body (``format.delta_payload``), or None."""
        return None if stream.carry is None else (stream.carry[0], stream.carry[2])

    def on_registered(self, stream: Stream, generation: int, observe: int, payload: bytes, now: float) -> Outcome:
        if generation != stream.generation:
            return Outcome.LOST
        stream.status = Status.ACTIVE
        stream.observe = observe
        early, stream.early = stream.early, []
        outcome = self._apply(stream, payload, now)
        for number, data in early:  # in the order they came; the Observe check sorts out the rest
            if outcome is not Outcome.OK:
                break
            outcome = self.on_notification(stream, generation, number, data, now)
        return outcome

    def on_notification(self, stream: Stream, generation: int, observe: int, payload: bytes, now: float) -> Outcome:
        if generation == stream.generation and stream.status is Status.REGISTERING:
            # the registration's answer is in, but not yet read (its coroutine
            # resumes later): on a fast link the next notification can come
            # first — dropping it broke the chain (a gap, a new registration)
            if len(stream.early) < self.config.max_answers:
                stream.early.append((observe, payload))
            return Outcome.OK
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
            whole = stream.parts.feed(payload)
            if whole is None:
                return Outcome.OK  # a part: the rest follows
            n = decode_notification(whole, stream.head, stream.delta, self.profile.cbor_table, kind=stream.poll.kind)
        except GatewayError as exc:
            log.warning("sync push: undecodable notification: %s", exc)
            self.undecodable += 1
            return self.on_lost(stream, stream.generation)
        if n is None:
            return Outcome.OK
        if n.template:
            stream.template = n.body
            return Outcome.OK
        return self._accept(stream, n.body, n.adopt)

    def _accept(self, stream: Stream, body: bytes, adopt: bool) -> Outcome:
        """A pushed (or folded) answer to the stream's head."""
        assert stream.head is not None
        kind = stream.poll.kind
        token = next_batch_of(body, kind)
        if token is None:
            return self.on_lost(stream, stream.generation)
        stream.answers[stream.head] = HttpResponse(200, body, JSON)
        stream.head = token
        if adopt:
            split = split_next_batch(body, kind)
            if split is not None:
                stream.template = split[0]
        if len(stream.answers) > self.config.max_answers:
            return Outcome.PAUSE
        return Outcome.OK

    # -- the device's own sends (push.echo)

    def echo_target(self, access_token: str) -> tuple[Stream, int] | None:
        """Before a send with ``access_token`` leaves: the observation its
        echo may be folded into (the one running with that token)."""
        mine = [s for s in self.streams.values()
                if s.access_token == access_token and s.status is Status.ACTIVE]
        return (mine[0], mine[0].generation) if len(mine) == 1 else None

    def on_echo(self, stream: Stream, generation: int, sent: Sent | None, data: bytes, now: float) -> Outcome:
        """The send's answer carried the fold ``data`` of its echo: the
        observation's next answer, rebuilt here.  Whatever cannot be read
        ends the observation (the server has moved on: registering again
        from the head makes it replay the answer itself)."""
        if stream.status is not Status.ACTIVE:
            return Outcome.OK  # it registers again anyway
        if (generation != stream.generation or sent is None or stream.observe is None or stream.delta is None
                or stream.head is None or stream.parts.pending):
            return self.on_lost(stream, stream.generation)
        observe = (stream.observe + 1) % OBSERVE_MODULUS
        if not takes_place(data, observe):
            # another send's answer came first (or this one is late): a gap, as
            # a missing notification is; the server's history replays the answers
            log.info("sync push: an echo fold out of order: registering again")
            return self.on_lost(stream, stream.generation)
        try:
            body = unfold(data, stream.head, sent, stream.delta.echo, observe)
        except GatewayError as exc:
            log.warning("sync push: unreadable echo fold: %s", exc)
            self.undecodable += 1
            return self.on_lost(stream, stream.generation)
        stream.observe = observe
        stream.last_heard = now
        stream.delta.remember(encode_body(body, self.profile.cbor_table)[1])
        stream.delta.echo.note(body)
        return self._accept(stream, body, adopt=False)

    def on_first_answer(self, stream: Stream, generation: int, reply: Message, now: float) -> FirstAnswer:
        """What a registration's first answer means (after the binding's
        resends): a running observation, an end ("too large", declined), or
        a plain answer the client gets as it is."""
        if reply.opt.observe is not None and reply.code.is_successful():
            if reply.opt.observe != FIRST_OBSERVE:
                # the registration's own answer (Observe 0, which starts the
                # delta chain) was lost and a later notification took its
                # place: decoding it against a fresh dictionary would read
                # garbage.  Register again at once; the history replays.
                self.on_lost(stream, generation)
                return FirstAnswer(observing=False, outcome=Outcome.LOST)
            carry, stream.carry = stream.carry, None
            if is_continued(reply):
                if carry is None or generation != stream.generation:
                    self.on_lost(stream, generation)  # a state we did not offer: start afresh
                    return FirstAnswer(observing=False, outcome=Outcome.LOST)
                stream.delta = carry[1]
            outcome = self.on_registered(stream, generation, reply.opt.observe, reply.payload, now)
            if outcome is Outcome.LOST:
                # a first answer we cannot read will not read better next time
                self.on_declined(stream, generation, now)
                return FirstAnswer(observing=False, outcome=Outcome.OK)
            return FirstAnswer(observing=True, outcome=outcome)
        control = parse_control(reply)
        if control is not None:
            if control[0] == END_FETCH:
                self.on_final(stream, generation, None)  # too large to push: poll it plainly
            elif control[0] == END_RESEND:
                self.on_lost(stream, generation)  # our delta body was not read: register again, whole
            else:
                self.on_declined(stream, generation, now)  # a reason we do not know
            return FirstAnswer(observing=False, outcome=Outcome.OK)
        if coap_to_response(reply, self.profile).status == 200:
            self.on_declined(stream, generation, now)  # the server answered it as a plain poll
        else:
            self.on_lost(stream, generation)  # an error: said once, asked again next time
        return FirstAnswer(observing=False, outcome=Outcome.OK, plain=True)

    def on_later(self, stream: Stream, generation: int, message: Message | None, now: float) -> Later:
        """A notification after the first answer, a final answer, or (None)
        the observation's end without one."""
        if generation != stream.generation:
            return Later(Outcome.OK)
        if message is None:  # an error, or the pipe ended: the observation is gone
            return Later(self.on_lost(stream, generation), ended=True)
        if message.opt.observe is not None and message.code.is_successful():
            return Later(self.on_notification(stream, generation, message.opt.observe, message.payload, now),
                         notification=True)
        # a final answer: the observation ends here
        if parse_control(message) is not None:
            self.on_final(stream, generation, None)  # END_FETCH: too large to push
        else:
            self.on_final(stream, generation, coap_to_response(message, self.profile))
        return Later(Outcome.OK, ended=True)

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
            stream.parts.clear()
        return Outcome.LOST

    def on_cancelled(self, stream: Stream) -> None:
        stream.generation += 1
        if stream.status in (Status.ACTIVE, Status.REGISTERING):
            stream.status = Status.IDLE

    def on_timeout(self, stream: Stream, since: str) -> HttpResponse | None:
        """The client's timeout passed with no push: the idle answer, if we can."""
        if stream.status is Status.ACTIVE and stream.head == since and stream.template is not None:
            return HttpResponse(200, expand_template(stream.template, since, stream.poll.kind), JSON)
        return None

    def idle_window(self, stream: Stream) -> float:
        return max(self.config.min_idle, self.config.idle_factor * stream.timeout_ms / 1000)

    def idle(self, now: float, streams: Iterable[Stream] | None = None) -> list[Stream]:
        """Observations whose client stopped polling, among ``streams`` (default: those listed)."""
        return [s for s in (self.streams.values() if streams is None else streams)
                if s.status is Status.ACTIVE and not s.waiting and now - s.last_request > self.idle_window(s)]

    def due_checks(self, now: float, streams: Iterable[Stream] | None = None) -> list[Stream]:
        """Observations silent for a check interval while their client polls,
        among ``streams`` (default: those listed)."""
        interval = self.config.check_interval
        if not interval:
            return []
        due = [s for s in (self.streams.values() if streams is None else streams)
               if s.status is Status.ACTIVE and now - s.last_heard >= interval
               and now - s.last_request <= self.idle_window(s)]
        for s in due:
            s.last_heard = now
        return due

    def active(self) -> list[Stream]:
        return [s for s in self.streams.values() if s.status in (Status.ACTIVE, Status.REGISTERING)]


__all__ = [
    "Action",
    "Answer",
    "FirstAnswer",
    "Later",
    "Outcome",
    "Plain",
    "Register",
    "Status",
    "Stream",
    "SyncPushClientConfig",
    "SyncPushState",
    "Wait",
]

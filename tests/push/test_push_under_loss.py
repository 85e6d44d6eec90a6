"""Sync push, both sans-I/O cores together over a bad link: the server's
chain and history on one side, the client's state on the other, with
notifications and their ACKs lost, duplicated, overtaking the registration's
answer, arriving before it is read, old observations' notifications
arriving late, the device's own sends whose echoes are folded into the
send's answer (lost, or overtaken by the next notification) and — sliding
sync — request bodies that change, so that a registration goes on from the
old observation's state (Push-Continue). These are the cases
`gateway.push_server` and `gateway.push_client` meet on a lossy radio link,
played out from a seed.

Whatever happens, the client application must get every homeserver answer
exactly once, in order and byte for byte, and no notification may ever be
undecodable (a loss shows as a gap and a new registration, never as a push
decoded against the wrong history or joined to another's pieces)."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator

import pytest
from aiocoap import Message
from aiocoap.numbers.codes import Code

from coap_gateway.codec.mapping import HttpResponse
from coap_gateway.push.client import Answer, Outcome, Plain, Register, SyncPushClientConfig, SyncPushState, Wait
from coap_gateway.push.echo import Sent, echo_event
from coap_gateway.push.format import SLIDING, SYNC, mark_continued, next_batch_of, parse_long_poll
from coap_gateway.push.server import Push, PushChain, ReplayHistory, Silent
from tests.helpers.devices import PROFILE
from tests.helpers.sync_bodies import PRESET, ROOM, TABLE, empty_body, event_body, message_body, token
from tests.helpers.sliding_bodies import ME, one, quiet, stream_token
from tests.helpers.sliding_bodies import PATH as SLIDING_PATH
from tests.helpers.sliding_bodies import ROOM as SLIDING_ROOM

ANSWERS = 24  # homeserver answers with an event, then idle ones
TRIES = 5  # a CON's transmissions (the first and 4 retransmissions)
ALPHABET = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789+/"


class World:
    """One device's /sync stream through both cores; ``rnd`` decides every loss."""

    kind = SYNC

    def __init__(self, seed: int, loss: float):
        self.rnd = random.Random(seed)
        self.loss = loss
        self.frame = self.rnd.randint(24, 160)
        # texts from short to longer than several frames (random, so deflate keeps them long)
        self.texts = ["".join(self.rnd.choice(ALPHABET) for _ in range(self.rnd.choice((5, 20, 80, 300, 900))))
                      for _ in range(ANSWERS + 1)]
        # the device's own sends: their echoes may fold into the send's answer
        self.sends = {i: self.sent(i) for i in range(1, ANSWERS) if self.rnd.random() < 0.3}
        self.folded: set[int] = set()  # sends whose answer the server gave (once: a retry is Synapse's cached one)
        self.state = SyncPushState(PROFILE, SyncPushClientConfig(max_answers=4))
        self.history = ReplayHistory()
        self.since = 0  # the application's place
        self.request = 0  # the application's request body (sliding sync: which one)
        self.taken: list[bytes] = []
        self.registrations = self.continued = 0
        self.chain: PushChain | None = None  # the server's running observation
        self.stale: list[tuple[int, Message]] = []  # notifications that may still be on their way

    # -- what differs between /sync and sliding sync

    def sent(self, i: int) -> Sent:
        return Sent(ROOM, "m.room.message", f"scope.{i}", {"body": self.texts[i][:40], "msgtype": "m.text"},
                    f"$event{i:040d}")

    def homeserver(self, i: int) -> bytes:
        """The answer to since ``i`` (for the current request body)."""
        if i in self.sends:
            return event_body(token(i), token(i + 1),
                              echo_event(self.sends[i], "@alice:localhost", 1795364412749 + 1000 * i, 30), (i, 0))
        return message_body(token(i), token(i + 1), i, self.texts[i]) if i < ANSWERS else empty_body(i)

    def since_token(self, i: int) -> str:
        return token(i)

    def index_of(self, since: str) -> int:
        return int(since.rpartition("/")[2][1:].partition("_")[0])

    def poll(self, since: str):
        return parse_long_poll("GET", f"/_matrix/client/v3/sync?since={since}&timeout=30000", PROFILE.routes)

    def change_request(self) -> None:
        """The application asks with another body now and then (sliding sync)."""

    # -- the server gateway's loop (gateway.push_server._run), one observation

    def serve(self, chain: PushChain, continued: bool) -> Iterator[Message | tuple[bytes, Sent]]:
        """The observation's messages in order: its first answer (Observe 0), then
        its notifications, each sent once the one before was acknowledged (the
        caller resumes the generator then) — or a send's answer with its echo's
        fold, (fold, sent), which nothing acknowledges."""
        key = b"stream %d" % self.request
        first, replaying = True, True
        while True:
            replay = self.history.get(key, chain.head) if replaying else None
            if replay is not None:
                step = chain.on_replay(replay)
            else:
                replaying = False
                i = self.index_of(chain.poll_from)
                if i >= ANSWERS and chain.template is not None:
                    return  # idle: the loop long-polls on, nothing to push
                response = HttpResponse(200, self.homeserver(i), "application/json")
                if i in self.sends and i not in self.folded:  # the device's send is under way
                    self.folded.add(i)
                    folded = chain.on_echo(response, self.sends[i])
                    if folded is not None:
                        self.history.put(key, folded.answered, folded.body)
                        yield folded.fold, self.sends[i]
                        continue
                step = chain.on_response(response)
            if isinstance(step, Silent):
                continue
            assert isinstance(step, Push), step
            if step.answered is not None and step.body is not None:
                self.history.put(key, step.answered, step.body)
            parts = step.parts or (step.payload,)
            if first and len(parts) > 1:
                parts = (b"",) + parts  # "registered": the parts follow as notifications
            for part in parts:
                message = Message(code=Code.CONTENT, payload=part, observe=chain.next_observe())
                if first and continued:
                    mark_continued(message)
                first = False
                yield message

    # -- the client gateway (gateway.push_client) and its application

    def take(self) -> object:
        """The application asks for its since until it waits; the last action."""
        while True:
            if self.rnd.random() < 0.1:
                self.change_request()
            poll = self.poll(self.since_token(self.since))
            stream, _ = self.state.stream(poll, "tok")
            action = self.state.on_request(stream, poll, 0)
            if isinstance(action, Plain):  # the plain long-poll, straight through
                action = Answer(HttpResponse(200, self.homeserver(self.since), "application/json"))
            if not isinstance(action, Answer):
                return action
            assert action.response.body == self.homeserver(self.since), f"a wrong answer to since {self.since}"
            self.taken.append(action.response.body)
            self.since = self.index_of(next_batch_of(action.response.body, self.kind))

    def register(self, since: str) -> None:
        stream, _ = self.state.stream(self.poll(since), "tok")
        generation = self.state.begin(stream, since, 0)
        self.registrations += 1
        # the server: the registration replaces the running observation, and
        # goes on from its state when the client offers the number it ended on
        offer = self.state.continuation(stream)
        carried = None if offer is None or self.chain is None else self.chain.continued(offer[0])
        self.continued += carried is not None
        self.chain = PushChain(since, TABLE, PRESET, self.frame, parts=True, kind=self.kind, delta=carried)
        messages = self.serve(self.chain, carried is not None)
        # the first answer is piggybacked: the registration is sent again until
        # it comes; a notification the server pushed meanwhile may overtake it
        reply = next(messages)
        assert isinstance(reply, Message)  # nothing folds before the first answer
        missed = 0
        while missed < TRIES and not self.arrives():
            missed += 1
        if missed == TRIES:
            self.end(stream, generation)  # LinkFailure: the registration never answered
            return
        pending = None
        if missed and self.rnd.random() < 0.5:
            pending = next(messages, None)
            if isinstance(pending, Message):
                reply, pending = pending, reply  # it overtook the first answer
        if pending is None and self.rnd.random() < 0.3:
            pending = next(messages, None)  # it comes before the first answer is read
            if isinstance(pending, Message):
                self.state.on_later(stream, generation, pending, 0)
                self.stale.append((generation, pending))
                pending = None
        first = self.state.on_first_answer(stream, generation, reply, 0)
        if not first.observing or first.outcome is not Outcome.OK:
            self.end(stream, generation, first.outcome)
            return
        late: list[tuple[tuple | None, Sent, bytes]] = []  # send answers the next notification overtook
        if isinstance(pending, tuple):
            late.append((self.state.echo_target("tok"), pending[1], pending[0]))
        for message in messages:
            if isinstance(message, tuple):  # a send's answer with its echo folded in
                fold, sent = message
                target = self.state.echo_target("tok")
                if self.rnd.random() < 0.3:
                    late.append((target, sent, fold))
                    continue
                outcome = self.answer_send(target, sent, fold)
            else:
                outcome = self.deliver(stream, generation, message)
                while late and outcome is Outcome.OK:
                    outcome = self.answer_send(*late.pop(0))
            if outcome is not Outcome.OK:
                self.end(stream, generation, outcome)
                return
            if self.stale and self.rnd.random() < 0.2:  # an old observation's copy, late
                old_generation, old = self.rnd.choice(self.stale)
                self.state.on_later(stream, old_generation, old, 0)
            if isinstance(message, Message):
                self.stale.append((generation, message))
            if self.rnd.random() < 0.5:
                action = self.take()
                if isinstance(action, Register):
                    return  # the client gateway registers again; the server replaces this observation

    def end(self, stream, generation: int, outcome: Outcome | None = None) -> None:
        """The observation is over at both ends: lost (the client's check, or
        its RST), or cancelled (too many answers held)."""
        if outcome is Outcome.PAUSE:
            self.state.on_cancelled(stream)
        else:
            self.state.on_lost(stream, generation)
        self.chain = None

    def arrives(self) -> bool:
        return self.rnd.random() >= self.loss

    def answer_send(self, target: tuple | None, sent: Sent, fold: bytes) -> Outcome:
        """The send's answer (piggybacked: the send goes again until it comes)."""
        if target is None or not any(self.arrives() for _ in range(TRIES)):
            return Outcome.OK  # no fold to take, or the send failed: the next notification shows the gap
        return self.state.on_echo(target[0], target[1], sent, fold, 0)

    def deliver(self, stream, generation: int, message: Message) -> Outcome | None:
        """One CON notification and its retransmissions (each copy after the
        first that arrives is a duplicate: its ACK was lost): the outcome,
        or None when no ACK got through and the server ended the observation."""
        outcome = None
        for _ in range(TRIES):
            if not self.arrives():
                continue
            later = self.state.on_later(stream, generation, message, 0)
            outcome = later.outcome if outcome is None else outcome
            if later.ended or later.outcome is not Outcome.OK:
                return later.outcome
            if self.arrives():
                return outcome  # acknowledged: the server moves on
        return None  # every exchange lost (or only its ACKs): the server's CON timed out

    def run(self, steps: int = 4000) -> None:
        for _ in range(steps):
            if self.since >= ANSWERS:
                return
            action = self.take()
            if isinstance(action, Register):
                self.register(action.since)
            else:
                assert isinstance(action, Wait)
                # an observation at the head with nothing to push: it idles; the
                # client's check interval finds a lost one
                stream = next(iter(self.state.streams.values()))
                self.end(stream, stream.generation)
        raise AssertionError(f"no progress: since {self.since} after {steps} steps")


class SlidingWorld(World):
    """The same over sliding sync (MSC4186): the answers are Synapse's layout,
    and the application's request body changes now and then (a list grown)."""

    kind = SLIDING

    def sent(self, i: int) -> Sent:
        return Sent(SLIDING_ROOM, "m.room.message", f"t{i + 1}", {"body": self.texts[i][:40], "msgtype": "m.text"},
                    f"$EVENT{i + 1:022d}ABCDEFGHIJKLMNOQ")

    def homeserver(self, i: int) -> bytes:
        if i in self.sends:
            body = one(i + 1, sender=ME, txn=f"t{i + 1}", text=self.texts[i][:40])
        elif i < ANSWERS:
            body = one(i + 1, text=self.texts[i])
        else:
            body = quiet(i)
        return body.replace(b'"range":[0,19]', b'"range":[0,%d]' % self.last_index())

    def last_index(self) -> int:
        return 19 + 20 * self.request

    def since_token(self, i: int) -> str:
        return "1/" + stream_token(i)

    def poll(self, since: str):
        body = json.dumps({"lists": {"all": {"ranges": [[0, self.last_index()]], "timeline_limit": 1}},
                           "extensions": {"to_device": {"enabled": True}}}).encode()
        return parse_long_poll("POST", f"{SLIDING_PATH}?pos={since.replace('/', '%2F')}&timeout=30000",
                               PROFILE.routes, body)

    def change_request(self) -> None:
        self.request += 1


@pytest.mark.parametrize("loss", [0.0, 0.1, 0.3])
@pytest.mark.parametrize("seed", range(30))
@pytest.mark.parametrize("world", [World, SlidingWorld], ids=["sync", "sliding"])
def test_every_answer_exactly_once_and_nothing_undecodable(world, seed, loss):
    w = world(seed, loss)
    w.run()
    # each answer was Synapse's own to its since and request body when taken (World.take)
    assert [w.index_of(next_batch_of(body, w.kind)) for body in w.taken] == list(range(1, ANSWERS + 1))
    assert w.state.undecodable == 0


def test_the_worlds_cover_parts_folds_continuations_and_the_c6_boundary():
    """The seeds above push answers in parts, among them (since the fix) a
    last piece that would have begun with C6; fold echoes; and (sliding
    sync) go on from a replaced observation's state."""
    parted = c6 = folded = continued = 0
    for seed in range(30):
        world = World(seed, 0.0)
        chain = PushChain(token(0), TABLE, PRESET, world.frame, parts=True)
        for i in range(ANSWERS):
            step = chain.on_response(HttpResponse(200, world.homeserver(i), "application/json"))
            assert isinstance(step, Push)
            if len(step.parts) > 1:
                parted += 1
                piece = world.frame - 1
                cut = -(-(len(step.payload) - world.frame) // piece) * piece
                c6 += step.payload[cut] == 0xC6
        world.run()
        folded += len(world.folded)
        sliding = SlidingWorld(seed, 0.1)
        sliding.run()
        continued += sliding.continued
    assert parted >= 200 and c6 >= 1
    assert folded >= 30 and continued >= 10

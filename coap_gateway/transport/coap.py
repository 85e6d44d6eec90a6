"""aiocoap over our own links: the thin shell between CoAP and datagrams.

aiocoap has no public hook for a custom transport (its ``transports=`` takes
built-in names only), so this module wires a TokenManager, a MessageManager
and a MessageInterface by hand, as aiocoap's own private
``_append_tokenmanaged_messagemanaged_transport`` does.  aiocoap is pinned
(pyproject.toml) because these are its internals.

What changes from stock aiocoap, and why:

* ``LinkAwareMessageManager``: the ACK timeout comes from the link
  (``timing``) instead of a fixed 2 s, RTT samples follow Karn's rule,
  and retransmissions are counted.  Incoming messages carry a tuning whose
  EXCHANGE_LIFETIME covers the link's long timeouts, so the deduplication
  cache (a retransmitted request never runs twice) outlives every
  retransmission, and whose EMPTY_ACK_DELAY sends an empty ACK only when a
  piggybacked answer would come too late.
* ``ShortTokenManager``: 1-byte tokens, cycling, skipping tokens in use.
* ``LinkMessageInterface``: encodes messages, passes them through a
  ``FrameCodec`` (plaintext, or the Noise secure frames) onto a
  ``DatagramLink`` (UDP, KISS serial, emulated), and guards the receive path:
  a malformed datagram is counted and dropped, never raised.  Frames and
  bytes are also counted per peer (bounded) for the metrics endpoint.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

from aiocoap import Context, Message, error, interfaces
from aiocoap.messagemanager import MessageManager
from aiocoap.numbers.codes import EMPTY, GET, Code
from aiocoap.numbers.constants import Reliable, TransportTuning
from aiocoap.numbers.types import ACK, CON, NON
from aiocoap.pipe import Pipe
from aiocoap.tokenmanager import TokenManager

from ..errors import GatewayError
from .interfaces import CodecHost, DatagramLink, FrameCodec
from .timing import LinkBudget, RetransmissionTimer

log = logging.getLogger(__name__)

SCHEME = "coap"
#: remotes whose RTT estimate is kept; an evicted one starts from the link budget again
MAX_REMOTES = 4096
#: separate responses remembered for deduplication (the oldest go first)
MAX_SEEN_RESPONSES = 4096
#: received CONs remembered per remote for deduplication (aiocoap keeps each
#: for EXCHANGE_LIFETIME, so a peer sending fast could make it any size); a
#: peer retransmits a CON only until it is answered, and no client keeps
#: this many requests unanswered at once
MAX_DEDUP_PER_REMOTE = 64
#: how often expired deduplication entries of silent remotes are forgotten
DEDUP_SWEEP_INTERVAL = 30.0
#: a client's uploads go in blocks that occupy its link at most this long, so
#: that an interactive request sent meanwhile waits for one block at most
#: (bulk never holds up a message: at 100 bit/s, 64-B blocks instead of 1 KiB)
BULK_SLICE = 10.0
#: bytes a block's frame adds to its payload (CoAP header, Block1, Request-Tag,
#: Route, Seq and tag of the secure layer), for sizing blocks by time
BLOCK_FRAME_OVERHEAD = 40
#: a block-wise request answered 4.08 (the server lost its assembly) is sent
#: again from its first block at most this often
BLOCKWISE_RESTARTS = 2
#: a request waits for its answer while the peer is heard from, but at most
#: this many times its silence timeout in all (a peer busy with others' traffic
#: that lost this request's answer)
SILENCE_CAP = 4
#: a timer may fire this much before its time (the loop's clock resolution)
CLOCK_SLACK = 0.001
#: CON exchanges in flight per peer.  aiocoap has NSTART = 1 (RFC 7252
#: §4.7's default): a second request waits for the first's answer, so one
#: lost answer on a slow lossy link held a message behind a sync
#: registration for a whole retransmission timeout (100bps-lossy: a send
#: waited 35 s in the backlog, then another 32 s).  §4.7 allows more where
#: congestion is controlled: here every timer counts what is ahead of its
#: frame on the link (``RetransmissionTimer.queued_bytes``).
NSTART = 4


class _Exchanges(dict):
    """aiocoap's active exchanges, (remote, MID) → …, counted per remote as
    they come and go (aiocoap only sets and pops them), so NSTART is checked
    without scanning every exchange of every peer on each send."""

    def __init__(self) -> None:
        super().__init__()
        self.per_remote: Counter[Hashable] = Counter()

    def __setitem__(self, key: tuple[Hashable, int], value: Any) -> None:
        if key not in self:
            self.per_remote[key[0]] += 1
        super().__setitem__(key, value)

    def pop(self, key: tuple[Hashable, int], *default: Any) -> Any:
        if key in self:
            left = self.per_remote[key[0]] - 1
            if left:
                self.per_remote[key[0]] = left
            else:
                del self.per_remote[key[0]]
        return super().pop(key, *default)


class _Backlogs(dict):
    """aiocoap's per-peer backlogs, asked ``remote in backlogs`` to decide
    whether a new CON must wait: here, whether NSTART exchanges are in
    flight or others already wait (FIFO).  A key exists while an exchange
    with the peer is active, as in aiocoap."""

    def __init__(self, active: Callable[[Hashable], int]) -> None:
        super().__init__()
        self._active = active

    def __contains__(self, remote: object) -> bool:
        queue = self.get(remote)
        if queue is None:
            return False
        return bool(queue) or self._active(remote) >= NSTART


class PlainCodec:
    """Plaintext mode: the datagram *is* the CoAP message (RFC 7252)."""

    frame_overhead = 0

    def bind(self, host: CodecHost) -> None:
        pass

    def outgoing(self, key: Hashable, message: bytes) -> list[tuple[Hashable, bytes]]:
        return [(key, message)]

    def incoming(self, peer: Hashable, datagram: bytes) -> list[tuple[Hashable, bytes]]:
        return [(peer, datagram)]

    def failure(self) -> Exception | None:
        return None

    def setup_bytes(self, key: Hashable) -> int:
        return 0


@dataclass
class TransportCounters:
    frames_out: int = 0
    bytes_out: int = 0
    frames_in: int = 0
    bytes_in: int = 0
    retransmissions: int = 0
    timeouts: int = 0
    dropped_malformed: int = 0
    dropped_by_codec: int = 0
    rtt_samples: int = 0
    #: responses dropped as duplicates (an ACK for an exchange that is over,
    #: a CON/NON response whose message ID was already seen)
    duplicate_responses: int = 0
    #: block-wise requests started over after a 4.08 Request Entity Incomplete
    blockwise_restarts: int = 0


#: peers counted one by one; any further peer is summed under OTHER_PEERS, so
#: a stream of new source addresses or sessions cannot grow the table unbounded
MAX_COUNTED_PEERS = 1024
OTHER_PEERS = "other"


@dataclass
class PeerCounters:
    """Datagrams to and from one peer: its CoAP key when the codec names one
    (the session in secure mode), else its link address (handshakes, drops)."""

    frames_out: int = 0
    bytes_out: int = 0
    frames_in: int = 0
    bytes_in: int = 0
    #: loop time of the last datagram from this peer (a request waits while it is heard)
    heard_at: float = 0.0


class LinkAddress(interfaces.EndpointAddress):
    """A CoAP peer behind one LinkMessageInterface, identified by ``key``."""

    scheme = SCHEME
    is_multicast = False
    is_multicast_locally = False

    def __init__(self, interface: "LinkMessageInterface", key: Hashable):
        self.interface = interface
        self.key = key
        # aiocoap hashes a remote ~20 times per request (exchanges, tokens, dedup)
        self._hash = hash((id(interface), key))

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other: object) -> bool:
        return isinstance(other, LinkAddress) and other.interface is self.interface and other.key == self.key

    def __repr__(self) -> str:
        return f"<LinkAddress {self.interface.link.name} {self.key!r}>"

    @property
    def hostinfo(self) -> str:
        key = self.key
        if isinstance(key, tuple) and len(key) >= 2:
            host = str(key[0])
            return f"[{host}]:{key[1]}" if ":" in host else f"{host}:{key[1]}"
        return str(key).replace("/", "_")

    @property
    def hostinfo_local(self) -> str:
        return self.interface.link.name

    @property
    def uri_base(self) -> str:
        return f"{SCHEME}://{self.hostinfo}"

    @property
    def uri_base_local(self) -> str:
        return f"{SCHEME}://{self.hostinfo_local}"

    @property
    def blockwise_key(self) -> Hashable:
        return (id(self.interface), self.key)

    #: a smaller block size for one transfer (aiocoap sets it on the remote of
    #: each next block, carrying a request's own limit along)
    _block_exp_cap: int | None = None

    @property
    def maximum_block_size_exp(self) -> int:
        # blockwise only when a message truly does not fit a link frame
        budget = self.interface.link.budget
        exp = 6
        while exp > 0 and (16 << exp) + 64 > budget.max_frame:
            exp -= 1
        return exp if self._block_exp_cap is None else min(exp, self._block_exp_cap)

    @maximum_block_size_exp.setter
    def maximum_block_size_exp(self, exp: int) -> None:
        self._block_exp_cap = exp

    @property
    def maximum_payload_size(self) -> int:
        return max(16, self.interface.link.budget.max_frame - 64)


class LinkTuning(TransportTuning):
    """aiocoap tuning for messages of one peer, derived from its timer."""

    def __init__(self, timer: RetransmissionTimer):
        self._timer = timer

    @property
    def ACK_TIMEOUT(self) -> float:  # type: ignore[override]
        # used by aiocoap for EXCHANGE_LIFETIME and friends: take the longest
        # first timeout a full frame could need
        return self._timer.ack_timeout(self._timer.budget.max_frame)

    @property
    def MAX_LATENCY(self) -> float:  # type: ignore[override]
        return max(100.0, 2 * self._timer.budget.latency + self._timer.budget.serialisation(self._timer.budget.max_frame))

    @property
    def EMPTY_ACK_DELAY(self) -> float:  # type: ignore[override]
        return self._timer.empty_ack_delay()

    @property
    def MAX_RETRANSMIT(self) -> int:  # type: ignore[override]
        return self._timer.budget.max_retransmit


@dataclass
class _Exchange:
    sent_at: float
    size: int
    queued: int
    #: the answer budgeted for (None: the link's max_response) and what kind of request it is
    answer: int | None = None
    kind: Hashable = None
    #: its round trip says something about the link (Karn: not once
    #: retransmitted; not when it waited for a handshake first)
    sampled: bool = True


#: an empty ACK: what a CON response (a notification, a separate response) is answered with
EMPTY_ACK_SIZE = 4
#: options that do not change what kind of answer a request gets (block-wise transfer)
_TRANSFER_OPTIONS = frozenset({23, 27, 28, 60})
#: answer sizes remembered per kind of request
ANSWER_SAMPLES = 4
MAX_REQUEST_KINDS = 256


def request_kind(message: Message) -> Hashable:
    """What kind of answer a request will get, as far as the message layer
    can tell: its code, which options it has, and the first byte of each
    Uri-Path segment and private option (a route code, a handle, an
    operation).  Block-wise options are left out: the next block's answer is
    the same size as this one's."""
    parts = []
    for option in message.opt.option_list():
        number = int(option.number)
        if number in _TRANSFER_OPTIONS:
            continue
        parts.append((number, option.encode()[:1] if number == 11 or number >= 65000 else b""))
    return int(message.code), tuple(parts)


class AnswerSizes:
    """The largest of the last few answers to each kind of request: what a
    request waits for, instead of a full frame.  A wrong guess costs a
    retransmission whose answer comes from the peer's deduplication cache;
    a 1152-B guess for every GET cost a lost registration two minutes at
    100 bit/s (100bps-lossy, seed 3)."""

    def __init__(self) -> None:
        self._sizes: OrderedDict[Hashable, deque[int]] = OrderedDict()

    def expected(self, kind: Hashable) -> int | None:
        sizes = self._sizes.get(kind)
        return max(sizes) if sizes else None

    def record(self, kind: Hashable, size: int) -> None:
        sizes = self._sizes.get(kind)
        if sizes is None:
            sizes = self._sizes[kind] = deque(maxlen=ANSWER_SAMPLES)
            while len(self._sizes) > MAX_REQUEST_KINDS:
                self._sizes.popitem(last=False)
        else:
            self._sizes.move_to_end(kind)
        sizes.append(size)


class LinkAwareMessageManager(MessageManager):
    """aiocoap's MessageManager with timeouts that follow the link."""

    def __init__(self, token_manager: TokenManager, budget: LinkBudget, counters: TransportCounters):
        super().__init__(token_manager)
        self._active_exchanges = _Exchanges()
        self._backlogs = _Backlogs(self._active_with)
        self.budget = budget
        self.counters = counters
        # per remote, least recently used first: plaintext remotes are
        # addresses that come and go, so both maps are bounded
        self.timers: OrderedDict[Hashable, RetransmissionTimer] = OrderedDict()
        self._tunings: OrderedDict[Hashable, LinkTuning] = OrderedDict()
        self._exchanges: dict[tuple[Hashable, int], _Exchange] = {}
        #: (remote, message ID) of separate responses received recently
        self._seen_responses: OrderedDict[tuple[Hashable, int], None] = OrderedDict()
        #: per remote, (expiry, key) of the deduplication keys it has in
        #: aiocoap's _recent_messages, oldest first
        self._dedup_keys: dict[Hashable, deque[tuple[float, tuple[Hashable, int]]]] = {}
        self._dedup_sweep: asyncio.TimerHandle | None = None
        #: a peer's own link budget (None: the link's), for a server whose
        #: peers sit behind paths of different speeds (see LinkEndpoint)
        self.budget_for: Callable[[Hashable], LinkBudget | None] | None = None
        #: size of the message being dispatched (aiocoap cannot re-encode
        #: incoming messages; dispatch is synchronous, so this is exact)
        self.incoming_size = 0
        #: called with (remote, message ID) when a CON we sent is acknowledged
        #: (sync push waits for it before polling the homeserver further)
        self.on_acknowledged: list[Callable[[Hashable, int], None]] = []
        self.answer_sizes = AnswerSizes()
        #: the longest exchange lifetime of a peer's own path (set_peer_budgets)
        self._longest_peer_lifetime = 0.0

    def _deduplicate_message(self, message: Message) -> bool:
        # aiocoap's, bounded per remote (MAX_DEDUP_PER_REMOTE) and without a
        # timer per message: aiocoap's call_later held a handle, its key and the
        # remote for EXCHANGE_LIFETIME after every CON — ~350 B per block of an
        # upload, 90 KiB per device for a 256-block one (bench/hostile.py)
        key = (message.remote, message.mid)
        if key in self._recent_messages:
            return bool(super()._deduplicate_message(message))
        self._recent_messages[key] = None
        now = self.loop.time()
        keys = self._dedup_keys.setdefault(message.remote, deque())
        keys.append((now + message.transport_tuning.EXCHANGE_LIFETIME, key))
        self._expire_duplicates(message.remote, keys, now)
        if self._dedup_sweep is None:
            self._dedup_sweep = self.loop.call_later(DEDUP_SWEEP_INTERVAL, self._sweep_duplicates)
        return False

    def _expire_duplicates(self, remote: Hashable, keys: deque[tuple[float, tuple[Hashable, int]]],
                           now: float) -> None:
        while keys and (len(keys) > MAX_DEDUP_PER_REMOTE or keys[0][0] <= now):
            self._recent_messages.pop(keys.popleft()[1], None)
        if not keys:
            del self._dedup_keys[remote]

    def _sweep_duplicates(self) -> None:
        """Forget what a remote sent more than its exchange lifetime ago (one
        timer for all remotes, while any are remembered)."""
        self._dedup_sweep = None
        now = self.loop.time()
        for remote, keys in list(self._dedup_keys.items()):
            self._expire_duplicates(remote, keys, now)
        if self._dedup_keys:
            self._dedup_sweep = self.loop.call_later(DEDUP_SWEEP_INTERVAL, self._sweep_duplicates)

    def _store_response_for_duplicates(self, message: Message) -> None:
        # a copy without the request the response refers to (a whole block's
        # payload, for block-wise uploads), which a repeat does not need;
        # shallow — aiocoap's Message.copy deep-copies the options, 40 µs a
        # request, and a response sent is not changed any more
        key = (message.remote, message.mid)
        if key in self._recent_messages:
            stored = Message.__new__(Message)
            stored.__dict__.update(message.__dict__)
            stored.request = None
            self._recent_messages[key] = stored

    def timer_for(self, remote: Hashable) -> RetransmissionTimer:
        timer = self.timers.get(remote)
        if timer is None:
            budget = self.budget_for(remote) if self.budget_for is not None else None
            timer = self.timers[remote] = RetransmissionTimer(budget or self.budget)
            if budget is not None:
                self._longest_peer_lifetime = max(self._longest_peer_lifetime, LinkTuning(timer).EXCHANGE_LIFETIME)
            if len(self.timers) > MAX_REMOTES:
                self.timers.popitem(last=False)
        else:
            self.timers.move_to_end(remote)
        return timer

    def tuning_for(self, remote: Hashable) -> LinkTuning:
        tuning = self._tunings.get(remote)
        if tuning is None:
            tuning = self._tunings[remote] = LinkTuning(self.timer_for(remote))
            if len(self._tunings) > MAX_REMOTES:
                self._tunings.popitem(last=False)
        else:
            self._tunings.move_to_end(remote)
        return tuning

    def duplicate_lifetime(self) -> float:
        """How long a peer may still be retransmitting a message it sent: the
        exchange lifetime (RFC 7252 §4.8.2) at this link's timers, or of the
        slowest peer path given.  The secure layer passes a byte-identical
        frame on as a duplicate that long (CoAP answers it from its caches)."""
        return max(self._longest_peer_lifetime, LinkTuning(RetransmissionTimer(self.budget)).EXCHANGE_LIFETIME)

    def remembers(self, remote: Hashable, message_id: int) -> bool:
        """Whether a CON or NON ``message_id`` from ``remote`` is still deduplicated."""
        return (remote, message_id) in self._recent_messages

    def forget_remote(self, remote: Hashable) -> None:
        self.timers.pop(remote, None)
        self._tunings.pop(remote, None)

    # -- aiocoap hooks

    def _active_with(self, remote: Hashable) -> int:
        active = self._active_exchanges
        return active.per_remote[remote] if isinstance(active, _Exchanges) else 0

    def _continue_backlog(self, remote: Hashable) -> None:
        # aiocoap's sends the next only when no exchange is left (NSTART = 1)
        queue = dict.get(self._backlogs, remote)
        if queue is None:
            return
        while queue and self._active_with(remote) < NSTART:
            message, monitor = queue.pop(0)
            self._send_initially(message, monitor)  # a NON in the queue goes without an exchange
        if not queue and not self._active_with(remote):
            del self._backlogs[remote]

    def _queued(self, message: Message) -> int:
        """Bytes ahead of ``message`` on the link: what the link reports, or
        our own recent frames still serialising (a link that cannot tell)."""
        link_says = message.remote.interface.link.queued_bytes(message.remote.key)
        return max(link_says, self.timer_for(message.remote).queued_bytes(self.loop.time()))

    def _add_exchange(self, message: Message, messageerror_monitor: Callable[[], None]) -> None:
        key = (message.remote, message.mid)
        self._backlogs.setdefault(message.remote, [])
        # what the link carries: the secure layer's sequence number and tag
        # too (2.6 s a round trip at 100 bit/s, which the measured round
        # trip otherwise took for latency)
        size = len(message.encode()) + message.remote.interface.codec.frame_overhead
        queued = self._queued(message)
        # our own CON: retransmit as often as this link needs
        tuning = message.transport_tuning = self.tuning_for(message.remote)
        kind = None
        if message.code.is_response():
            answer: int | None = EMPTY_ACK_SIZE  # a notification or separate response
        else:
            kind = request_kind(message)
            answer = self.answer_sizes.expected(kind)
            if answer is None and message.code == GET:
                # a GET not seen before fetches a representation, which may fill
                # a frame (a sync, a page of history); a 256-B guess would retransmit it
                answer = self.budget.max_frame
        setup = self._setup_time(message)
        base = self.timer_for(message.remote).ack_timeout(size, queued, answer) + setup
        timeout = random.uniform(base, base * tuning.ACK_RANDOM_FACTOR)
        # recorded before the first retransmission is scheduled: it reads it
        self._exchanges[key] = _Exchange(self.loop.time(), size, queued, answer, kind, sampled=not setup)
        handle = self._schedule_retransmit(message, timeout, 0)
        self._active_exchanges[key] = (messageerror_monitor, handle)

    def _schedule_retransmit(self, message: Message, timeout: float, retransmission_counter: int):
        # aiocoap doubles the whole timeout; ours backs off the residual only
        exchange = self._exchanges.get((message.remote, message.mid))
        if retransmission_counter > 0 and exchange is not None:
            # the retransmitted frame itself is already in the link's queue
            queued = max(0, self._queued(message) - exchange.size)
            base = self.timer_for(message.remote).retransmit_timeout(exchange.size, queued, exchange.answer,
                                                                     retransmission_counter) + self._setup_time(message)
            timeout = random.uniform(base, base * message.transport_tuning.ACK_RANDOM_FACTOR)
        return super()._schedule_retransmit(message, timeout, retransmission_counter)

    def _setup_time(self, message: Message) -> float:
        """What a handshake still to make adds before ``message`` can cross:
        its datagrams and one round trip.  Without it the first request's
        timer ran while IK1 and IK2 crossed (12 s at 100 bit/s) and fired
        before its answer could arrive; and its round trip, taken as a
        sample, made the next timeout 150 s."""
        setup = message.remote.interface.codec.setup_bytes(message.remote.key)
        if not setup:
            return 0.0
        timer = self.timer_for(message.remote)
        return timer.budget.serialisation(setup) + timer.residual()

    def _retransmit(self, message: Message, timeout: float, retransmission_counter: int) -> None:
        key = (message.remote, message.mid)
        exchange = self._exchanges.get(key)
        if exchange is not None:
            exchange.sampled = False
        if retransmission_counter < message.transport_tuning.MAX_RETRANSMIT:
            self.counters.retransmissions += 1
            super()._retransmit(message, timeout, retransmission_counter)
            return
        self.counters.timeouts += 1
        self._exchanges.pop(key, None)
        if message.code.is_response():
            self._response_timed_out(message)
            return
        # a request: aiocoap takes the peer for unreachable and fails every
        # request to it, queued ones too; answers queued for it still go
        answers = [entry for entry in dict.get(self._backlogs, message.remote) or [] if entry[0].code.is_response()]
        super()._retransmit(message, timeout, retransmission_counter)
        if answers:
            self._backlogs[message.remote] = answers
            self._continue_backlog(message.remote)

    def _response_timed_out(self, message: Message) -> None:
        """A CON response (a separate response, a notification) was never
        acknowledged: that one exchange ends, its request's interest with it,
        and what waits behind it goes on.  aiocoap (NSTART = 1: the exchange
        was all there was with the peer) drops the peer's whole backlog here
        without a word; with NSTART = 4 that silently lost the answers queued
        behind it, and their requests, acknowledged long before, waited for
        them for ever (a stall at 100 bit/s: the device's ACKs waited behind
        its own uploads while the server's retransmissions ran out)."""
        monitor, handle = self._active_exchanges.pop((message.remote, message.mid))
        handle.cancel()
        log.info("no ACK for %s to %r after the last retransmission", message.code, message.remote)
        monitor()
        self._continue_backlog(message.remote)

    def _remove_exchange(self, message: Message) -> None:
        key = (message.remote, message.mid)
        exchange = self._exchanges.pop(key, None)
        if exchange is not None and exchange.kind is not None and message.mtype == ACK and message.code != EMPTY:
            self.answer_sizes.record(exchange.kind, self.incoming_size)  # a piggybacked answer
        if exchange is not None and exchange.sampled and key in self._active_exchanges:
            rtt = self.loop.time() - exchange.sent_at
            self.timer_for(message.remote).on_sample(rtt, exchange.size, self.incoming_size, exchange.queued)
            self.counters.rtt_samples += 1
        acknowledged = message.mtype == ACK and key in self._active_exchanges
        super()._remove_exchange(message)
        if acknowledged:
            for listener in self.on_acknowledged:
                listener(message.remote, message.mid)

    def dispatch_message(self, message: Message) -> None:
        # aiocoap does not deduplicate responses (RFC 7252 §4.5 lets it, as
        # responses are idempotent); but a duplicated response could reach a
        # newer request that reuses its token — the empty token is reused at
        # once (ShortTokenManager) — so the message layer drops duplicates.
        if message.code.is_response():
            key = (message.remote, message.mid)
            if message.mtype == ACK and self._active_exchanges is not None and key not in self._active_exchanges:
                self.counters.duplicate_responses += 1
                return
            if message.mtype in (CON, NON):
                if key in self._seen_responses:
                    self.counters.duplicate_responses += 1
                    if message.mtype == CON:
                        self._send_empty_ack(message.remote, message.mid, reason="duplicate response")
                    return
                self._seen_responses[key] = None
                self.loop.call_later(self.tuning_for(message.remote).EXCHANGE_LIFETIME,
                                     self._seen_responses.pop, key, None)
                while len(self._seen_responses) > MAX_SEEN_RESPONSES:
                    self._seen_responses.popitem(last=False)
        super().dispatch_message(message)

    def dispatch_error(self, error: Exception, remote: Hashable) -> None:
        for key in [k for k in self._exchanges if k[0] == remote]:
            del self._exchanges[key]
        super().dispatch_error(error, remote)

    async def shutdown(self) -> None:
        self._exchanges.clear()
        if self._dedup_sweep is not None:
            self._dedup_sweep.cancel()
            self._dedup_sweep = None
        await super().shutdown()


class ShortTokenManager(TokenManager):
    """Empty tokens where that is safe, else 1-byte tokens (cycling, skipping
    those in use).

    The empty token (RFC 7252 §5.3.1) saves a byte in the request and one in
    its response.  It goes to a plain request (not an observation, which
    keeps its token for its life) when no other request to the same peer
    holds it, and only once the previous request that had it ended with a
    response: a request that timed out or was cancelled may still be answered
    late, and that answer must not reach a newer request, so the empty token
    then rests until the exchange lifetime has passed.
    """

    def __init__(self, context: Context, clock: Callable[[], float] | None = None,
                 rest: Callable[[], float] | None = None):
        super().__init__(context)
        self._next = random.randrange(256)
        self._pending: Message | None = None
        self._clock = clock
        self._rest = rest
        #: peer -> time until which the empty token rests
        self._resting: OrderedDict[Hashable, float] = OrderedDict()

    def request(self, request):
        msg = request.request
        if self._clock is not None and self._rest is not None:
            # watch before handing the request on: a request that fails at
            # once (shutdown) ends its pipe, which then takes no watcher
            remote_key = msg.remote
            answered = False

            def watch(event) -> bool:
                nonlocal answered
                if msg.token != b"":
                    return False
                if event.message is not None and event.is_last:
                    answered = True
                elif event.message is None and event.exception is None and not answered:
                    # the exchange ended without its final response
                    self._resting[remote_key] = self._clock() + self._rest()
                    while len(self._resting) > MAX_REMOTES:
                        self._resting.popitem(last=False)
                return True

            request.on_event(watch, is_interest=False)
        self._pending = msg
        try:
            super().request(request)
        finally:
            self._pending = None

    def next_token(self) -> bytes:
        in_use = {(token, remote) for token, remote in (self.outgoing_requests or {})}
        msg = self._pending
        if msg is not None and msg.opt.observe is None and self._clock is not None:
            free = (b"", msg.remote) not in in_use
            resting = self._resting.get(msg.remote)
            if resting is not None and resting <= self._clock():
                del self._resting[msg.remote]
                resting = None
            if free and resting is None:
                return b""
        tokens = {token for token, _remote in in_use}
        for _ in range(256):
            token = bytes([self._next])
            self._next = (self._next + 1) % 256
            if token not in tokens:
                return token
        return super().next_token()  # 256 requests in flight: fall back to longer tokens


class LinkMessageInterface(interfaces.MessageInterface):
    """aiocoap MessageInterface over a DatagramLink through a FrameCodec."""

    def __init__(self, mman: LinkAwareMessageManager, link: DatagramLink, codec: FrameCodec, counters: TransportCounters):
        self.mman = mman
        self.link = link
        self.codec = codec
        self.counters = counters
        #: per-peer counts, at most MAX_COUNTED_PEERS + 1 entries (OTHER_PEERS)
        self.peers: dict[Hashable, PeerCounters] = {}
        link.set_receiver(self._datagram_received)
        codec.bind(self)

    def remote(self, key: Hashable) -> LinkAddress:
        """The aiocoap remote for a peer of this link (address or session)."""
        return LinkAddress(self, key)

    def peer_counters(self, key: Hashable) -> PeerCounters:
        counts = self.peers.get(key)
        if counts is None:
            if len(self.peers) >= MAX_COUNTED_PEERS:
                key = OTHER_PEERS
            counts = self.peers.setdefault(key, PeerCounters())
        return counts

    # -- MessageInterface

    def send(self, message: Message) -> None:
        data = message.encode()
        try:
            datagrams = self.codec.outgoing(message.remote.key, data)
        except Exception as exc:  # a codec failure loses this frame, not the endpoint
            log.warning("cannot send to %r: %s", message.remote, exc)
            self.counters.dropped_by_codec += 1
            return
        # what goes out toward this peer occupies its path's serialiser a while
        self.mman.timer_for(message.remote).on_sent(self.mman.loop.time(), sum(len(d) for _, d in datagrams))
        for peer, datagram in datagrams:
            self._send(peer, datagram, message.remote.key)

    # -- CodecHost

    def fail_remote(self, key: Hashable, exc: Exception) -> None:
        # pending requests fail now with the codec's error, not after retransmissions
        self.mman.dispatch_error(exc, self.remote(key))

    def forget_remote(self, key: Hashable) -> None:
        self.mman.forget_remote(self.remote(key))

    def remembers(self, key: Hashable, message_id: int) -> bool:
        return self.mman.remembers(self.remote(key), message_id)

    def send_datagram(self, peer: Hashable, datagram: bytes) -> None:
        self._send(peer, datagram, peer)

    def _send(self, peer: Hashable, datagram: bytes, key: Hashable) -> None:
        self.counters.frames_out += 1
        self.counters.bytes_out += len(datagram)
        counts = self.peer_counters(key)
        counts.frames_out += 1
        counts.bytes_out += len(datagram)
        self.link.send(peer, datagram)

    async def determine_remote(self, message: Message) -> LinkAddress | None:
        return None  # remotes are handed out by remote(), never parsed from URIs

    async def recognize_remote(self, remote: Any) -> bool:
        return isinstance(remote, LinkAddress) and remote.interface is self

    async def shutdown(self) -> None:
        await self.link.close()

    # -- receive path: nothing may escape from here

    def _datagram_received(self, peer: Hashable, datagram: bytes) -> None:
        self.counters.frames_in += 1
        self.counters.bytes_in += len(datagram)
        try:
            messages = self.codec.incoming(peer, datagram)
        except Exception as exc:
            log.debug("codec dropped a datagram from %r: %s", peer, exc)
            self.counters.dropped_by_codec += 1
            messages = []
        # counted under the session the codec found in it, else the address
        counts = self.peer_counters(messages[0][0] if messages else peer)
        counts.frames_in += 1
        counts.bytes_in += len(datagram)
        counts.heard_at = self.mman.loop.time()
        for key, raw in messages:
            remote = self.remote(key)
            try:
                message = Message.decode(raw, remote)
            except (error.UnparsableMessage, ValueError, IndexError, UnicodeDecodeError, TypeError) as exc:
                log.debug("malformed CoAP message from %r: %s", peer, exc)
                self.counters.dropped_malformed += 1
                continue
            message.transport_tuning = self.mman.tuning_for(remote)
            # the datagram's size when it carries this message alone (the
            # timer counts what the link carried)
            self.mman.incoming_size = len(datagram) if len(messages) == 1 else len(raw)
            try:
                self.mman.dispatch_message(message)
            except Exception:
                log.exception("error processing a message from %r", peer)
                self.counters.dropped_malformed += 1


class LinkFailure(GatewayError):
    """The link did not deliver a request or its response."""


class Observation:
    """An observation we registered (RFC 7641), driven through aiocoap's
    request pipe directly: aiocoap's observation iterator may drop a final
    notification."""

    def __init__(self, message: Message, on_later: Callable[[Message | None], None]):
        self.message = message
        self.pipe = Pipe(message, log)
        self.first: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        # a registration given up on (timeout, shutdown) may still fail later: nobody waits for that
        self.first.add_done_callback(lambda f: f.cancelled() or f.exception())
        self._on_later = on_later
        self._unregister: Callable[[], None] | None = self.pipe.on_event(self._event)

    @property
    def token(self) -> bytes:
        return self.message.token or b""

    def _event(self, event: Pipe.Event) -> bool:
        if not self.first.done():
            if event.message is not None:
                self.first.set_result(event.message)
            else:
                self.first.set_exception(event.exception or error.NetworkError("observation ended"))
        else:
            self._on_later(event.message)
            if self._unregister is None:
                # closed by its own listener: say so, or aiocoap's pipe, ended
                # under its loop, fails on the next callback (TypeError)
                return False
        return not event.is_last

    def close(self) -> None:
        """Stop listening: a later notification is answered RST, which ends
        the observation at the server too."""
        if self._unregister is not None:
            self._unregister()
            self._unregister = None


@dataclass
class LinkEndpoint:
    """A CoAP endpoint (client, server or both) on one link."""

    context: Context
    interface: LinkMessageInterface
    counters: TransportCounters = field(default_factory=TransportCounters)
    #: the resource tree served, if any (its blockwise caches follow the link)
    site: Any = None
    _request_tag: int = field(default_factory=lambda: random.randrange(0x10000))
    #: longest a block of one of our uploads may occupy the link (None: blocks
    #: as large as a frame allows); set on client endpoints (BULK_SLICE)
    bulk_slice: float | None = None

    @property
    def budget(self) -> LinkBudget:
        """The link's timing as this endpoint uses it now (``set_budget`` changes it)."""
        return self.interface.link.budget

    def remote(self, key: Hashable) -> LinkAddress:
        return self.interface.remote(key)

    def slice_upload(self, remote: LinkAddress) -> None:
        """Blocks of an upload that each occupy the link at most
        ``bulk_slice`` seconds: a request sent meanwhile waits for one block
        at most, not for a 1 KiB block's 82 s at 100 bit/s."""
        if self.bulk_slice is None:
            return
        budget = self.budget
        exp = remote.maximum_block_size_exp
        while exp > 0 and budget.serialisation((16 << exp) + BLOCK_FRAME_OVERHEAD) > self.bulk_slice:
            exp -= 1
        remote.maximum_block_size_exp = exp

    async def _heard_until(self, answer: asyncio.Future, key: Hashable, silence: float | None) -> Message:
        """``answer``'s result, waited for while peer ``key`` is heard from:
        TimeoutError once ``silence`` seconds pass without a frame from it
        (or SILENCE_CAP times that in all), ``answer`` then cancelled.
        A fixed deadline gave up on answers that were on their way: at
        100 bit/s four accounts' first syncs keep the link busy for minutes,
        each registration's answer queued behind the others' timed out after
        300 s, and every retry put the same answer on the link again."""
        if silence is None:
            return await answer
        loop = asyncio.get_running_loop()
        counts = self.interface.peer_counters(key)
        start = loop.time()
        gave_up = False

        def check() -> None:
            nonlocal timer, gave_up
            deadline = min(max(start, counts.heard_at) + silence, start + SILENCE_CAP * silence)
            if loop.time() + CLOCK_SLACK >= deadline:
                # cancelled as a timeout cancels: aiocoap's request sees it
                # (and stops) before this task resumes
                gave_up = True
                answer.cancel()
            else:
                timer = loop.call_at(deadline, check)

        timer = loop.call_at(start + silence, check)
        try:
            return await answer
        except asyncio.CancelledError:
            if gave_up:
                raise TimeoutError from None
            raise
        finally:
            timer.cancel()

    async def request(self, message: Message, key: Hashable, timeout: float | None = None) -> Message:
        """Send a request to peer ``key``; its final response.  ``LinkFailure``
        when the link did not deliver it (retransmissions exhausted, the
        secure layer failed, nothing heard from the peer for ``timeout``
        seconds)."""
        message.remote = self.remote(key)
        blockwise = len(message.payload) > message.remote.maximum_payload_size
        if blockwise:
            self.slice_upload(message.remote)
        original = message.copy() if blockwise else message
        for attempt in range(1 + BLOCKWISE_RESTARTS):
            if blockwise:
                # it goes block by block (RFC 7959), and a server assembles blocks
                # by request options: two requests to the same resource at once
                # would interleave.  A Request-Tag (RFC 9175) keeps them apart.
                self._request_tag = (self._request_tag + 1) % 0x10000
                message.opt.request_tag = [self._request_tag.to_bytes(2, "big")]
            self._check_codec()
            try:
                response = await self._heard_until(self.context.request(message).response, key, timeout)
            except (error.Error, TimeoutError, GatewayError) as exc:
                raise LinkFailure(type(exc).__name__) from (self.interface.codec.failure() or exc)
            if not (blockwise and response.code == Code.REQUEST_ENTITY_INCOMPLETE) or attempt == BLOCKWISE_RESTARTS:
                return response
            # the server lost the assembly (it expired, or a gap): it ran
            # nothing, so the whole request may go again, under a new tag
            # (RFC 7959 §2.9: 4.08 asks the client to start over)
            self.counters.blockwise_restarts += 1
            message = original.copy()
            message.remote = self.remote(key)
            self.slice_upload(message.remote)
        raise AssertionError("unreachable")

    def _check_codec(self) -> None:
        failure = self.interface.codec.failure()
        if failure is not None:
            raise LinkFailure(type(failure).__name__) from failure

    async def observe(self, message: Message, key: Hashable, on_later: Callable[[Message | None], None],
                      timeout: float | None = None) -> tuple[Observation, Message]:
        """Register an observation (``message`` carries Observe 0) with peer
        ``key``: the observation and its first response.  Every later
        notification, and finally None when the observation ends without a
        final response (an error, a RST, a shutdown), goes to ``on_later``."""
        message.remote = self.remote(key)
        self._check_codec()
        observation = Observation(message, on_later)
        try:
            interface = await self.context.find_remote_and_interface(message)
            interface.request(observation.pipe)
            # shielded: a registration given up on by its caller stays the observation's to close
            return observation, await self._heard_until(asyncio.shield(observation.first), key, timeout)
        except (error.Error, TimeoutError, GatewayError) as exc:
            observation.close()
            raise LinkFailure(type(exc).__name__) from (self.interface.codec.failure() or exc)

    def ping(self, key: Hashable) -> None:
        """An empty CON to peer ``key`` (RFC 7252 §4.3), which answers RST:
        keeps a NAT binding open, and a restarted secure server answers
        with a new session."""
        ping = Message(code=EMPTY, transport_tuning=Reliable())
        ping.remote = self.remote(key)
        self.interface.mman.send_message(ping, lambda: None)

    def on_acknowledged(self, listener: Callable[[LinkAddress, int], None]) -> None:
        """Call ``listener(remote, message ID)`` whenever a CON we sent is acknowledged."""
        self.interface.mman.on_acknowledged.append(listener)

    def set_budget(self, budget: LinkBudget) -> None:
        """New timing for the whole link (it was reshaped): later exchanges
        use it, and the round-trip estimates start over."""
        self.interface.link.budget = budget
        mman = self.interface.mman
        mman.budget = budget
        mman.timers.clear()
        mman._tunings.clear()
        mman._longest_peer_lifetime = 0.0
        blockwise_caches_follow(self.site, budget)

    def set_peer_budgets(self, budget_for: Callable[[LinkAddress], LinkBudget | None]) -> None:
        """Give each peer the budget of its own path: ``budget_for(remote)``
        is asked once per peer (None: the link's).  A server reached over
        paths of different speeds needs it, or it would answer a held
        request on a fast path too late (the client retransmits) or hold
        one on a slow path too briefly."""
        mman = self.interface.mman
        mman.budget_for = budget_for
        mman.timers.clear()
        mman._tunings.clear()

    async def shutdown(self) -> None:
        await self.context.shutdown()


def _assemblies(resource: Any) -> dict:
    # aiocoap's Block1Spool: a TimeoutDict of requests being assembled, keyed
    # (remote's blockwise key, code, cache key)
    return getattr(getattr(getattr(resource, "_block1", None), "_assemblies", None), "_items", {})


def assembly_bytes(resource: Any, remote: LinkAddress | None = None) -> int:
    """Request bytes a resource holds for ``remote`` (None: for everyone) in
    unfinished block-wise assemblies: what devices make the server hold with
    uploads under way."""
    return sum(len(request.payload) for (owner, *_), request in _assemblies(resource).items()
               if (remote is None or owner == remote.blockwise_key)
               and request.opt.block1 is not None and request.opt.block1.more)


def drop_assemblies(resource: Any, remote: LinkAddress) -> int:
    """Forget everything ``remote`` has in assembly (its session is gone: no
    block of it can arrive any more); the bytes freed."""
    items = _assemblies(resource)
    mine = [k for k in items if k[0] == remote.blockwise_key]
    freed = sum(len(items[k].payload) for k in mine)
    for key in mine:
        del items[key]
    return freed


def release_assemblies(resource: Any, remote: LinkAddress) -> None:
    """Forget ``remote``'s finished assemblies now: aiocoap keeps a whole
    request for the blockwise lifetime after its last block, and the message
    layer already answers a repeated last block from its deduplication cache."""
    items = _assemblies(resource)
    for key in [k for k, request in items.items() if k[0] == remote.blockwise_key
                and (request.opt.block1 is None or not request.opt.block1.more)]:
        del items[key]


def blockwise_lifetime(budget: LinkBudget) -> float:
    """How long a server keeps a block-wise assembly (or a response being
    fetched) after its last block: as long as the peer may still be sending
    the next block.  That is the next block's own transmit wait at this
    link's timeouts, with the retransmissions of aiocoap's default (4) — not
    the link's configured maximum, which on a lossy link would keep an
    abandoned upload for hours.  Four first timeouts were not enough: at
    2400 bit/s with 15 % loss a block lost three or four times arrived after
    its assembly had gone, and the upload failed 4.08."""
    tuning = LinkTuning(RetransmissionTimer(budget))
    retransmit = min(tuning.MAX_RETRANSMIT, TransportTuning.MAX_RETRANSMIT)
    wait = tuning.ACK_TIMEOUT * (2 ** (retransmit + 1) - 1) * tuning.ACK_RANDOM_FACTOR
    return max(TransportTuning().MAX_TRANSMIT_WAIT, wait + tuning.MAX_LATENCY)


def blockwise_caches_follow(site: Any, budget: LinkBudget) -> None:
    """Keep a site's blockwise state as long as the link needs between blocks.

    aiocoap keeps a response being fetched block by block (Block2Cache) and a
    request being assembled (Block1Spool) for a fixed MAX_TRANSMIT_WAIT of
    93 s; at 100 bit/s one 1024-byte block takes 82 s to serialise, so the
    request for the next block would find the response gone (4.08).  The
    caches are aiocoap's (``Resource._block1/_block2``); their timeout is a
    public attribute of its TimeoutDict.
    """
    lifetime = blockwise_lifetime(budget)
    for name, attr in (("_block1", "_assemblies"), ("_block2", "_completes")):
        cache = getattr(getattr(site, name, None), attr, None)
        if cache is not None:
            cache.timeout = lifetime
    # an aiocoap Site keeps the caches in the resources it dispatches to
    for child in getattr(site, "_resources", {}).values():
        blockwise_caches_follow(child, budget)


async def create_link_endpoint(link: DatagramLink, *, site: Any = None, codec: FrameCodec | None = None,
                               loggername: str = "coap") -> LinkEndpoint:
    """An aiocoap Context that speaks CoAP over ``link`` (server if ``site``)."""
    context = Context(serversite=site, loggername=loggername)
    counters = TransportCounters()
    loop = asyncio.get_running_loop()
    tman = ShortTokenManager(context, clock=loop.time,
                             rest=lambda: LinkTuning(RetransmissionTimer(link.budget)).EXCHANGE_LIFETIME)
    mman = LinkAwareMessageManager(tman, link.budget, counters)
    interface = LinkMessageInterface(mman, link, codec or PlainCodec(), counters)
    mman.message_interface = interface
    tman.token_interface = mman
    context.request_interfaces.append(tman)
    if site is not None:
        blockwise_caches_follow(site, link.budget)
    follow = getattr(codec, "follow_duplicate_lifetime", None)
    if follow is not None:  # the secure layer's duplicate window follows the link's timers
        follow(mman.duplicate_lifetime)
    endpoint = LinkEndpoint(context, interface, counters, site)
    if site is None:  # a client: what it sends block-wise are uploads, which must not hold up its requests
        endpoint.bulk_slice = BULK_SLICE
    return endpoint


__all__ = [
    "BULK_SLICE",
    "CON",
    "MAX_COUNTED_PEERS",
    "OTHER_PEERS",
    "CodecHost",
    "DatagramLink",
    "FrameCodec",
    "LinkAddress",
    "LinkAwareMessageManager",
    "LinkBudget",
    "LinkEndpoint",
    "LinkMessageInterface",
    "PeerCounters",
    "PlainCodec",
    "ShortTokenManager",
    "TransportCounters",
    "create_link_endpoint",
]

"""Kernel link fabric: one network namespace per node, veth pairs, tc shaping.

For machines where real kernel behaviour is wanted (real sockets, TCP, the
kernel's queues) rather than meshsim's userspace fabric.  Needs root.

Layout (`KernelLayout`, pure: it only computes names, addresses and ``ip``
argv lists):

- node N lives in namespace ``msim-<run id>-<node>`` (the run id is 6 hex
  digits, so parallel runs and leftovers never collide) and owns
  ``10.77.0.N/32`` on its ``lo``: the address other nodes send to;
- link k (in the order the topology's edges were added) is a veth pair with
  ``10.78.0.0 + 4k`` /30: the first node gets ``.1``, the second ``.2``; the
  interface in A toward B is called ``to<B's number>``;
- neighbours are static (no ARP on the shaped link) and IPv6 is off, so the
  only packets on a link are the ones applications send;
- routes are static: for every pair, the next hop on the topology's shortest
  path (`meshsim.model.Topology.path`, the same routing as the userspace
  fabric); a destination with no path gets an ``unreachable`` route (senders
  get EHOSTUNREACH).  Every change re-installs them (instant convergence);
- each veth's egress gets the qdiscs of `meshsim.net.tc.plan`.

These addresses exist only inside the namespaces; no namespace has a route
to anything else, and nothing is configured in the host's namespace.

`KernelTopology` is the shell that runs the commands: build, `run` / `popen`
in a node, `set_link`, `fail` / `heal` / `partition`, `counters`, and a
teardown that runs on error, KeyboardInterrupt and interpreter exit.  It is
the kernel backend of `meshsim.net.Network`: synchronous as `build` / `close`
(or ``with``), asynchronous as `start` / `stop` (the commands then run in a
worker thread, off the event loop).  A run holds a lock file
(``/run/meshsim/<run id>.lock``) while it lives, so `cleanup_stale` removes
only namespaces whose run has died.
"""

from __future__ import annotations

import asyncio
import atexit
import fcntl
import ipaddress
import logging
import os
import re
import secrets
import shutil
import subprocess
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal, Self

from ..model import LinkProfile, Topology, link_id
from . import tc
from .events import Event
from .network import Network
from .tc import (
    Gap,
    KernelCaps,
    QdiscStats,
    ShaperChoice,
    ShapingPlan,
    UnsupportedFeatures,
)

NETNS_PREFIX = "msim-"
DEFAULT_NODE_BASE = "10.77.0.0"
DEFAULT_LINK_BASE = "10.78.0.0"
LOCK_DIR = Path("/run/meshsim")
#: interface names are at most 15 bytes (IFNAMSIZ)
_SAFE_NODE_NAME = re.compile(r"[A-Za-z0-9_.-]{1,40}")
_RUN_ID = re.compile(r"[0-9a-f]{6}")
#: forwarding on; no reverse-path filter (shortest paths may differ per direction);
#: no IPv6 (router solicitations, DAD and MLD would use the slow links)
NAMESPACE_SYSCTLS = (
    "net.ipv4.ip_forward=1",
    "net.ipv4.conf.all.rp_filter=0",
    "net.ipv4.conf.default.rp_filter=0",
    "net.ipv6.conf.all.disable_ipv6=1",
    "net.ipv6.conf.default.disable_ipv6=1",
)
COMMAND_TIMEOUT = 30.0

logger = logging.getLogger(__name__)


def new_run_id() -> str:
    return secrets.token_hex(3)


def netns_name(run_id: str, node: str, index: int) -> str:
    """``msim-<run id>-<node>``; a node name that is unsafe in a path becomes ``n<index>``."""
    if not _RUN_ID.fullmatch(run_id):
        raise ValueError(f"run ids are 6 lowercase hex digits, not {run_id!r}")
    label = node if _SAFE_NODE_NAME.fullmatch(node) else f"n{index}"
    return f"{NETNS_PREFIX}{run_id}-{label}"


# ---------------------------------------------------------------- pure layout


@dataclass(frozen=True)
class VethEnd:
    """One node's end of a link."""

    node: str
    peer: str
    netns: str
    dev: str
    ip: str
    mac: str
    peer_ip: str
    peer_mac: str
    prefix_len: int = 30


class KernelLayout:
    """Names, addresses and ``ip`` commands for a topology (no I/O)."""

    def __init__(
        self,
        topology: Topology,
        run_id: str,
        *,
        mtu: int = tc.DEFAULT_MTU,
        node_base: str = DEFAULT_NODE_BASE,
        link_base: str = DEFAULT_LINK_BASE,
    ) -> None:
        self.topology = topology
        self.run_id = run_id
        self.mtu = mtu
        self._node_base = ipaddress.IPv4Address(node_base)
        self._link_base = ipaddress.IPv4Address(link_base)
        self._netns = {node.name: netns_name(run_id, node.name, node.index) for node in topology.nodes}
        if len(set(self._netns.values())) != len(self._netns):
            raise ValueError("two nodes map to the same namespace name")
        self._ends: dict[tuple[str, str], VethEnd] = {}
        for k, (a, b) in enumerate(topology.edges()):
            subnet = self._link_base + 4 * k
            if int(subnet) + 3 > int(self._link_base) + 0xFFFF:
                raise ValueError("too many links for a /16 of /30s")
            ip_a, ip_b = str(subnet + 1), str(subnet + 2)
            # locally administered MACs, unique per end: 02:4d:53 ("MS"), link, end
            mac_a, mac_b = (f"02:4d:53:{k >> 8:02x}:{k & 0xFF:02x}:{end:02x}" for end in (1, 2))
            self._ends[a, b] = VethEnd(a, b, self._netns[a], self._dev(b), ip_a, mac_a, ip_b, mac_b)
            self._ends[b, a] = VethEnd(b, a, self._netns[b], self._dev(a), ip_b, mac_b, ip_a, mac_a)

    def _dev(self, peer: str) -> str:
        return f"to{self.topology.node(peer).index}"

    # ------------------------------------------------------------ lookups

    def netns(self, node: str) -> str:
        return self._netns[self.topology.node(node).name]

    @property
    def namespaces(self) -> list[str]:
        return list(self._netns.values())

    def node_ip(self, node: str) -> str:
        return str(self._node_base + self.topology.node(node).index)

    def end(self, node: str, peer: str) -> VethEnd:
        """`node`'s interface toward `peer`."""
        try:
            return self._ends[node, peer]
        except KeyError:
            raise KeyError(f"no link between {node!r} and {peer!r}") from None

    def exec_argv(self, node: str, argv: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", self.netns(node), *argv]

    # ------------------------------------------------------------ commands

    def namespace_commands(self, node: str) -> list[list[str]]:
        """Create `node`'s namespace (the caller creates it first, alone, to own it)."""
        ns = self.netns(node)
        return [
            ["ip", "netns", "add", ns],
            self.exec_argv(node, ["sysctl", "-q", "-e", "-w", *NAMESPACE_SYSCTLS]),
            ["ip", "-n", ns, "link", "set", "lo", "up"],
            ["ip", "-n", ns, "addr", "add", f"{self.node_ip(node)}/32", "dev", "lo"],
        ]

    def link_commands(self, a: str, b: str) -> list[list[str]]:
        """Create the veth pair between `a` and `b` with addresses and neighbours, up."""
        ea, eb = self.end(a, b), self.end(b, a)
        mtu = str(self.mtu)
        commands = [[
            "ip", "link", "add", "name", ea.dev, "address", ea.mac, "mtu", mtu, "netns", ea.netns,
            "type", "veth", "peer", "name", eb.dev, "address", eb.mac, "mtu", mtu, "netns", eb.netns,
        ]]
        for end in (ea, eb):
            commands.append(["ip", "-n", end.netns, "addr", "add", f"{end.ip}/{end.prefix_len}", "dev", end.dev])
        commands += self.link_state_commands(a, b, up=True)
        return commands

    def link_state_commands(self, a: str, b: str, *, up: bool) -> list[list[str]]:
        """Both ends down, or both up with their static neighbours (a down link forgets them)."""
        commands = []
        for end in (self.end(a, b), self.end(b, a)):
            commands.append(["ip", "-n", end.netns, "link", "set", end.dev, "up" if up else "down"])
        if up:
            for end in (self.end(a, b), self.end(b, a)):
                commands.append(["ip", "-n", end.netns, "neigh", "replace", end.peer_ip,
                                 "lladdr", end.peer_mac, "dev", end.dev, "nud", "permanent"])
        return commands

    def route_commands(self) -> list[list[str]]:
        """A route for every (source, destination) pair from the topology's paths as they are now."""
        commands = []
        for src in self.topology.nodes:
            ns = self.netns(src.name)
            for dst in self.topology.nodes:
                if dst is src:
                    continue
                prefix = f"{self.node_ip(dst.name)}/32"
                path = self.topology.path(src.name, dst.name)
                if path is None:
                    commands.append(["ip", "-n", ns, "route", "replace", "unreachable", prefix])
                else:
                    end = self.end(src.name, path[1])
                    commands.append(["ip", "-n", ns, "route", "replace", prefix, "via", end.peer_ip,
                                     "dev", end.dev, "src", self.node_ip(src.name)])
        return commands

    def teardown_commands(self) -> list[list[str]]:
        """Deleting a namespace deletes its veths (and so their peers)."""
        return [["ip", "netns", "del", ns] for ns in self.namespaces]


def parse_netns_list(text: str) -> list[str]:
    """Names from ``ip netns list`` (lines like ``msim-0a1b2c-a (id: 3)``)."""
    return [line.split()[0] for line in text.splitlines() if line.strip()]


def group_runs(names: Iterable[str], prefix: str = NETNS_PREFIX) -> dict[str, list[str]]:
    """meshsim namespaces among `names` that start with `prefix`, by run id."""
    runs: dict[str, list[str]] = {}
    for name in names:
        match = re.match(rf"{re.escape(NETNS_PREFIX)}([0-9a-f]{{6}})-", name)
        if match and name.startswith(prefix):
            runs.setdefault(match.group(1), []).append(name)
    return runs


# ---------------------------------------------------------------- shell


class KernelCommandError(RuntimeError):
    def __init__(self, argv: Sequence[str], returncode: int, stderr: str) -> None:
        self.argv = list(argv)
        self.returncode = returncode
        self.stderr = stderr
        super().__init__(f"{' '.join(argv)} failed ({returncode}): {stderr.strip()}")


class KernelUnavailable(RuntimeError):
    """This machine cannot run the kernel backend (not root, no ip netns, ...)."""


def _run(argv: Sequence[str], *, check: bool = True, timeout: float = COMMAND_TIMEOUT) -> subprocess.CompletedProcess[str]:
    try:
        result = subprocess.run(list(argv), check=False, capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError as error:
        raise KernelCommandError(argv, 127, str(error)) from None
    if check and result.returncode != 0:
        raise KernelCommandError(argv, result.returncode, result.stderr)
    return result


class _RunLock:
    """A run's liveness token: an flock held on ``LOCK_DIR/<run id>.lock`` while it lives."""

    def __init__(self, run_id: str, lock_dir: Path = LOCK_DIR) -> None:
        lock_dir.mkdir(parents=True, exist_ok=True)
        self.path = lock_dir / f"{run_id}.lock"
        # O_EXCL: a run id another live run (or a leftover) uses is refused
        self._fd: int | None = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.write(self._fd, f"{os.getpid()}\n".encode())

    def release(self) -> None:
        if self._fd is not None:
            self.path.unlink(missing_ok=True)
            os.close(self._fd)
            self._fd = None

    @staticmethod
    def is_live(run_id: str, lock_dir: Path = LOCK_DIR) -> bool:
        try:
            fd = os.open(lock_dir / f"{run_id}.lock", os.O_RDONLY)
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)
        return False


@dataclass(frozen=True)
class KernelSupport:
    """What this machine offers the kernel backend, found by `detect_support`."""

    root: bool
    netns: bool
    qdiscs: frozenset[str]
    hz: int
    problems: tuple[str, ...]

    @property
    def caps(self) -> KernelCaps:
        return KernelCaps(self.qdiscs, self.hz)

    @property
    def usable(self) -> bool:
        return self.root and self.netns and bool(self.qdiscs & {"netem", "htb", "tbf"})

    def describe(self) -> str:
        """The findings, for people, joined by "; "."""
        lines = list(self.problems)
        if self.netns:
            lines.append(f"qdiscs: {', '.join(sorted(self.qdiscs)) or 'none'}")
            if "netem" not in self.qdiscs:
                lines.append("no netem: delay, jitter, loss, duplication and corruption are unavailable; "
                             "rates via " + ("htb" if "htb" in self.qdiscs else "tbf" if "tbf" in self.qdiscs else "nothing"))
        return "; ".join(lines)


_support_cache: KernelSupport | None = None


def detect_support(*, refresh: bool = False) -> KernelSupport:
    """Probe root, ``ip netns`` and the qdiscs, in a throwaway namespace (cached)."""
    global _support_cache
    if _support_cache is not None and not refresh:
        return _support_cache
    problems: list[str] = []
    root = os.geteuid() == 0
    if not root:
        problems.append(f"not root (euid {os.geteuid()}): network namespaces need CAP_SYS_ADMIN")
    tools = all(shutil.which(tool) is not None for tool in ("ip", "tc", "sysctl"))
    if not tools:
        problems.append("the ip, tc and sysctl commands (iproute2, procps) are needed")
    netns = False
    qdiscs: set[str] = set()
    hz = 100
    try:
        hz = tc.parse_psched(Path("/proc/net/psched").read_text())
    except (OSError, ValueError) as error:
        problems.append(f"cannot read /proc/net/psched ({error}); assuming HZ=100")
    lock = None
    if root and tools:
        run_id = new_run_id()
        try:
            lock = _RunLock(run_id)
        except OSError as error:
            problems.append(f"cannot hold a run lock in {LOCK_DIR}: {error}")
    if lock is not None:
        probe = f"{NETNS_PREFIX}{run_id}-probe"
        try:
            result = _run(["ip", "netns", "add", probe], check=False)
            if result.returncode != 0:
                problems.append(f"ip netns add failed: {result.stderr.strip()}")
            else:
                netns = True
                for kind in tc.PROBE_ARGS:
                    add, delete = tc.probe_commands(kind, netns=probe)
                    result = _run(add, check=False)
                    if result.returncode == 0:
                        qdiscs.add(kind)
                        _run(delete, check=False)
                    elif not tc.is_unknown_qdisc_error(result.stderr):
                        problems.append(f"probing {kind}: {result.stderr.strip()}")
        finally:
            if netns:
                _run(["ip", "netns", "del", probe], check=False)
            lock.release()
    _support_cache = KernelSupport(root, netns, frozenset(qdiscs), hz, tuple(problems))
    return _support_cache


def cleanup_stale(prefix: str = NETNS_PREFIX) -> list[str]:
    """Delete meshsim namespaces starting with `prefix` whose run is no longer alive.

    A run is alive while it holds its lock file, so a concurrent run's
    namespaces are left alone.  Returns the names deleted.
    """
    listing = _run(["ip", "netns", "list"])
    deleted = []
    for run_id, names in group_runs(parse_netns_list(listing.stdout), prefix).items():
        if _RunLock.is_live(run_id):
            continue
        for name in names:
            if _run(["ip", "netns", "del", name], check=False).returncode == 0:
                deleted.append(name)
        (LOCK_DIR / f"{run_id}.lock").unlink(missing_ok=True)
    return deleted


OnMissing = Literal["raise", "warn", "ignore"]


class KernelTopology(Network):
    """A `Topology` built in network namespaces, shaped by tc.

    Use as a context manager (or `build` / `close`; from an event loop,
    ``async with`` or `start` / `stop`).  The topology's nodes and links are
    fixed once built; change them through this object (`set_link`, `fail`,
    `heal`, `partition`, `heal_all`) so the kernel follows.  `on_missing`
    says what to do when a profile asks for what the kernel cannot do (see
    `meshsim.net.tc.plan`): refuse ("raise", before anything is built), warn,
    or ignore; `plans` and `gaps` tell what was decided either way.
    """

    #: a node owns its address on every port
    ports: list[int] = []

    def __init__(
        self,
        topology: Topology,
        *,
        run_id: str | None = None,
        mtu: int = tc.DEFAULT_MTU,
        counted_by_kernel: int = tc.UDP_IPV4_ETHERNET_BYTES,
        shaper: ShaperChoice = "auto",
        on_missing: OnMissing = "raise",
        support: KernelSupport | None = None,
        node_base: str = DEFAULT_NODE_BASE,
        link_base: str = DEFAULT_LINK_BASE,
    ) -> None:
        self.topology = topology
        self.run_id = run_id or new_run_id()
        self.layout = KernelLayout(topology, self.run_id, mtu=mtu, node_base=node_base, link_base=link_base)
        self.mtu = mtu
        self.counted_by_kernel = counted_by_kernel
        self.shaper = shaper
        self.on_missing = on_missing
        self._support = support
        self.caps: KernelCaps | None = None
        self.plans: dict[str, ShapingPlan] = {}
        self._created: list[str] = []
        self._processes: list[subprocess.Popen[Any]] = []
        self._lock: _RunLock | None = None
        self._started = False
        self._closed = False
        self._epoch = 0.0
        self._subscribers: list[Callable[[Event], None]] = []

    # ------------------------------------------------------------ lifecycle

    def __enter__(self) -> Self:
        self.build()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        if exc_type is None:
            self.close()
            return
        try:
            self.close()
        except KernelCommandError as error:
            # do not hide the exception that is already on its way out
            warnings.warn(f"teardown incomplete: {error}", stacklevel=2)

    async def start(self) -> None:
        """`build`, with its commands in a worker thread (they take a while; the loop goes on)."""
        await asyncio.to_thread(self.build)

    async def stop(self) -> None:
        """`close`, in a worker thread."""
        await asyncio.to_thread(self.close)

    @property
    def running(self) -> bool:
        return self._started and not self._closed

    def now(self) -> float:
        return time.monotonic() - self._epoch

    def build(self) -> None:
        """Create the namespaces, veths, qdiscs and routes (refusing first what cannot be shaped)."""
        if self._started:
            raise RuntimeError("already started")
        self._started = True
        self._epoch = time.monotonic()
        support = self._support or detect_support()
        if not support.usable:
            raise KernelUnavailable(f"kernel backend unavailable: {support.describe()}")
        self.caps = support.caps
        # decide every link's shaping before building anything, so a refusal leaves nothing behind
        self.plans = {link.id: self._plan(link.profile) for link in self.topology.links}
        self._check_missing({link_id: plan.missing for link_id, plan in self.plans.items()})
        try:
            self._lock = _RunLock(self.run_id)
        except FileExistsError:
            raise RuntimeError(f"run id {self.run_id} is in use ({LOCK_DIR / self.run_id}.lock exists)") from None
        atexit.register(self.close)
        try:
            for node in self.topology.nodes:
                create, *configure = self.layout.namespace_commands(node.name)
                _run(create)
                self._created.append(self.layout.netns(node.name))
                self._run_all(configure)
            for a, b in self.topology.edges():
                self._run_all(self.layout.link_commands(a, b))
                for src, dst in ((a, b), (b, a)):
                    end = self.layout.end(src, dst)
                    self._run_all(tc.setup_commands(end.dev, self.plans[link_id(src, dst)], netns=end.netns))
                if not self.topology.is_up(a, b):
                    self._run_all(self.layout.link_state_commands(a, b, up=False))
            self._run_all(self.layout.route_commands())
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Stop the processes started here, delete the namespaces created here.  Idempotent."""
        if self._closed or not self._started:
            return
        self._closed = True
        atexit.unregister(self.close)
        for process in self._processes:
            if process.poll() is None:
                process.terminate()
        for process in self._processes:
            try:
                process.wait(timeout=2)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        errors = []
        for ns in reversed(self._created):
            result = _run(["ip", "netns", "del", ns], check=False)
            if result.returncode != 0:
                errors.append(f"{ns}: {result.stderr.strip()}")
        self._created.clear()
        if self._lock is not None:
            self._lock.release()
        if errors:
            raise KernelCommandError(["ip", "netns", "del"], 1, "; ".join(errors))

    # ------------------------------------------------------------ nodes

    def netns(self, node: str) -> str:
        return self.layout.netns(node)

    def node_ip(self, node: str) -> str:
        return self.layout.node_ip(node)

    def run(self, node: str, argv: Sequence[str], *, check: bool = True, **kwargs: Any) -> subprocess.CompletedProcess[Any]:
        """Run `argv` in `node`'s namespace (output captured as text unless told otherwise)."""
        kwargs.setdefault("capture_output", True)
        kwargs.setdefault("text", True)
        kwargs.setdefault("timeout", COMMAND_TIMEOUT)
        return subprocess.run(self.layout.exec_argv(node, argv), check=check, **kwargs)

    def popen(self, node: str, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
        """Start `argv` in `node`'s namespace; it is terminated on `close`."""
        process = subprocess.Popen(self.layout.exec_argv(node, argv), **kwargs)
        self._processes.append(process)
        return process

    # ------------------------------------------------------------ links

    def set_link(
        self,
        a: str,
        b: str,
        profile: LinkProfile | None = None,
        *,
        reverse: LinkProfile | None = None,
        weight: float | None = None,
    ) -> None:
        """New profile(s) from now on (a→b `profile`, b→a `reverse`, default the same).

        With the same shaper kind the qdiscs change in place and keep their
        queues; see `meshsim.net.tc.change_commands`.
        """
        self._require_running()
        new_plans = {}
        for src, dst, new in ((a, b, profile), (b, a, reverse if reverse is not None else profile)):
            if new is not None:
                new_plans[src, dst] = self._plan(new)
        self._check_missing({link_id(s, d): p.missing for (s, d), p in new_plans.items()})
        old_version = self.topology.version
        # first the topology, which validates the weight
        changed = self.topology.set_link(a, b, profile, reverse=reverse, weight=weight, now=self.now())
        for (src, dst), new_plan in new_plans.items():
            end = self.layout.end(src, dst)
            self._run_all(tc.change_commands(end.dev, self.plans[link_id(src, dst)], new_plan, netns=end.netns))
            self.plans[link_id(src, dst)] = new_plan
        if self.topology.version != old_version:
            self._run_all(self.layout.route_commands())
        for link in changed or [self.topology.link(a, b), self.topology.link(b, a)]:
            self._emit({"kind": "link_change", "t": self.now(), "link": link.id, "profile": asdict(link.profile),
                        "weight": self.topology.weight(a, b)})

    def fail(self, a: str, b: str) -> int:
        """Take the link down both ways and reroute; returns the packets its qdiscs held, now lost."""
        self._require_running()
        self.topology.fail(a, b, now=self.now())
        return self._take_down([(a, b)])

    def heal(self, a: str, b: str) -> None:
        """Bring the link back up both ways and reroute."""
        self._require_running()
        healed = self.topology.heal(a, b, now=self.now())
        self._bring_up([(a, b)], announce=healed)

    def partition(self, groups: Iterable[Iterable[str]]) -> int:
        """Fail every link between groups (see `Topology.partition`); returns the packets lost."""
        self._require_running()
        failed, _ = self.topology.partition(groups, now=self.now())
        return self._take_down(failed) if failed else 0

    def heal_all(self) -> None:
        self._require_running()
        healed = self.topology.heal_all(now=self.now())
        if healed:
            self._bring_up(healed, announce=True)

    def _take_down(self, edges: list[tuple[str, str]]) -> int:
        # the veths' queues die with them: count what they hold just before (tc's exact packet backlog)
        lost = 0
        for a, b in edges:
            held = {link_id(src, dst): self._backlog_packets(src, dst) for src, dst in ((a, b), (b, a))}
            self._run_all(self.layout.link_state_commands(a, b, up=False))
            for link, flushed in held.items():
                self._emit({"kind": "link_down", "t": self.now(), "link": link, "flushed": flushed})
            lost += sum(held.values())
        self._run_all(self.layout.route_commands())
        return lost

    def _bring_up(self, edges: list[tuple[str, str]], *, announce: bool) -> None:
        for a, b in edges:
            self._run_all(self.layout.link_state_commands(a, b, up=True))
        self._run_all(self.layout.route_commands())
        if announce:
            for a, b in edges:
                for link in (link_id(a, b), link_id(b, a)):
                    self._emit({"kind": "link_up", "t": self.now(), "link": link})

    def _backlog_packets(self, src: str, dst: str) -> int:
        root = tc.root_stats(self.qdisc_stats(src, dst))
        return root.backlog_packets if root is not None else 0

    def qdisc_stats(self, a: str, b: str) -> list[QdiscStats]:
        """Every qdisc on `a`'s interface toward `b`."""
        self._require_running()
        end = self.layout.end(a, b)
        return tc.parse_qdisc_stats(_run(tc.stats_command(end.dev, netns=end.netns)).stdout)

    def counters(self, a: str, b: str) -> QdiscStats:
        """The root qdisc's counters on a→b (Ethernet frame bytes)."""
        root = tc.root_stats(self.qdisc_stats(a, b))
        if root is None:
            raise RuntimeError(f"no root qdisc on {link_id(a, b)}")
        return root

    def gaps(self) -> dict[str, tuple[Gap, ...]]:
        """What each directed link's profile asks for that the kernel does not apply."""
        return {link_id: plan.missing for link_id, plan in self.plans.items() if plan.missing}

    def snapshot(self) -> dict[str, Any]:
        """As `Network.snapshot`; each link's counters are its root qdisc's (Ethernet frame bytes),
        its drops the qdisc's (``dropped["qdisc"]``).  Nothing is counted outside the links."""
        links: dict[str, dict[str, Any]] = {}
        backlog = 0
        for link in self.topology.links:
            stats = tc.root_stats(self.qdisc_stats(link.src, link.dst)) if self.running else None
            entry: dict[str, Any] = {
                "src": link.src, "dst": link.dst, "up": not link.is_down, "profile": asdict(link.profile),
                "weight": self.topology.weight(link.src, link.dst),
                "dropped": {"qdisc": stats.dropped if stats is not None else 0},
            }
            if stats is not None:
                entry.update(sent_packets=stats.sent_packets, sent_bytes=stats.sent_bytes,
                             overlimits=stats.overlimits, requeues=stats.requeues,
                             backlog_packets=stats.backlog_packets, backlog_bytes=stats.backlog_bytes)
                backlog += stats.backlog_bytes
            links[link.id] = entry
        return {"t": self.now() if self.running else 0.0, "counters": {}, "in_flight_bytes": backlog, "links": links}

    def subscribe(self, callback: Callable[[Event], None]) -> Callable[[], None]:
        """`callback` gets the link changes (``link_change``, ``link_down``, ``link_up``); the kernel's
        packets are its own."""
        self._subscribers.append(callback)
        return lambda: self._subscribers.remove(callback)

    def _emit(self, event: Event) -> None:
        for callback in tuple(self._subscribers):
            try:
                callback(event)
            except Exception:
                logger.exception("event subscriber %r failed", callback)

    # ------------------------------------------------------------ helpers

    def _plan(self, profile: LinkProfile) -> ShapingPlan:
        assert self.caps is not None
        return tc.plan(profile, self.caps, mtu=self.mtu, counted_by_kernel=self.counted_by_kernel, shaper=self.shaper)

    def _check_missing(self, missing: dict[str, tuple[Gap, ...]]) -> None:
        missing = {link_id: gaps for link_id, gaps in missing.items() if gaps}
        if not missing or self.on_missing == "ignore":
            return
        gaps = [Gap(f"{link_id} {gap.feature}", gap.detail) for link_id, link_gaps in missing.items() for gap in link_gaps]
        if self.on_missing == "raise":
            raise UnsupportedFeatures(gaps)
        warnings.warn(str(UnsupportedFeatures(gaps)), stacklevel=3)

    def _require_running(self) -> None:
        if not self._started or self._closed:
            raise RuntimeError("the kernel topology is not running")

    @staticmethod
    def _run_all(commands: Iterable[Sequence[str]]) -> None:
        for argv in commands:
            _run(argv)

"""meshsim's networks: the asyncio and kernel shells that carry packets over the models.

Layer contract: `meshsim.net` builds on `meshsim.model` (through its
package names only) and on nothing else of meshsim; `meshsim.run`, the web
UI and the command line build on the names below.  Whatever carries a
topology does it behind `Network` (start/stop, set_link, fail, heal,
partition, heal_all, snapshot, subscribe):

- `Fabric` (fabric, forwarder, scheduler, udp): the userspace backend, UDP
  on 127.0.0.0/8 with every hop's `LinkModel` applied on exact timers;
- `KernelTopology` (kernel; tc is its pure half: plans, argv lists, the
  ``tc -s`` parser): network namespaces, veth pairs and tc, needs root;
- `Relay`: one shaped link between two UDP endpoints (``meshsim link``);
- `emulated_link_pair`: link models as the stages of the gateway's
  in-memory link;
- `EventLog` and `PcapWriter`: what every run writes (events.jsonl, a pcap).
"""

from .emulated import emulated_link_pair
from .events import EVENT_FIELDS, Event, EventLog, read_events
from .fabric import Fabric
from .forwarder import ShapedForwarder
from .kernel import (
    KernelSupport,
    KernelTopology,
    KernelUnavailable,
    cleanup_stale,
    detect_support,
)
from .network import Network
from .pcap import PcapWriter
from .relay import DEFAULT_MAX_CLIENTS, DOWN, UP, Relay, parse_host_port
from .tc import Gap, UnsupportedFeatures

__all__ = [
    "DEFAULT_MAX_CLIENTS",
    "DOWN",
    "EVENT_FIELDS",
    "UP",
    "Event",
    "EventLog",
    "Fabric",
    "Gap",
    "KernelSupport",
    "KernelTopology",
    "KernelUnavailable",
    "Network",
    "PcapWriter",
    "Relay",
    "ShapedForwarder",
    "UnsupportedFeatures",
    "cleanup_stale",
    "detect_support",
    "emulated_link_pair",
    "parse_host_port",
    "read_events",
]

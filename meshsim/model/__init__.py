"""meshsim's models, sans-I/O: what a link does to a packet, and which way a packet goes.

Layer contract: nothing here reads a clock, opens a socket, starts a task
or writes a file; time is a parameter (``now``) and every random number
comes from a stream seeded by (run seed, link id, purpose).  This is the
bottom layer of meshsim: it imports no other meshsim package, and
`meshsim.net`, `meshsim.run` and the rest build on the names below.

- `profile`: `LinkProfile`, one direction's parameters, with tc-netem's
  syntax (`netem`) and `describe_profile`;
- `stages`: a link's stages in netem's order (duplicator, error models —
  `BernoulliLoss`, `GilbertElliottLoss` —, corrupter, transmit queue,
  serialiser, delay line);
- `link`: `LinkModel`, the composition of the stages for one directed link;
- `topology`: nodes, edges of two directed links, shortest-path routes
  (networkx);
- `rng`: the seeded streams and netem's delay distributions.
"""

from .link import Dropped, LinkCounters, LinkModel, OfferResult, Scheduled
from .profile import (
    GilbertElliottParams,
    LinkProfile,
    describe_profile,
    gemodel_loss_rate,
    netem_kernel_rate_bps,
    transmission_time,
)
from .rng import (
    JITTER_DISTRIBUTIONS,
    JitterDistribution,
    derive_rng,
    derive_seed,
    netem_table_value,
    sample_delay,
)
from .stages import (
    DROP_REASONS,
    BernoulliLoss,
    Corrupter,
    DelayLine,
    DropReason,
    Duplicator,
    ErrorModel,
    GilbertElliottLoss,
    Serialiser,
    Transmission,
    TransmitQueue,
)
from .topology import (
    DEFAULT_PRIVATE_BASE,
    DEFAULT_PUBLIC_BASE,
    MAX_NODE_INDEX,
    Cancelled,
    DirectedLink,
    Node,
    Topology,
    link_id,
)

__all__ = [
    "DEFAULT_PRIVATE_BASE",
    "DEFAULT_PUBLIC_BASE",
    "DROP_REASONS",
    "JITTER_DISTRIBUTIONS",
    "MAX_NODE_INDEX",
    "BernoulliLoss",
    "Cancelled",
    "Corrupter",
    "DelayLine",
    "DirectedLink",
    "DropReason",
    "Dropped",
    "Duplicator",
    "ErrorModel",
    "GilbertElliottLoss",
    "GilbertElliottParams",
    "JitterDistribution",
    "LinkCounters",
    "LinkModel",
    "LinkProfile",
    "Node",
    "OfferResult",
    "Scheduled",
    "Serialiser",
    "Topology",
    "Transmission",
    "TransmitQueue",
    "derive_rng",
    "derive_seed",
    "describe_profile",
    "gemodel_loss_rate",
    "link_id",
    "netem_kernel_rate_bps",
    "netem_table_value",
    "sample_delay",
    "transmission_time",
]

"""Applications: the command line, the daemons, and the wiring they share.

``runner`` assembles running gateways (a link, the CoAP endpoint, the secure
codec, the gateway) — the one wiring the CLI, meshsim, the benchmark and the
tests all use; ``daemon`` runs them as services (config files, signals,
live counters); ``up`` composes Synapse, both gateways and an emulated link;
``metrics`` and ``metrics_http`` serve Prometheus text; ``federation``
wires a homeserver's federation gateway; ``cli`` is ``coap-gateway``.
"""

from .federation import RunningFederation, homeserver_lines, start_federation
from .runner import (
    RunningClient,
    RunningServer,
    advertisement_for,
    server_endpoint,
    start_client,
    start_server,
)
from .store import ServerStore

__all__ = ["RunningClient", "RunningFederation", "RunningServer", "ServerStore", "advertisement_for",
           "homeserver_lines", "server_endpoint", "start_client", "start_federation", "start_server"]

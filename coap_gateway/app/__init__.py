"""Applications: the command line, the daemons, and the wiring they share.

``runner`` assembles running gateways (a link, the CoAP endpoint, the secure
codec, the gateway) — the one wiring the CLI, meshsim, the benchmark and the
tests all use; ``daemon`` runs them as services (config files, signals,
live counters); ``up`` composes Synapse, both gateways and an emulated link;
``metrics`` and ``metrics_http`` serve Prometheus text; ``discovery``
builds the ``.well-known`` entry that announces the endpoint; ``federation``
wires a homeserver's federation gateway; ``cli`` is ``coap-gateway``.
"""

from .discovery import WELL_KNOWN_KEY, advertisement_for, well_known_entry
from .federation import RunningFederation, homeserver_lines, start_federation
from .runner import (
    RunningClient,
    RunningServer,
    server_endpoint,
    start_client,
    start_server,
)
from .store import ServerStore

__all__ = ["WELL_KNOWN_KEY", "RunningClient", "RunningFederation", "RunningServer", "ServerStore", "advertisement_for",
           "homeserver_lines", "server_endpoint", "start_client", "start_federation", "start_server",
           "well_known_entry"]

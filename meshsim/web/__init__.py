"""meshsim's web UI: a D3 topology canvas over a running network (see docs/meshsim.md, "Web UI").

Layer contract: `meshsim.web` builds on `meshsim.run` (scenarios, the
runner), `meshsim.net` (the `Network` it shows and changes) and
`meshsim.model`, through their package names only; only the command line
builds on it.  `WebUI` (server) serves the page, a JSON API and a
websocket; `live` coalesces the network's events for it and `layout` holds
positions, the range rule and link labels (both sans-I/O); `command` is what
``meshsim ui`` and ``meshsim run --ui`` call.
"""

from .command import phase_names, run_scenario_with_ui, run_ui
from .server import WebUI

__all__ = ["WebUI", "phase_names", "run_scenario_with_ui", "run_ui"]

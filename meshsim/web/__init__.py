"""meshsim's web UI: a D3 topology canvas over a running fabric (see docs/meshsim.md, "Web UI").

`WebUI` (meshsim.web.server) serves the page, a JSON API and a websocket;
`meshsim.web.live` coalesces the fabric's events for it; `meshsim.web.layout`
holds positions, the range rule and link labels; `meshsim.web.command` is
what ``meshsim ui`` and ``meshsim run --ui`` call.
"""

from .server import WebUI

__all__ = ["WebUI"]

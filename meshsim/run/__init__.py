"""meshsim's scenario runs: scenario files, the runner, its checks and its report.

Layer contract: `meshsim.run` builds on `meshsim.net` and `meshsim.model`
(through their package names only) and on coap_gateway's public API
(``coap_gateway.app``, ``transport``, ``secure``, ``codec``, ``tools``);
the web UI and the command line build on the names below.  Nothing here
touches a link but through `meshsim.net.Network`.

- `scenario`: TOML scenarios parsed and validated (sans-I/O);
- `runner`: the thin orchestrator (`run_scenario`) over `links` (the
  network, link changes, path budgets), `gateways` (Synapse and the
  coap_gateway pair), `workload` (matrix-nio clients, rooms, sends, sync
  loops) and `record` (the event log on the run's clock);
- `checks` (the physical bound, the assertions, the room history) and
  `report` (report.json and the plots, from the events alone), both pure
  but for the plots;
- `console`: progress bars and the counters table.
"""

from .checks import Copy, evaluate_assertions, history_counts, physical_bound
from .console import summary_table
from .links import path_budget, slowest_budget
from .record import RunError
from .report import ReportBuilder, summary_lines, write_plots
from .runner import RunResult, run_scenario
from .scenario import (
    DEFAULT_OVERHEAD,
    LinkChange,
    Scenario,
    ScenarioError,
    build_topology,
    load_scenario,
    parse_duration,
    parse_scenario,
    plan_lines,
    resolve_change,
)

__all__ = [
    "DEFAULT_OVERHEAD",
    "Copy",
    "LinkChange",
    "ReportBuilder",
    "RunError",
    "RunResult",
    "Scenario",
    "ScenarioError",
    "build_topology",
    "evaluate_assertions",
    "history_counts",
    "load_scenario",
    "parse_duration",
    "parse_scenario",
    "path_budget",
    "physical_bound",
    "plan_lines",
    "resolve_change",
    "run_scenario",
    "slowest_budget",
    "summary_lines",
    "summary_table",
    "write_plots",
]

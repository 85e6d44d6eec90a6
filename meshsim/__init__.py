"""meshsim: a userspace netem-style link fabric and scenario runner.

What other packages use (the gateway's tests, the benchmark, ``coap-gateway
up``) is named here; everything else is meshsim's own.
"""

from .model import LinkProfile
from .net import PcapWriter, Relay, emulated_link_pair

__all__ = ["LinkProfile", "PcapWriter", "Relay", "emulated_link_pair"]

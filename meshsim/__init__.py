"""meshsim: a userspace netem-style link fabric and scenario runner.

What other packages use (the gateway's tests, the benchmark, ``coap-gateway
up``) is named here; everything else is meshsim's own.
"""

from .emulated import emulated_link_pair
from .model import LinkProfile
from .pcap import PcapWriter
from .relay import Relay

__all__ = ["LinkProfile", "PcapWriter", "Relay", "emulated_link_pair"]

"""Developer tools, not part of a running gateway: a local Synapse for tests,
the benchmark and ``up`` (``synapse_process``), and the preset-dictionary
builder (``dictbuild``)."""

from .dictbuild.build import build_dictionary
from .synapse_process import LocalSynapse, free_port

__all__ = ["LocalSynapse", "build_dictionary", "free_port"]

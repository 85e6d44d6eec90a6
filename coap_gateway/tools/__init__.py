"""Developer tools, not part of a running gateway: a local Synapse for tests,
the benchmark and ``up`` (``synapse_process``), and the preset-dictionary
builder (``dictbuild``)."""

from .synapse_process import LocalSynapse, free_port

__all__ = ["LocalSynapse", "free_port"]

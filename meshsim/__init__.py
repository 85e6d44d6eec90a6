"""meshsim: a userspace netem-style link fabric and scenario runner."""

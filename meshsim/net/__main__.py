"""``python -m meshsim.net``: what this machine offers the kernel backend."""

from .kernel import detect_support

found = detect_support()
print(("usable: " if found.usable else "unavailable: ") + found.describe())

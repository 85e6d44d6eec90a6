"""``python -m coap_gateway.tools.wireshark``: bring the Lua plugin's route tables up to date."""

from . import PLUGIN, write_plugin

if __name__ == "__main__":
    print(f"{PLUGIN}: {'updated' if write_plugin() else 'already current'}")

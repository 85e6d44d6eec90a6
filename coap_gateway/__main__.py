"""``python -m coap_gateway``: the ``coap-gateway`` command."""

import sys

from .app.cli import main

sys.exit(main())

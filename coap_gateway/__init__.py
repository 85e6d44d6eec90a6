"""Matrix over CoAP + CBOR + Flate inside Noise, for links of ~100 bit/s.

The wire core (codec, routes, status map, compression, Noise framing) is
sans-I/O: bytes and objects in, bytes and objects out.  Sockets, processes
and timers live in thin asyncio shells around it.
"""

__version__ = "0.1.0"

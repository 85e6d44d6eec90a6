"""The gateways (asyncio shells over the codec, push and transport layers).

``client.ClientGateway`` serves HTTP to an unchanged Matrix client and
carries each request over a ``transport.LinkEndpoint``;
``server.ServerGateway`` is the aiocoap resource that answers devices by
asking one homeserver through ``upstream.Upstream``.  What crosses the link
and what is bound is decided by ``codec.binding``; sync push by
``push.client``/``push.server``, carried out by ``push_client`` and
``push_server``.  ``stats`` holds the latency histograms the metrics read;
``uploads`` the bounded, on-disk block-wise requests both gateways take.
"""

from .client import CLIENT_ANSWERS, CLIENT_STATE, CORS_HEADERS, ClientGateway, ClientGatewayCounters
from .push_client import PushHost, SyncPushClient, SyncPushClientCounters
from .push_server import AckTracker, SyncPushServer, SyncPushServerCounters
from .server import (
    ADMIN_PREFIXES,
    ServerGateway,
    ServerGatewayConfig,
    ServerGatewayCounters,
)
from .stats import LATENCY_BUCKETS, Histogram, timed
from .uploads import BoundedUploads, UploadLimits, UploadSpool, assembled
from .upstream import Upstream, UpstreamError

__all__ = [
    "ADMIN_PREFIXES",
    "CORS_HEADERS",
    "LATENCY_BUCKETS",
    "AckTracker",
    "BoundedUploads",
    "CLIENT_ANSWERS",
    "CLIENT_STATE",
    "ClientGateway",
    "ClientGatewayCounters",
    "Histogram",
    "PushHost",
    "ServerGateway",
    "ServerGatewayConfig",
    "ServerGatewayCounters",
    "SyncPushClient",
    "SyncPushClientCounters",
    "SyncPushServer",
    "SyncPushServerCounters",
    "UploadLimits",
    "UploadSpool",
    "Upstream",
    "UpstreamError",
    "assembled",
    "timed",
]

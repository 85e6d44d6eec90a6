"""Sync push (sans-I/O): /sync and sliding-sync long-polls as one CoAP observation per stream.

``format`` is what both ends agree on byte for byte (which requests are
pushed long-polls, the idle-response template, the notification payload and
its per-observation deflate dictionary, the control requests); ``client``
decides which long-polls the client gateway answers from pushes;
``server`` decides which homeserver answers the server gateway pushes.
The asyncio shells are ``gateway.push_client`` and ``gateway.push_server``.
"""

from . import echo, format
from .client import (
    Action,
    Answer,
    Outcome,
    Plain,
    Register,
    Status,
    Stream,
    SyncPushClientConfig,
    SyncPushState,
    Wait,
)
from .echo import Sent, parse_send, sent_of
from .format import (
    END_FETCH,
    JSON,
    MAX_PUSH_BODY,
    OP_CANCEL,
    OP_CHECK,
    SLIDING,
    SYNC,
    LongPoll,
    PollKind,
    accepts_parts,
    control_request,
    end_fetch,
    is_push_request,
    offer_parts,
    parse_control,
    parse_long_poll,
    push_preset,
)
from .server import (
    Fetch,
    Finish,
    Folded,
    Push,
    PushChain,
    ReplayHistory,
    Retry,
    Silent,
    Step,
    SyncPushServerConfig,
    connection_key,
    stream_key,
)

__all__ = [
    "END_FETCH",
    "JSON",
    "MAX_PUSH_BODY",
    "OP_CANCEL",
    "OP_CHECK",
    "Action",
    "Answer",
    "Fetch",
    "Finish",
    "Folded",
    "LongPoll",
    "Outcome",
    "Plain",
    "PollKind",
    "Push",
    "PushChain",
    "Register",
    "ReplayHistory",
    "Retry",
    "SLIDING",
    "SYNC",
    "Sent",
    "Silent",
    "Status",
    "Step",
    "Stream",
    "SyncPushClientConfig",
    "SyncPushServerConfig",
    "SyncPushState",
    "Wait",
    "accepts_parts",
    "connection_key",
    "control_request",
    "echo",
    "end_fetch",
    "format",
    "is_push_request",
    "offer_parts",
    "parse_control",
    "parse_long_poll",
    "parse_send",
    "push_preset",
    "sent_of",
    "stream_key",
]

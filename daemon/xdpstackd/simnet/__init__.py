"""simnet: a deterministic simulated network for testing and benchmarking the stack.

Virtual time, one seed, per-direction impairments (delay, jitter, rate limit, loss,
reordering, duplication, corruption): every failure found here reproduces exactly from
its seed. See ``network.py`` for the event loop and ``apps.py`` for the traffic drivers.
"""

from xdpstackd.simnet.apps import StreamEndpoint, TransferResult, bulk_transfer, pattern_bytes
from xdpstackd.simnet.network import (
    Host,
    Impairments,
    Link,
    LinkDirection,
    LinkStats,
    Network,
    Switch,
)

__all__ = [
    "Host",
    "Impairments",
    "Link",
    "LinkDirection",
    "LinkStats",
    "Network",
    "StreamEndpoint",
    "Switch",
    "TransferResult",
    "bulk_transfer",
    "pattern_bytes",
]

"""Soak matrix: many seeds x a few hostile links, small bidirectional transfers + teardown.

Why: a single seeded test hits a timing bug only if that seed happens to; sweeping seeds
over several impairment mixes finds the rare interleavings, and each failure printed here
reproduces exactly from its (seed, link) pair.

    python -m xdpstackd.simnet.soak [--seeds 40] [--first-seed 1]

Prints one line per failure and exits 1 when any run failed.
"""

from __future__ import annotations

import argparse
import sys
import time

from xdpstackd.inetstack.config import StackConfig, TcpConfig
from xdpstackd.simnet.apps import bulk_transfer
from xdpstackd.simnet.network import Impairments, Network

LINKS: dict[str, Impairments] = {
    "hostile": Impairments(
        delay_s=0.001, jitter_s=0.0005, loss=0.1, reorder=0.1, duplicate=0.05, corrupt=0.05
    ),
    "bottleneck": Impairments(delay_s=0.01, rate_bps=10e6, queue_limit_bytes=30_000, loss=0.01),
    "very_lossy": Impairments(delay_s=0.0001, loss=0.2),
}
UP_BYTES = 200_000
DOWN_BYTES = 150_000
SETTLE_S = 120.0  # after the transfer: FIN retransmissions and TIME_WAIT (2 * 0.5 s)


def run_one(seed: int, link: str) -> str | None:
    """One transfer and teardown; the failure, or None."""
    config = StackConfig(tcp=TcpConfig(msl_s=0.5))
    net = Network(seed)
    net.add_host("a", "10.0.0.1/24", config=config)
    net.add_host("b", "10.0.0.2/24", config=config)
    net.link("a", "b", LINKS[link])
    result = bulk_transfer(net, "a", "b", up_bytes=UP_BYTES, down_bytes=DOWN_BYTES, timeout_s=600.0)
    if not result.ok:
        return "; ".join(result.errors) or "data differs"
    net.run_for(SETTLE_S)
    left = net.hosts["a"].connections() + net.hosts["b"].connections()
    if left:
        states = [c["connection_management"]["state"] for c in left]
        return f"connections left {SETTLE_S} s after the transfer: {states}"
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=40)
    parser.add_argument("--first-seed", type=int, default=1)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    failures = 0
    runs = 0
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        for link in LINKS:
            runs += 1
            error = run_one(seed, link)
            if error is not None:
                failures += 1
                print(f"seed {seed} link {link}: {error}", flush=True)
    print(f"{runs - failures} passed, {failures} failed ({time.perf_counter() - start:.0f} s wall)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Benchmark of the sans-IO core alone: two InetStacks back to back in one process.

Why: before the AF_XDP datapath and the kernel comparison exist, this is the number that
says how fast the protocol core is: how many segments per second it moves through
Ethernet + ARP + IPv4 + TCP on both ends, and how many small request/response round trips
it completes per second. No sockets, no kernel, no impairments: frames go from one
stack's ``poll_transmit`` straight into the other's ``receive_frames`` (after an
optional fixed delay in virtual time); the stacks see virtual time, the harness measures
wall time with ``time.perf_counter``.

Scenarios:
- bulk: the client sends ``--size-mb`` MB to the server, which reads to EOF.
- rr: ``--rr-count`` round trips of a 64-byte request and a 64-byte response on one
  connection (TCP_NODELAY on both ends, as request/response protocols set it).

    python bench/core_bench.py [--size-mb 32] [--rr-count 20000] [--delay-us 0] [--json]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

try:
    import xdpstackd  # noqa: F401
except ImportError:  # run from a checkout without installing
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "daemon"))

from xdpstackd.inetstack.completion import Completion
from xdpstackd.inetstack.config import StackConfig
from xdpstackd.inetstack.stack import InetStack
from xdpstackd.simnet.apps import StreamEndpoint, pattern_bytes

CLIENT_IP = "10.0.0.1"
SERVER_IP = "10.0.0.2"
PORT = 5001
RR_MESSAGE_BYTES = 64


class BackToBack:
    """Two stacks wired directly, with a virtual clock and an optional one-way delay."""

    def __init__(self, delay_s: float = 0.0, config: StackConfig | None = None) -> None:
        config = config if config is not None else StackConfig()
        self.client = InetStack(
            config,
            mac=bytes.fromhex("020000000001"),
            ip=CLIENT_IP,
            prefix_len=24,
            isn_secret=b"bench-client-key",
            seed=1,
        )
        self.server = InetStack(
            config,
            mac=bytes.fromhex("020000000002"),
            ip=SERVER_IP,
            prefix_len=24,
            isn_secret=b"bench-server-key",
            seed=2,
        )
        self.delay_s = delay_s
        self.now = 0.0
        self.frames_moved = 0
        self.timer_calls = 0
        self._in_flight: dict[int, deque[tuple[float, bytes]]] = {
            id(self.client): deque(),
            id(self.server): deque(),
        }
        self.handlers: dict[int, Callable[[Completion], Any]] = {}

    def clock(self) -> float:
        return self.now

    def _drain(self, stack: InetStack, peer: InetStack) -> bool:
        progressed = False
        frames = stack.poll_transmit()
        if frames:
            progressed = True
            if self.delay_s:
                queue = self._in_flight[id(peer)]
                arrive = self.now + self.delay_s
                queue.extend((arrive, f) for f in frames)
            else:
                self.frames_moved += len(frames)
                peer.receive_frames(frames, self.now)
        completions = stack.poll_completions()
        if completions:
            progressed = True
            handler = self.handlers.get(id(stack))
            if handler is not None:
                for completion in completions:
                    handler(completion)
        return progressed

    def _deliver_due(self) -> bool:
        progressed = False
        for stack in (self.client, self.server):
            queue = self._in_flight[id(stack)]
            if queue and queue[0][0] <= self.now:
                batch = []
                while queue and queue[0][0] <= self.now:
                    batch.append(queue.popleft()[1])
                self.frames_moved += len(batch)
                stack.receive_frames(batch, self.now)
                progressed = True
        return progressed

    def run_until(self, done: Callable[[], bool], timeout_s: float = 3600.0) -> bool:
        """Move frames and fire timers until ``done()``; False at ``timeout_s`` virtual."""
        client, server = self.client, self.server
        end = self.now + timeout_s
        while not done():
            progressed = self._drain(client, server)
            progressed |= self._drain(server, client)
            progressed |= self._deliver_due()
            if progressed:
                continue
            candidates = [d for d in (client.next_deadline(), server.next_deadline()) if d]
            for queue in self._in_flight.values():
                if queue:
                    candidates.append(queue[0][0])
            if not candidates:
                return done()  # nothing will ever happen again
            next_s = min(candidates)
            if next_s > end:
                return False
            self.now = max(self.now, next_s)
            for stack in (client, server):
                deadline = stack.next_deadline()
                if deadline is not None and deadline <= self.now:
                    self.timer_calls += 1
                    stack.handle_timers(self.now)
        return True

    def connect(self) -> tuple[int, int]:
        """A connection client -> server; returns (client qd, server qd)."""
        results: dict[str, Completion] = {}
        self.handlers[id(self.client)] = lambda c: results.setdefault("connect", c)
        self.handlers[id(self.server)] = lambda c: results.setdefault("accept", c)
        listener = self.server.socket()
        self.server.bind(listener, (SERVER_IP, PORT))
        self.server.listen(listener, 16)
        self.server.accept(listener)
        qd = self.client.socket()
        self.client.connect(qd, (SERVER_IP, PORT), self.now)
        if not self.run_until(lambda: len(results) == 2, 60.0):
            raise RuntimeError(f"no connection: {results}")
        if results["connect"].errno or results["accept"].errno:
            raise RuntimeError(f"connection failed: {results}")
        new_qd = results["accept"].new_qd
        assert new_qd is not None
        return qd, new_qd


def bench_bulk(size_bytes: int, delay_s: float) -> dict[str, Any]:
    wire = BackToBack(delay_s)
    client_qd, server_qd = wire.connect()
    data = pattern_bytes(size_bytes, 7)
    sender = StreamEndpoint(
        wire.client, client_qd, wire.clock, send_data=data, expect_bytes=0, closer=True
    )
    receiver = StreamEndpoint(
        wire.server, server_qd, wire.clock, send_data=b"", expect_bytes=size_bytes, closer=False
    )
    wire.handlers[id(wire.client)] = sender.on_completion
    wire.handlers[id(wire.server)] = receiver.on_completion
    frames_before, virtual_before = wire.frames_moved, wire.now
    start = time.perf_counter()
    sender.start()
    receiver.start()
    finished = wire.run_until(lambda: sender.done and receiver.done)
    wall_s = time.perf_counter() - start
    frames = wire.frames_moved - frames_before
    ok = (
        finished
        and sender.error is None
        and receiver.error is None
        and receiver.received_sha256() == hashlib.sha256(data).hexdigest()
    )
    counters = wire.client.counters
    return {
        "scenario": "bulk",
        "ok": ok,
        "bytes": size_bytes,
        "wall_s": wall_s,
        "virtual_s": wire.now - virtual_before,
        "segments": frames,
        "segments_per_s": frames / wall_s,
        "goodput_wall_mbit_s": size_bytes * 8 / wall_s / 1e6,
        "goodput_wall_mbyte_s": size_bytes / wall_s / 1e6,
        "retransmits": counters["tcp_retransmits"],
        "timer_calls": wire.timer_calls,
        "error": sender.error or receiver.error,
    }


def bench_rr(count: int, delay_s: float) -> dict[str, Any]:
    wire = BackToBack(delay_s)
    client_qd, server_qd = wire.connect()
    for stack, qd in ((wire.client, client_qd), (wire.server, server_qd)):
        stack.setsockopt(qd, "TCP_NODELAY", True)
    request = b"q" * RR_MESSAGE_BYTES
    response = b"r" * RR_MESSAGE_BYTES
    state = {"done": 0, "client_buf": 0, "server_buf": 0, "error": None}

    def on_client(c: Completion) -> None:
        if c.errno or (c.opcode == 4 and not c.data):
            state["error"] = f"client: {c}"
            return
        if c.opcode != 4:
            return
        state["client_buf"] += len(c.data)
        if state["client_buf"] >= RR_MESSAGE_BYTES:
            state["client_buf"] -= RR_MESSAGE_BYTES
            state["done"] += 1
            if state["done"] < count:
                wire.client.push(client_qd, request, wire.now)
        wire.client.pop(client_qd, None, wire.now)

    def on_server(c: Completion) -> None:
        if c.errno or (c.opcode == 4 and not c.data):
            state["error"] = f"server: {c}"
            return
        if c.opcode != 4:
            return
        state["server_buf"] += len(c.data)
        while state["server_buf"] >= RR_MESSAGE_BYTES:
            state["server_buf"] -= RR_MESSAGE_BYTES
            wire.server.push(server_qd, response, wire.now)
        wire.server.pop(server_qd, None, wire.now)

    wire.handlers[id(wire.client)] = on_client
    wire.handlers[id(wire.server)] = on_server
    frames_before, virtual_before = wire.frames_moved, wire.now
    start = time.perf_counter()
    wire.server.pop(server_qd, None, wire.now)
    wire.client.pop(client_qd, None, wire.now)
    wire.client.push(client_qd, request, wire.now)
    finished = wire.run_until(lambda: state["done"] >= count or state["error"] is not None)
    wall_s = time.perf_counter() - start
    frames = wire.frames_moved - frames_before
    return {
        "scenario": "rr",
        "ok": finished and state["error"] is None and state["done"] == count,
        "round_trips": state["done"],
        "message_bytes": RR_MESSAGE_BYTES,
        "wall_s": wall_s,
        "virtual_s": wire.now - virtual_before,
        "segments": frames,
        "segments_per_s": frames / wall_s,
        "round_trips_per_s": state["done"] / wall_s,
        "error": state["error"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mb", type=float, default=32.0, help="bulk size in MB (1e6 B)")
    parser.add_argument("--rr-count", type=int, default=20_000, help="request/response pairs")
    parser.add_argument("--delay-us", type=float, default=0.0, help="one-way delay, virtual")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    delay_s = args.delay_us / 1e6
    bulk = bench_bulk(int(args.size_mb * 1e6), delay_s)
    rr = bench_rr(args.rr_count, delay_s)
    results = {"python": sys.version.split()[0], "delay_s": delay_s, "bulk": bulk, "rr": rr}
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        print(
            f"bulk {bulk['bytes'] / 1e6:.1f} MB: {bulk['wall_s']:.2f} s wall, "
            f"{bulk['segments']} segments ({bulk['segments_per_s']:,.0f} segments/s), "
            f"goodput {bulk['goodput_wall_mbit_s']:.1f} Mbit/s wall, "
            f"{bulk['virtual_s']:.3f} s virtual, {bulk['retransmits']} retransmits"
            + ("" if bulk["ok"] else f"  FAILED: {bulk['error']}")
        )
        print(
            f"rr {rr['round_trips']} x {RR_MESSAGE_BYTES} B: {rr['wall_s']:.2f} s wall, "
            f"{rr['round_trips_per_s']:,.0f} round trips/s, "
            f"{rr['segments_per_s']:,.0f} segments/s"
            + ("" if rr["ok"] else f"  FAILED: {rr['error']}")
        )
    return 0 if bulk["ok"] and rr["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())

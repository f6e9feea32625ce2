"""Soak: a real ``xdpstackd`` with its datapath impaired, many clients opening,
transferring and closing connections against the kernel's TCP for minutes; then the
daemon must be back where it started.

    sudo .venv/bin/python tests/soak/run.py [--duration 180] [--workers 8] [--json FILE]

Not a pytest module (pytest collects ``test_*.py`` only), so ``make test`` never runs it.

What runs, until ``--duration`` seconds have passed (then every worker finishes the
connection it is in, bounded by ``OP_TIMEOUT_S``):

- ``--workers`` processes, each with its own client library connection (``Lib``): connect
  to a kernel echo server in the peer namespace, push a random payload (log-uniform size up
  to ``--max-bytes``), read the echo back, compare SHA-256, close; one connection in
  ``ABORT_EVERY`` is aborted (RST) part-way on purpose;
- one process serving as an echo server on xdpstack (listen, accept, echo, close at EOF)
  while ``--kernel-clients`` threads keep starting kernel clients against it (random size
  and count), whose tcp_peer.py reports are checked against the pattern's SHA-256;
- the impairment stage on the daemon's datapath both ways (``--impair``, default: 1% loss,
  1% reordering by 2 ms, 0.5% duplication, and 0.2% bit flips on rx).

Reported: connections completed (by side), bytes verified, errors by kind, the daemon's RSS
at start, after the warm-up (``--warmup``) and at the end, retransmissions and impairment
counters. Exit status 1 when: any data mismatch; the daemon's RSS grew more than
``--rss-growth-mb`` MiB from the end of the warm-up to the end; connections or AF_XDP
frames were not all given back once the clients had gone; the daemon died; errors exceeded
``--max-error-rate`` of the connections; or nothing completed at all.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import hashlib
import json
import multiprocessing
import os
import random
import shutil
import sys
import tempfile
import threading
import time
import traceback
from collections import Counter
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
TESTS = HERE.parent
for _path in (str(TESTS), str(TESTS / "integration")):
    if _path not in sys.path:
        sys.path.insert(0, _path)

import xdpstack  # noqa: E402
from xdpstackd.datapath.impair import parse_spec  # noqa: E402

OP_TIMEOUT_S = 120.0
PUSH_CHUNK = 256 << 10
ABORT_EVERY = 20  # one active connection in this many is aborted on purpose
ECHO_PORT_XDPSTACK = 7500
DEFAULT_IMPAIR = ["loss=0.01,reorder=0.01,reorder_delay=0.002,duplicate=0.005", "rx:corrupt=0.002"]


def errno_name(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError) and exc.errno is None:
        return "wait timeout"
    if isinstance(exc, OSError) and exc.errno in errno.errorcode:
        return errno.errorcode[exc.errno]
    return type(exc).__name__


def pick_size(rng: random.Random, max_bytes: int) -> int:
    """Log-uniform in [1, max_bytes]: many small transfers, some large ones."""
    return max(1, int(2 ** rng.uniform(0, max_bytes.bit_length() - 1)))


# --------------------------------------------------------------------------- workers
def _echo(lib: xdpstack.Lib, qd: int, data: bytes, deadline: float) -> bytes:
    """Push ``data`` (pipelined) and pop until as many bytes came back."""
    view = memoryview(data)
    sent = 0
    back = bytearray()
    push_qt: int | None = None
    pop_qt: int | None = lib.pop(qd)
    while len(back) < len(data):
        if push_qt is None and sent < len(data):
            push_qt = lib.push(qd, view[sent : sent + PUSH_CHUNK])
            sent += min(PUSH_CHUNK, len(data) - sent)
        tokens = [t for t in (pop_qt, push_qt) if t is not None]
        index, result = lib.wait_any(tokens, timeout=max(deadline - time.monotonic(), 0.01))
        if tokens[index] == pop_qt:
            if not result.data:
                raise ConnectionResetError(errno.ECONNRESET, "EOF before the whole echo")
            back += result.data
            pop_qt = lib.pop(qd) if len(back) < len(data) else None
        else:
            push_qt = None
    return bytes(back)


def active_worker(
    index: int, socket_path: str, peer: tuple[str, int], stop_at: float, max_bytes: int, q: Any
) -> None:
    """Connect, echo a random payload, verify, close; until ``stop_at``."""
    rng = random.Random(f"soak-active-{index}")
    out: dict[str, Any] = {"kind": "active", "completed": 0, "aborted": 0, "bytes": 0}
    errors: Counter[str] = Counter()
    mismatches: list[str] = []
    try:
        lib = xdpstack.connect(socket_path)
    except OSError as exc:
        q.put({**out, "errors": {f"client connect: {errno_name(exc)}": 1}, "mismatches": []})
        return
    n = 0
    while time.monotonic() < stop_at:
        n += 1
        data = rng.randbytes(pick_size(rng, max_bytes))
        qd = lib.socket()
        deadline = time.monotonic() + OP_TIMEOUT_S
        try:
            lib.wait(lib.connect(qd, peer), timeout=OP_TIMEOUT_S)
            if n % ABORT_EVERY == 0:
                lib.push(qd, data[: len(data) // 2 + 1])
                lib.abort(qd)
                out["aborted"] += 1
            else:
                back = _echo(lib, qd, data, deadline)
                if hashlib.sha256(back).digest() != hashlib.sha256(data).digest():
                    mismatches.append(f"worker {index} connection {n}: {len(data)} bytes")
                else:
                    out["bytes"] += 2 * len(data)  # both directions checked
                    out["completed"] += 1
                lib.close(qd)
        except OSError as exc:
            errors[errno_name(exc)] += 1
            with contextlib.suppress(OSError):
                lib.abort(qd)
        for qt in lib.pending():  # the aborted connection's cancelled operations
            lib.discard(qt)
    lib.disconnect()
    q.put({**out, "errors": dict(errors), "mismatches": mismatches})


def echo_server_worker(socket_path: str, addr: tuple[str, int], stop_at: float, q: Any) -> None:
    """An echo server on xdpstack for the kernel clients: many connections at once."""
    out: dict[str, Any] = {"kind": "passive", "completed": 0, "aborted": 0, "bytes": 0}
    errors: Counter[str] = Counter()
    lib = xdpstack.connect(socket_path)
    listener = lib.socket()
    lib.bind(listener, addr)
    lib.listen(listener, 128)
    ops: dict[int, tuple[str, int]] = {lib.accept(listener): ("accept", listener)}
    pushes: Counter[int] = Counter()  # pushes pending per descriptor
    at_eof: set[int] = set()

    def drop(qd: int) -> None:
        for qt, (_, owner) in list(ops.items()):
            if owner == qd:
                del ops[qt]
                with contextlib.suppress(KeyError):
                    lib.discard(qt)
        pushes.pop(qd, None)
        at_eof.discard(qd)

    # serve until stop_at, then until the kernel clients still running are done
    grace_until = stop_at + OP_TIMEOUT_S
    while time.monotonic() < grace_until and (time.monotonic() < stop_at or len(ops) > 1):
        try:
            index, result = lib.wait_any(list(ops), timeout=0.5)
        except TimeoutError:
            continue
        except OSError as exc:
            qt = getattr(exc, "qt", None)
            kind, qd = ops.pop(qt, ("?", -1))
            errors[f"{kind}: {errno_name(exc)}"] += 1
            if kind == "accept":
                ops[lib.accept(listener)] = ("accept", listener)
            elif qd >= 0:
                drop(qd)
                with contextlib.suppress(OSError):
                    lib.abort(qd)
            continue
        qt = list(ops)[index]
        kind, qd = ops.pop(qt)
        if kind == "accept":
            ops[lib.accept(listener)] = ("accept", listener)
            new = result.new_qd
            ops[lib.pop(new)] = ("pop", new)
        elif kind == "pop":
            if result.data:
                out["bytes"] += len(result.data)
                ops[lib.push(qd, result.data)] = ("push", qd)
                pushes[qd] += 1
                ops[lib.pop(qd)] = ("pop", qd)
            else:
                at_eof.add(qd)
        else:
            pushes[qd] -= 1
        if qd in at_eof and pushes[qd] == 0:
            drop(qd)
            lib.close(qd)
            out["completed"] += 1
    lib.disconnect()
    q.put({**out, "errors": dict(errors), "mismatches": []})


def _run_worker(target: Any, *args: Any) -> None:
    """Process entry: a worker's crash is reported, not lost."""
    q = args[-1]
    try:
        target(*args)
    except BaseException:
        q.put(
            {
                "kind": "crash",
                "completed": 0,
                "aborted": 0,
                "bytes": 0,
                "errors": {"worker crashed": 1},
                "mismatches": [],
                "traceback": traceback.format_exc(),
            }
        )


# --------------------------------------------------------------------------- the driver
def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def impair_toml(specs: list[str], seed: int) -> str:
    per: dict[str, dict[str, float]] = {"rx": {}, "tx": {}}
    for spec in specs:
        directions, values = parse_spec(spec)
        for direction in directions:
            per[direction].update(values)
    lines = ["[impair]", f"seed = {seed}"]
    for direction in ("rx", "tx"):
        lines.append(f"[impair.{direction}]")
        lines += [f"{k} = {v!r}" for k, v in per[direction].items()]
    return "\n".join(lines) + "\n"


class KernelClients(threading.Thread):
    """Keeps starting kernel echo clients (tcp_peer.py) against xdpstack's echo server and
    checks what they report, until ``stop_at``."""

    def __init__(self, index: int, netns: str, host: str, stop_at: float, max_bytes: int):
        super().__init__(daemon=True, name=f"kernel-clients-{index}")
        self.index, self.netns, self.host = index, netns, host
        self.stop_at, self.max_bytes = stop_at, max_bytes
        self.completed = 0
        self.bytes = 0
        self.errors: Counter[str] = Counter()
        self.mismatches: list[str] = []

    def run(self) -> None:
        from netfixtures import kernel_tcp_client, pattern_sha256

        rng = random.Random(f"soak-kernel-{self.index}")
        while time.monotonic() < self.stop_at:
            count = rng.randint(1, 4)
            nbytes = pick_size(rng, self.max_bytes)
            seed = rng.randrange(1 << 30)
            peer = kernel_tcp_client(
                self.netns,
                self.host,
                ECHO_PORT_XDPSTACK,
                "echo",
                nbytes=nbytes,
                seed=seed,
                count=count,
                io_timeout=OP_TIMEOUT_S,
                connect_timeout=30,
            )
            try:
                results = peer.results(count, timeout=OP_TIMEOUT_S + 30)
            except Exception as exc:
                self.errors[f"kernel client: {type(exc).__name__}"] += 1
                results = peer.conns
            finally:
                peer.stop()
            want = pattern_sha256(nbytes, seed)
            for conn in results:
                if conn["error"] is not None:
                    self.errors[f"kernel client: {conn['error']}"] += 1
                elif conn["rx_bytes"] != nbytes or conn["rx_sha256"] != want:
                    self.mismatches.append(
                        f"kernel client {conn['local']}: {conn['rx_bytes']} of {nbytes} bytes "
                        f"back, sha256 {'ok' if conn['rx_sha256'] == want else 'differs'}"
                    )
                else:
                    self.completed += 1
                    self.bytes += 2 * nbytes


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--duration", type=float, default=180.0, help="seconds of traffic")
    p.add_argument("--warmup", type=float, default=30.0, help="RSS baseline after this long")
    p.add_argument("--workers", type=int, default=8, help="active client processes")
    p.add_argument("--kernel-clients", type=int, default=2, help="threads of kernel clients")
    p.add_argument("--max-bytes", type=int, default=4 << 20, help="largest transfer")
    p.add_argument(
        "--impair", action="append", help=f"daemon --impair spec (default: {DEFAULT_IMPAIR})"
    )
    p.add_argument("--seed", type=int, default=1, help="impairment seed")
    p.add_argument("--rss-growth-mb", type=float, default=32.0, help="allowed RSS growth, MiB")
    p.add_argument("--max-error-rate", type=float, default=0.01)
    p.add_argument("--json", metavar="FILE", help="write the figures as JSON too")
    p.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    args = p.parse_args(argv)
    if os.geteuid() != 0:
        print("soak: needs root (namespaces, veth, XDP, AF_XDP)", file=sys.stderr)
        return 2

    from xdpd_harness import DaemonProcess

    from xdpstackd.netns import cleanup_stale, create_veth_pair, destroy, unique_prefix

    specs = args.impair or DEFAULT_IMPAIR
    workdir = Path(tempfile.mkdtemp(prefix="xdpstack-soak-"))
    cleanup_stale()
    pair = create_veth_pair(prefix=unique_prefix("soak"), host_ns="new")
    config = '[daemon]\nlog_level = "info"\n[tcp]\nmsl_s = 1.0\n' + impair_toml(specs, args.seed)
    daemon = DaemonProcess(pair=pair, workdir=workdir, name="xdpstackd-soak", config_text=config)
    ctx = multiprocessing.get_context("spawn")
    procs: list[Any] = []
    threads: list[KernelClients] = []
    echo_server = None
    failures: list[str] = []
    report: dict[str, Any] = {"impair_specs": specs, "duration_s": args.duration}
    ok = False
    try:
        from netfixtures import kernel_tcp_server

        daemon.start()
        print(f"soak: daemon pid {daemon.pid} on {pair.host_if}, log {daemon.log_path}")
        echo_server = kernel_tcp_server(pair.netns, 0, "echo", io_timeout=OP_TIMEOUT_S)
        rss_start = rss_kib(daemon.pid)
        before = daemon.stats()
        t0 = time.monotonic()
        stop_at = t0 + args.duration
        q = ctx.Queue()
        procs.append(
            ctx.Process(
                target=_run_worker,
                args=(
                    echo_server_worker,
                    str(daemon.socket_path),
                    (daemon.stack_ip, ECHO_PORT_XDPSTACK),
                    stop_at,
                    q,
                ),
            )
        )
        for i in range(args.workers):
            procs.append(
                ctx.Process(
                    target=_run_worker,
                    args=(
                        active_worker,
                        i,
                        str(daemon.socket_path),
                        (daemon.peer_ip, echo_server.port),
                        stop_at,
                        args.max_bytes,
                        q,
                    ),
                )
            )
        for proc in procs:
            proc.start()
        time.sleep(1.0)  # the echo server listens before kernel clients come
        threads = [
            KernelClients(i, pair.netns, daemon.stack_ip, stop_at, args.max_bytes)
            for i in range(args.kernel_clients)
        ]
        for thread in threads:
            thread.start()
        rss_warm = None
        samples = []
        while time.monotonic() < stop_at:
            time.sleep(min(10.0, max(stop_at - time.monotonic(), 0.0)))
            if not daemon.running:
                failures.append(f"the daemon died: {daemon.describe()}")
                break
            elapsed = time.monotonic() - t0
            rss = rss_kib(daemon.pid)
            if rss_warm is None and elapsed >= args.warmup:
                rss_warm = rss
            st = daemon.stats()
            samples.append((round(elapsed), rss))
            print(
                f"soak: {elapsed:5.0f}s rss {rss / 1024:6.1f} MiB, connections "
                f"{st['connections']}, retransmits {st['stack'].get('tcp_retransmits', 0)}",
                flush=True,
            )
        results = []
        for _ in procs:
            try:
                results.append(q.get(timeout=OP_TIMEOUT_S + 60))
            except Exception:
                failures.append("a worker did not report within its bound")
                break
        for proc in procs:
            proc.join(10)
        for thread in threads:
            thread.join(OP_TIMEOUT_S + 60)
        # the clients are gone: every connection and AF_XDP frame must come back
        settled: dict[str, Any] = {}

        def idle() -> bool:
            settled.update(daemon.stats())
            return (
                settled["connections"] == 0
                and settled["sockets"] == 0
                and settled["datapath"].get("free_frames") == before["datapath"]["free_frames"]
            )

        deadline = time.monotonic() + 30
        while not idle() and time.monotonic() < deadline:
            time.sleep(0.5)
        if not idle():
            failures.append(
                f"not idle 30 s after the clients left: {settled['connections']} connections, "
                f"{settled['sockets']} sockets, free frames {settled['datapath'].get('free_frames')}"
                f" (at start {before['datapath']['free_frames']})"
            )
        rss_end = rss_kib(daemon.pid)
        rss_warm = rss_warm if rss_warm is not None else rss_start
        totals: Counter[str] = Counter()
        errors: Counter[str] = Counter()
        mismatches: list[str] = []
        for r in results:
            kind = "active" if r["kind"] == "active" else r["kind"]
            totals[f"{kind}_completed"] += r["completed"]
            totals["aborted_on_purpose"] += r["aborted"]
            totals["bytes_verified" if kind == "active" else "bytes_echoed"] += r["bytes"]
            errors.update(r["errors"])
            mismatches += r["mismatches"]
            if "traceback" in r:
                print(r["traceback"], file=sys.stderr)
        for thread in threads:
            totals["kernel_client_completed"] += thread.completed
            totals["bytes_verified"] += thread.bytes
            errors.update(thread.errors)
            mismatches += thread.mismatches
        completed = totals["active_completed"] + totals["kernel_client_completed"]
        stack = settled.get("stack", {})
        dp = settled.get("datapath", {})
        report.update(
            {
                "elapsed_s": round(time.monotonic() - t0, 1),
                "connections_completed": completed,
                "active_completed": totals["active_completed"],
                "kernel_client_completed": totals["kernel_client_completed"],
                "aborted_on_purpose": totals["aborted_on_purpose"],
                "bytes_verified": totals["bytes_verified"],
                "errors": dict(errors),
                "mismatches": mismatches,
                "rss_kib": {"start": rss_start, "after_warmup": rss_warm, "end": rss_end},
                "rss_samples": samples,
                "rss_growth_bound_mib": args.rss_growth_mb,
                "retransmits": stack.get("tcp_retransmits", 0),
                "rto_expirations": stack.get("tcp_rto_expirations", 0),
                "checksum_drops": stack.get("tcp_drop_bad_checksum", 0)
                + stack.get("ipv4_drop_bad_checksum", 0),
                "impair": {k: v for k, v in dp.items() if k.startswith("impair_")},
            }
        )
        growth_mib = (rss_end - rss_warm) / 1024
        if mismatches:
            failures.append(f"{len(mismatches)} data mismatches: {mismatches[:5]}")
        if growth_mib > args.rss_growth_mb:
            failures.append(
                f"daemon RSS grew {growth_mib:.1f} MiB after the warm-up "
                f"(bound {args.rss_growth_mb} MiB)"
            )
        n_errors = sum(errors.values())
        if completed == 0:
            failures.append("no connection completed")
        elif n_errors > args.max_error_rate * (completed + n_errors):
            failures.append(f"{n_errors} errors in {completed + n_errors} connections")
        if not daemon.running:
            failures.append("the daemon is not running at the end")
        ok = not failures
    except BaseException:
        traceback.print_exc()
        failures.append("the soak driver failed")
    finally:
        for proc in procs:
            if proc.is_alive():
                proc.kill()
                proc.join(5)
        from netfixtures import stop_all_peers

        stop_all_peers()
        if daemon.proc is not None:
            try:
                daemon.stop_and_check()
            except AssertionError as exc:
                failures.append(str(exc).splitlines()[0])
                ok = False
            finally:
                daemon.force_cleanup()
        destroy(pair)
    report["failures"] = failures
    report["result"] = "PASS" if ok else "FAIL"
    print_report(report)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    if ok and not args.keep:
        shutil.rmtree(workdir, ignore_errors=True)
    else:
        print(f"soak: logs in {workdir}")
    return 0 if ok else 1


def print_report(r: dict[str, Any]) -> None:
    rss = r.get("rss_kib", {})
    lines = [
        f"soak {r['result']}: {r.get('elapsed_s', '?')} s, impairments {r['impair_specs']}",
        f"  connections completed  {r.get('connections_completed', 0)} "
        f"(xdpstack clients {r.get('active_completed', 0)}, kernel clients "
        f"{r.get('kernel_client_completed', 0)}; {r.get('aborted_on_purpose', 0)} aborted on "
        "purpose)",
        f"  bytes verified         {r.get('bytes_verified', 0):,} (SHA-256, both directions)",
        f"  errors by kind         {r.get('errors') or 'none'}",
        f"  data mismatches        {len(r.get('mismatches', []))}",
        f"  daemon RSS (MiB)       start {rss.get('start', 0) / 1024:.1f}, after warm-up "
        f"{rss.get('after_warmup', 0) / 1024:.1f}, end {rss.get('end', 0) / 1024:.1f} "
        f"(bound: +{r.get('rss_growth_bound_mib')} MiB after warm-up)",
        f"  retransmits            {r.get('retransmits', 0)} "
        f"(RTO expirations {r.get('rto_expirations', 0)}), "
        f"checksum drops {r.get('checksum_drops', 0)}",
        f"  impairment counters    {r.get('impair', {})}",
    ]
    for failure in r.get("failures", []):
        lines.append(f"  FAILURE: {failure}")
    print("\n".join(lines), flush=True)


if __name__ == "__main__":
    sys.exit(main())

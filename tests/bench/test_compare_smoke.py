"""``bench/compare.py --smoke``: the whole comparison, tiny, end to end.

Runs the real thing (namespaces, a veth pair, ``xdpstackd``, kernel and xdpstack servers,
kernel clients) with the smallest sizes, then checks that the JSON has every metric for
both stacks, that the PNG was written, and that nothing it created was left behind.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from integration_support import require_integration

REPO = Path(__file__).resolve().parents[2]
COMPARE = REPO / "bench" / "compare.py"

#: Every metric of the summary, measured on both stacks.
METRICS = (
    "bulk_up_mtu1500",
    "bulk_down_mtu1500",
    "bulk_up_mtu3506",
    "bulk_down_mtu3506",
    "rr_p50_us",
    "rr_p99_us",
    "rr_per_s",
    "cps",
    "conns_held",
    "hold_ramp_s",
    "left_after_release",
    "mem_per_conn",
    "mem_total_per_conn",
)
#: Metrics that must be positive on both stacks (memory deltas of a few hundred idle
#: connections may round to nothing; no connection may be left after the release).
POSITIVE = tuple(m for m in METRICS if not m.startswith(("mem", "left")))


def _require_tools() -> None:
    if os.geteuid() != 0:
        require_integration("needs root (namespaces, veth pairs, XDP)")
    for tool in ("ip", "ethtool", "ss"):
        if shutil.which(tool) is None:
            require_integration(f"`{tool}` is not installed")
    if importlib.util.find_spec("matplotlib") is None:
        require_integration("matplotlib is missing (the bench extra: pip install -e '.[bench]')")
    if not (Path(sys.executable).parent / "xdpstackd").exists() and not shutil.which("xdpstackd"):
        require_integration("xdpstackd is not installed (run scripts/setup.sh)")


def _netns() -> set[str]:
    try:
        return set(os.listdir("/run/netns"))
    except FileNotFoundError:
        return set()


@pytest.mark.integration
def test_compare_smoke(tmp_path: Path) -> None:
    _require_tools()
    output = tmp_path / "compare-smoke.json"
    proc = subprocess.Popen(
        [sys.executable, str(COMPARE), "--smoke", "--output", str(output)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=REPO,
    )
    try:
        log, _ = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        proc.kill()
        log, _ = proc.communicate()
        pytest.fail(f"compare.py --smoke did not finish in 300 s:\n{log}")
    assert proc.returncode == 0, f"compare.py --smoke exited {proc.returncode}:\n{log}"

    doc = json.loads(output.read_text())
    # A measurement that failed once and passed when tried again is reported, not fatal.
    lost = [e for e in doc["errors"] if not e.get("recovered")]
    assert lost == [], f"measurements failed: {lost}\n{log}"
    summary = doc["summary"]
    for metric in METRICS:
        assert metric in summary, f"{metric} missing from the summary:\n{log}"
        stacks = summary[metric]["stacks"]
        for stack in ("kernel", "xdpstack"):
            assert stack in stacks, f"{metric}: no {stack} result:\n{log}"
            assert isinstance(stacks[stack]["median"], float | int)
            if metric in POSITIVE:
                assert stacks[stack]["median"] > 0, f"{metric} {stack}: {stacks[stack]}"
        if metric != "left_after_release":  # 0 on both: no ratio
            assert summary[metric].get("ratio") is not None, f"{metric}: no ratio"
    for metric in ("bulk_up_mtu1500", "bulk_down_mtu3506"):
        assert "kernel-no-offload" in summary[metric]["stacks"], metric
    # connections per second: the resets leave no TIME_WAIT on the port, on either side
    for record in doc["records"]:
        if record["metric"] == "cps":
            assert set(record["values"]["time_wait"].values()) == {0}, record
    # idle connections: --smoke spreads its 200 over two ports, each with a server and a
    # client process of its own (the layout that takes 100,000 past RLIMIT_NOFILE); every
    # one is held, and the paced release leaves none in the stack
    holds = [r for r in doc["records"] if r["metric"] == "hold"]
    assert {r["stack"] for r in holds} == {"kernel", "xdpstack"}
    for record in holds:
        values = record["values"]
        assert values["server_processes"] == values["client_processes"] == 2, values
        assert len(set(values["ports"])) == 2, values
        assert values["held"] == values["accepted"] == 200, values
        assert values["left_after_release"] == 0, values
    assert doc["git"]["start"]["commit"], doc["git"]  # the commit that ran is recorded

    png = output.with_suffix(".png")
    assert png.exists() and png.stat().st_size > 0, f"no plot at {png}"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "xdpstack/kernel" in log  # the ratio table was printed

    # nothing left behind: its namespaces (named after its PID) and its processes
    leftovers = {name for name in _netns() if name.startswith(f"xdps-bench-{proc.pid}-")}
    assert not leftovers, f"namespaces left behind: {leftovers}"

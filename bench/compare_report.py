"""Summaries, the ratio table and the plot of ``bench/compare.py``'s records.

``summarise(records)`` turns the raw records (one per measurement) into one entry per
metric: for each stack the values of all repetitions, their median, min, max and spread
(half the range, in % of the median), and the ratio of the medians xdpstack/kernel (and
xdpstack/kernel-without-offloads for bulk goodput). ``table`` prints it; ``plot`` draws it.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable
from pathlib import Path
from typing import Any

KERNEL = "kernel"
KERNEL_NO_OFFLOAD = "kernel-no-offload"
XDPSTACK = "xdpstack"
STACKS = (KERNEL, KERNEL_NO_OFFLOAD, XDPSTACK)
COLOURS = {KERNEL: "#4c72b0", KERNEL_NO_OFFLOAD: "#8fb0de", XDPSTACK: "#dd8452"}


def _get(record: Any, name: str) -> Any:
    return record[name] if isinstance(record, dict) else getattr(record, name)


def stats(values: list[float]) -> dict[str, Any]:
    median = statistics.median(values)
    low, high = min(values), max(values)
    spread = (high - low) / 2 / abs(median) * 100 if median else 0.0
    return {
        "values": values,
        "median": median,
        "min": low,
        "max": high,
        "spread_pct": spread,
        "n": len(values),
    }


def _collect(records: Iterable[Any], metric: str, mtu: int | None, field: str) -> dict:
    out: dict[str, list[float]] = {}
    for record in records:
        if _get(record, "metric") != metric:
            continue
        if mtu is not None and _get(record, "mtu") != mtu:
            continue
        value = _get(record, "values").get(field)
        if value is None:
            continue
        out.setdefault(_get(record, "stack"), []).append(float(value))
    return out


def _entry(label: str, unit: str, better: str, by_stack: dict[str, list[float]]) -> dict:
    entry: dict[str, Any] = {"label": label, "unit": unit, "better": better, "stacks": {}}
    for stack in STACKS:
        if by_stack.get(stack):
            entry["stacks"][stack] = stats(by_stack[stack])
    s = entry["stacks"]
    if XDPSTACK in s and KERNEL in s and s[KERNEL]["median"]:
        entry["ratio"] = s[XDPSTACK]["median"] / s[KERNEL]["median"]
    if XDPSTACK in s and KERNEL_NO_OFFLOAD in s and s[KERNEL_NO_OFFLOAD]["median"]:
        entry["ratio_no_offload"] = s[XDPSTACK]["median"] / s[KERNEL_NO_OFFLOAD]["median"]
    return entry


def summarise(records: list[Any]) -> dict[str, dict[str, Any]]:
    """One entry per metric (see the module docstring), in display order."""
    summary: dict[str, dict[str, Any]] = {}
    mtus = sorted({_get(r, "mtu") for r in records if _get(r, "metric").startswith("bulk")})
    for direction, words in (("up", "client -> stack end"), ("down", "stack end -> client")):
        for mtu in mtus:
            by = _collect(records, f"bulk_{direction}", mtu, "goodput_mbit_s")
            if by:
                label = f"bulk {direction} ({words}), MTU {mtu}"
                summary[f"bulk_{direction}_mtu{mtu}"] = _entry(label, "Mbit/s", "higher", by)
    for key, field, label, unit, better in (
        ("rr_p50_us", "p50_us", "64 B round trip p50", "us", "lower"),
        ("rr_p99_us", "p99_us", "64 B round trip p99", "us", "lower"),
        ("rr_per_s", "round_trips_per_s", "64 B round trips per second", "1/s", "higher"),
    ):
        by = _collect(records, "rr", None, field)
        if by:
            summary[key] = _entry(label, unit, better, by)
    by = _collect(records, "cps", None, "connections_per_s")
    if by:
        summary["cps"] = _entry(
            "connections per second (connect, 64 B each way, close)", "1/s", "higher", by
        )
    held = _collect(records, "hold", None, "held")
    if held:
        summary["conns_held"] = _entry(
            "idle connections held (bound --conns)", "conns", "higher", held
        )
        summary["hold_ramp_s"] = _entry(
            "idle ramp, seconds to the held count",
            "s",
            "lower",
            _collect(records, "hold", None, "ramp_wall_seconds"),
        )
        left = _collect(records, "hold", None, "left_after_release")
        if left:
            summary["left_after_release"] = _entry(
                "idle connections left after the release", "conns", "lower", left
            )
        summary["mem_per_conn"] = _entry(
            "stack memory per idle connection", "B", "lower", _stack_memory(records)
        )
        summary["mem_total_per_conn"] = _entry(
            "stack + server app memory per idle connection", "B", "lower", _total_memory(records)
        )
    return summary


def _hold_records(records: list[Any], stack: str) -> list[Any]:
    return [r for r in records if _get(r, "metric") == "hold" and _get(r, "stack") == stack]


def _client_slab_share(records: list[Any]) -> float | None:
    """Kernel slab growth per connection in the xdpstack runs: the client end's sockets
    alone (the daemon's connections live in its RSS, not in the kernel)."""
    values = [_get(r, "values")["slab_per_conn_b"] for r in _hold_records(records, XDPSTACK)]
    return statistics.median(values) if values else None


def _kernel_server_slab(record: Any, client_share: float | None) -> float:
    slab = _get(record, "values")["slab_per_conn_b"]
    if client_share is not None and 0 < client_share < slab:
        return slab - client_share
    return slab / 2  # both ends are kernel sockets of the same kind


def _stack_memory(records: list[Any]) -> dict[str, list[float]]:
    share = _client_slab_share(records)
    out: dict[str, list[float]] = {}
    for r in _hold_records(records, KERNEL):
        out.setdefault(KERNEL, []).append(_kernel_server_slab(r, share))
    for r in _hold_records(records, XDPSTACK):
        out.setdefault(XDPSTACK, []).append(_get(r, "values")["daemon_rss_per_conn_b"])
    return out


def _total_memory(records: list[Any]) -> dict[str, list[float]]:
    share = _client_slab_share(records)
    out: dict[str, list[float]] = {}
    for r in _hold_records(records, KERNEL):
        app = _get(r, "values")["server_rss_per_conn_b"]
        out.setdefault(KERNEL, []).append(_kernel_server_slab(r, share) + app)
    for r in _hold_records(records, XDPSTACK):
        v = _get(r, "values")
        out.setdefault(XDPSTACK, []).append(v["daemon_rss_per_conn_b"] + v["server_rss_per_conn_b"])
    return out


# =====================================================================================
# the table
# =====================================================================================
def _fmt(value: float) -> str:
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def _cell(entry: dict[str, Any], stack: str) -> str:
    s = entry["stacks"].get(stack)
    if s is None:
        return "-"
    if s["n"] == 1:
        return f"{_fmt(s['median'])} (1 run)"
    return f"{_fmt(s['median'])} ±{s['spread_pct']:.0f}%"


def table(summary: dict[str, dict[str, Any]]) -> str:
    """Medians (± half the range over the repetitions) and the ratio xdpstack/kernel."""
    header = ("metric", "unit", "kernel", "kernel no-offload", "xdpstack", "xdpstack/kernel")
    rows = [header]
    for entry in summary.values():
        ratio = entry.get("ratio")
        text = "-" if ratio is None else f"{ratio:.3g}"
        if entry.get("ratio_no_offload") is not None:
            text += f" (/no-offload {entry['ratio_no_offload']:.3g})"
        arrow = "↑" if entry["better"] == "higher" else "↓"
        rows.append(
            (
                entry["label"],
                f"{entry['unit']} {arrow}",
                _cell(entry, KERNEL),
                _cell(entry, KERNEL_NO_OFFLOAD),
                _cell(entry, XDPSTACK),
                text,
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = []
    for n, row in enumerate(rows):
        lines.append("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    lines.append(
        "(median ± half the range over repetitions, or the one value of a single run; "
        "↑ higher is better, ↓ lower)"
    )
    return "\n".join(lines)


# =====================================================================================
# the plot
# =====================================================================================
def plot(summary: dict[str, dict[str, Any]], path: Path, title: str = "") -> Path:
    """Grouped bars per metric family (min-max whiskers) and the ratio bars; a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(18, 10))
    groups = [
        (
            "bulk goodput, one connection",
            "Mbit/s",
            [k for k in summary if k.startswith("bulk")],
            True,
        ),
        ("64 B round-trip latency", "µs", ["rr_p50_us", "rr_p99_us"], True),
        ("rates", "per second", ["rr_per_s", "cps"], True),
        ("idle connections held", "connections", ["conns_held", "left_after_release"], False),
        ("memory per idle connection", "bytes", ["mem_per_conn", "mem_total_per_conn"], False),
    ]
    for ax, (name, unit, keys, log_scale) in zip(axes.flat, groups):
        _grouped(ax, summary, [k for k in keys if k in summary], name, unit, log_scale)
    _ratios(axes.flat[5], summary)
    if title:
        fig.suptitle(title, fontsize=14)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


_SHORT = {
    "rr_p50_us": "p50",
    "rr_p99_us": "p99",
    "rr_per_s": "round trips",
    "cps": "connections",
    "conns_held": "held",
    "hold_ramp_s": "ramp",
    "left_after_release": "left after release",
    "mem_per_conn": "stack",
    "mem_total_per_conn": "stack + app",
}
#: Longer names for the ratio panel, where the metrics stand side by side.
_RATIO_NAMES = {
    "rr_p50_us": "round trip p50",
    "rr_p99_us": "round trip p99",
    "rr_per_s": "round trips/s",
    "cps": "connections/s",
    "conns_held": "idle conns held",
    "hold_ramp_s": "idle ramp time",
    "mem_per_conn": "memory/conn (stack)",
    "mem_total_per_conn": "memory/conn (+ app)",
}


def _short(key: str) -> str:
    if key.startswith("bulk_"):
        _, direction, mtu = key.split("_")
        return f"{direction}\n{mtu.replace('mtu', 'MTU ')}"
    return _SHORT.get(key, key)


def _grouped(ax: Any, summary: dict, keys: list[str], name: str, unit: str, log: bool) -> None:
    ax.set_title(name)
    if not keys:
        ax.text(0.5, 0.5, "not measured", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
        return
    stacks = [s for s in STACKS if any(s in summary[k]["stacks"] for k in keys)]
    width = 0.8 / len(stacks)
    for i, stack in enumerate(stacks):
        xs, heights, lows, highs = [], [], [], []
        for x, key in enumerate(keys):
            s = summary[key]["stacks"].get(stack)
            if s is None:
                continue
            xs.append(x + (i - (len(stacks) - 1) / 2) * width)
            heights.append(s["median"])
            lows.append(s["median"] - s["min"])
            highs.append(s["max"] - s["median"])
        bars = ax.bar(xs, heights, width, label=stack, color=COLOURS[stack])
        ax.errorbar(xs, heights, yerr=[lows, highs], fmt="none", ecolor="black", capsize=3)
        for bar, value in zip(bars, heights):
            ax.annotate(
                _fmt(value),
                (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                ha="center",
                va="bottom",
                fontsize=7,
            )
    ax.set_xticks(range(len(keys)), [_short(k) for k in keys])
    ax.set_ylabel(unit)
    if log:
        ax.set_yscale("log")
    ax.legend(fontsize=8)


def _ratios(ax: Any, summary: dict) -> None:
    keys = [k for k, e in summary.items() if e.get("ratio") is not None]
    ax.set_title("xdpstack / kernel (medians)")
    if not keys:
        ax.set_axis_off()
        return
    ratios = [summary[k]["ratio"] for k in keys]
    colours = []
    for k, r in zip(keys, ratios):
        good = r >= 1 if summary[k]["better"] == "higher" else r <= 1
        colours.append("#55a868" if good else "#c44e52")
    ys = list(range(len(keys)))
    ax.barh(ys, ratios, color=colours)
    ax.axvline(1.0, color="black", linewidth=1)
    ax.set_xscale("log")
    ax.set_yticks(
        ys, [_RATIO_NAMES.get(k) or "bulk " + _short(k).replace("\n", ", ") for k in keys]
    )
    ax.invert_yaxis()
    for y, r in zip(ys, ratios):
        ax.annotate(
            f"{r:.3g}", (r, y), va="center", fontsize=8, xytext=(3, 0), textcoords="offset points"
        )
    ax.set_xlabel("ratio (green: xdpstack better, red: worse)")

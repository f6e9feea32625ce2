"""What ``xdpstackctl`` prints: the JSON views (stable keys) and their text forms.

Each command has a *view* (a plain dict or list built from the daemon's reply; ``--json``
prints it) and a text renderer over the same view, so the two never disagree.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable, Sequence
from typing import Any

COMPONENTS = ("connection_management", "ordered_delivery", "flow_control", "congestion_control")

#: Layer prefixes of the stack's counters, in the order they are shown.
LAYERS = ("eth", "arp", "ipv4", "icmp", "tcp", "stack")

#: Drop reasons that are not malformed input (the frame parsed but was refused).
_NOT_MALFORMED = frozenset({"bad_checksum", "bad_source", "bad_sender_mac"})


# ===================================================================================
# small formatters
# ===================================================================================
def addr_view(value: Any) -> dict[str, Any] | None:
    if isinstance(value, list | tuple) and len(value) == 2:
        return {"address": value[0], "port": value[1]}
    return None


def fmt_addr(value: Any) -> str:
    if isinstance(value, dict) and "address" in value:
        return f"{value['address']}:{value['port']}"
    if isinstance(value, list | tuple) and len(value) == 2 and isinstance(value[0], str):
        return f"{value[0]}:{value[1]}"
    return "-" if value is None else str(value)


def fmt_duration(seconds: Any) -> str:
    if not isinstance(seconds, int | float) or isinstance(seconds, bool):
        return "-"
    if seconds < 0.001:
        return f"{seconds * 1e6:.0f}us"
    if seconds < 0.01:
        return f"{seconds * 1e3:.3f}ms"
    if seconds < 1:
        return f"{seconds * 1e3:.1f}ms".replace(".0ms", "ms")
    return f"{seconds:.2f}s"


def fmt_uptime(seconds: Any) -> str:
    if not isinstance(seconds, int | float):
        return "-"
    s = int(seconds)
    days, s = divmod(s, 86400)
    hours, s = divmod(s, 3600)
    minutes, s = divmod(s, 60)
    if days:
        return f"{days}d{hours:02d}h{minutes:02d}m"
    if hours:
        return f"{hours}h{minutes:02d}m{s:02d}s"
    if minutes:
        return f"{minutes}m{s:02d}s"
    return f"{seconds:.1f}s" if seconds < 10 else f"{s}s"


def fmt_value(name: str, value: Any) -> str:
    """A snapshot field for ``show``: addresses as ip:port, durations (``*_s``) in ms/s,
    booleans as yes/no, absent values as ``-``."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if name in ("local", "remote") or (
        isinstance(value, list) and len(value) == 2 and isinstance(value[0], str)
    ):
        return fmt_addr(value)
    if isinstance(value, float):
        if name.endswith("_s"):
            return fmt_duration(value)
        return f"{value:.6g}" if abs(value) < 1e6 else f"{value:.3f}"
    if isinstance(value, dict):
        return ", ".join(f"{k}={fmt_value(k, v)}" for k, v in value.items()) or "-"
    if isinstance(value, list):
        return ", ".join(fmt_value(name, v) for v in value) or "-"
    return str(value)


def _cell(value: Any) -> str:
    return "-" if value is None else str(value)


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]], right: Iterable[int] = ()) -> str:
    """Columns separated by two spaces; columns in ``right`` right-aligned."""
    right = set(right)
    cells = [[_cell(c) for c in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        for i, c in enumerate(row):
            widths[i] = max(widths[i], len(c))
    last = len(headers) - 1

    def line(row: Sequence[str]) -> str:
        parts = []
        for i, c in enumerate(row):
            if i in right:
                parts.append(c.rjust(widths[i]))
            else:
                parts.append(c if i == last else c.ljust(widths[i]))
        return "  ".join(parts).rstrip()

    return "\n".join([line(headers), *(line(r) for r in cells)])


def pairs(items: Sequence[tuple[str, Any]], indent: int = 2, width: int | None = None) -> str:
    """``name value`` pairs in aligned columns, filled top to bottom (like ``ls``)."""
    if not items:
        return " " * indent + "(none)"
    if width is None:
        width = min(shutil.get_terminal_size((100, 24)).columns, 120)
    names = [n for n, _ in items]
    values = [_cell(v) for _, v in items]
    cell = max(map(len, names)) + 1 + max(map(len, values))
    gap = 4
    ncols = max(1, (width - indent + gap) // (cell + gap))
    nrows = -(-len(items) // ncols)
    ncols = -(-len(items) // nrows)
    col_name = [max(len(n) for n in names[c * nrows : (c + 1) * nrows]) for c in range(ncols)]
    col_val = [max(len(v) for v in values[c * nrows : (c + 1) * nrows]) for c in range(ncols)]
    lines = []
    for r in range(nrows):
        parts = []
        for c in range(ncols):
            i = c * nrows + r
            if i < len(items):
                parts.append(f"{names[i].ljust(col_name[c])} {values[i].rjust(col_val[c])}")
        lines.append(" " * indent + (" " * gap).join(parts))
    return "\n".join(line.rstrip() for line in lines)


# ===================================================================================
# status
# ===================================================================================
def render_status(status: dict[str, Any], me: int | None = None) -> str:
    out = []
    head = f"xdpstackd {status.get('version', '?')}  pid {status.get('pid', '?')}"
    head += f"  up {fmt_uptime(status.get('uptime_s'))}  protocol {status.get('protocol', '?')}"
    out.append(head)
    rows: list[tuple[str, str]] = [("socket", str(status.get("socket", "-")))]
    iface = status.get("interface") or {}
    if iface:
        extra = [f"mtu {iface['mtu']}"] if iface.get("mtu") else []
        if iface.get("mac"):
            extra.append(f"mac {iface['mac']}")
        text = iface.get("name") or "-"
        rows.append(("interface", f"{text}  ({', '.join(extra)})" if extra else text))
    address = status.get("address") or {}
    if address:
        text = f"{address.get('ip')}/{address.get('prefix_len')}  {address.get('mode')}"
        if address.get("gateway"):
            text += f"  gateway {address['gateway']}"
        rows.append(("address", text))
    queues = status.get("queues") or {}
    if queues:
        text = f"{queues.get('count', 0)}"
        ids = queues.get("ids") or []
        if ids and queues.get("count", 0) > 1:
            text += f" (ids {','.join(map(str, ids))})"
        kind = {"af_xdp": "AF_XDP", "simulated": "simulated datapath"}.get(
            queues.get("datapath"), queues.get("datapath") or ""
        )
        modes = "/".join(queues.get("socket_modes") or [])
        text += f"  {kind}" + (f", {modes} mode" if modes else "")
        rows.append(("queues", text))
    prog = status.get("xdp_program")
    if prog:
        text = f"{prog.get('mode')} mode on {prog.get('interface')}"
        text += f", program id {prog['prog_id']}" if prog.get("prog_id") is not None else ""
        text += "" if prog.get("attached") else " (detached)"
        rows.append(("xdp", text))
    elif "xdp_program" in status:
        rows.append(("xdp", "none (no XDP program: frames come from a simulated datapath)"))
    rows.append(
        (
            "connections",
            f"{status.get('connections', 0)}  sockets {status.get('sockets', 0)}"
            f"  steered ports {len(status.get('steered_ports') or [])}",
        )
    )
    clients = status.get("clients") or []
    rows.append(("clients", str(len(clients))))
    width = max(len(k) for k, _ in rows)
    out.extend(f"{k.ljust(width)}  {v}" for k, v in rows)
    if clients:
        body = []
        for c in clients:
            mark = "*" if me is not None and c.get("id") == me else ""
            body.append(
                (
                    f"{c.get('id')}{mark}",
                    c.get("pid"),
                    c.get("uid"),
                    c.get("gid"),
                    len(c.get("descriptors") or []),
                    c.get("pending_tokens"),
                    c.get("requests"),
                    fmt_uptime(c.get("connected_s")),
                )
            )
        text = table(
            ("CLIENT", "PID", "UID", "GID", "FDS", "PENDING", "REQUESTS", "CONNECTED"),
            body,
            right=(1, 2, 3, 4, 5, 6),
        )
        out.extend("  " + line for line in text.splitlines())
        if me is not None:
            out.append("  (* this xdpstackctl)")
    return "\n".join(out)


# ===================================================================================
# connections and show
# ===================================================================================
def connection_row(conn: dict[str, Any]) -> dict[str, Any]:
    """One connection as ``connections --json`` prints it (stable keys; ``None`` where a
    handshake connection has no value yet)."""
    cm = conn.get("connection_management") or {}
    od = conn.get("ordered_delivery") or {}
    fc = conn.get("flow_control") or {}
    cc = conn.get("congestion_control") or {}
    owner = conn.get("owner") or None
    send_q = None
    if "unacked_bytes" in od or "unsent_bytes" in od:
        send_q = int(od.get("unacked_bytes") or 0) + int(od.get("unsent_bytes") or 0)
    return {
        "id": cm.get("id"),
        "state": cm.get("state"),
        "local": addr_view(cm.get("local")),
        "peer": addr_view(cm.get("remote")),
        "send_q": send_q,
        "recv_q": od.get("recv_queue_bytes"),
        "cwnd": cc.get("cwnd"),
        "ssthresh": cc.get("ssthresh"),
        "srtt_s": cc.get("rto_srtt_s"),
        "rttvar_s": cc.get("rto_rttvar_s"),
        "rto_s": cc.get("rto_s", cm.get("rto_s")),  # a handshake has its own RTO
        "retransmits": od.get("retransmits"),
        "snd_wnd": fc.get("snd_wnd"),
        "rcv_wnd": fc.get("rcv_wnd"),
        "mss": fc.get("mss"),
        "qd": cm.get("qd"),
        "owner": owner,
        "pid": owner.get("pid") if owner else None,
    }


def connections_view(conns: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = [connection_row(c) for c in conns]
    rows.sort(key=lambda r: (r["id"] is None, r["id"] or 0))
    return rows


def render_connections(rows: list[dict[str, Any]]) -> str:
    body = [
        (
            r["id"],
            r["state"],
            r["recv_q"],
            r["send_q"],
            fmt_addr(r["local"]),
            fmt_addr(r["peer"]),
            r["cwnd"],
            fmt_duration(r["srtt_s"]),
            fmt_duration(r["rto_s"]),
            r["retransmits"],
            r["pid"],
        )
        for r in rows
    ]
    return table(
        (
            "ID",
            "State",
            "Recv-Q",
            "Send-Q",
            "Local Address:Port",
            "Peer Address:Port",
            "Cwnd",
            "SRTT",
            "RTO",
            "Retrans",
            "PID",
        ),
        body,
        right=(0, 2, 3, 6, 7, 8, 9, 10),
    )


def show_view(conn: dict[str, Any]) -> dict[str, Any]:
    """``show --json``: the daemon's snapshot, components first, plus ``owner``."""
    out: dict[str, Any] = {name: conn[name] for name in COMPONENTS if name in conn}
    for key, value in conn.items():
        if key not in out:
            out[key] = value
    out.setdefault("owner", None)
    return out


def render_show(view: dict[str, Any]) -> str:
    cm = view.get("connection_management") or view.get("socket") or {}
    head = f"connection {cm.get('id', '-')}  {cm.get('state', '?')}"
    if cm.get("local") is not None:
        head += f"  {fmt_addr(cm.get('local'))}"
    if cm.get("remote") is not None:
        head += f" -> {fmt_addr(cm.get('remote'))}"
    owner = view.get("owner")
    if owner:
        head += f"  owner pid {owner.get('pid')} uid {owner.get('uid')}"
        head += f" (client {owner.get('client')}, qd {cm.get('qd')})"
    elif cm.get("qd") is None and "connection_management" in view:
        head += "  (no descriptor)"
    sections = [(k, v) for k, v in view.items() if isinstance(v, dict) and k != "owner"]
    if not any(k in COMPONENTS[1:] for k, _ in sections) and "connection_management" in view:
        head += "\n(handshake: only connection management exists until it is established)"
    width = max((len(f) for _, fields in sections for f in fields), default=0)
    out = [head]
    for name, fields in sections:
        out.append("")
        out.append(name.replace("_", " "))
        for field, value in fields.items():
            out.append(f"  {field.ljust(width)}  {fmt_value(field, value)}")
    return "\n".join(out)


# ===================================================================================
# stats
# ===================================================================================
def _drop_parts(name: str) -> tuple[str, str] | None:
    layer, sep, reason = name.partition("_drop_")
    return (layer, reason) if sep else None


def stats_view(stats: dict[str, Any]) -> dict[str, Any]:
    """``stats --json``: ``summary`` (fixed keys), ``counters`` by layer (drops apart),
    ``drops`` by layer and reason, ``datapath``, ``xdp`` (None without a program),
    ``api`` and ``engine``."""
    stack = {k: v for k, v in (stats.get("stack") or {}).items() if isinstance(v, int)}
    counters: dict[str, dict[str, int]] = {}
    drops: dict[str, dict[str, int]] = {}
    for name, value in sorted(stack.items()):
        parts = _drop_parts(name)
        if parts is not None:
            drops.setdefault(parts[0], {})[parts[1]] = value
            continue
        layer, _, rest = name.partition("_")
        if layer not in LAYERS or not rest:
            layer, rest = "other", name
        counters.setdefault(layer, {})[rest] = value
    all_drops = [(reason, v) for per in drops.values() for reason, v in per.items()]
    xdp = stats.get("xdp")
    summary = {
        "segments_in": stack.get("tcp_segments_in", 0),
        "segments_out": stack.get("tcp_segments_out", 0),
        "retransmits": stack.get("tcp_retransmits", 0),
        "fast_retransmits": stack.get("tcp_fast_retransmits", 0),
        "rto_expirations": stack.get("tcp_rto_expirations", 0),
        "resets_out": stack.get("tcp_resets_out", 0),
        "drops": sum(v for _, v in all_drops),
        "checksum_failures": sum(v for r, v in all_drops if r == "bad_checksum"),
        "malformed": sum(
            v
            for r, v in all_drops
            if r == "truncated" or (r.startswith("bad_") and r not in _NOT_MALFORMED)
        ),
        "frames_in": stack.get("eth_frames_in", 0),
        "frames_out": stack.get("eth_frames_out", 0),
        "connections": stats.get("connections", 0),
        "sockets": stats.get("sockets", 0),
        "xdp_redirected": xdp.get("redirected") if isinstance(xdp, dict) else None,
        "xdp_passed": xdp.get("passed") if isinstance(xdp, dict) else None,
    }
    return {
        "summary": summary,
        "counters": {layer: counters[layer] for layer in (*LAYERS, "other") if layer in counters},
        "drops": drops,
        "datapath": stats.get("datapath") or {},
        "xdp": xdp if isinstance(xdp, dict) else None,
        "api": stats.get("api") or {},
        "engine": {
            "connections": stats.get("connections", 0),
            "sockets": stats.get("sockets", 0),
            "steered_ports": stats.get("steered_ports") or [],
            "wakeups": stats.get("wakeups", 0),
            "uptime_s": stats.get("uptime_s"),
        },
    }


def render_stats(view: dict[str, Any]) -> str:
    s = view["summary"]
    summary = [
        ("segments in", s["segments_in"]),
        ("segments out", s["segments_out"]),
        ("retransmits", s["retransmits"]),
        ("fast retransmits", s["fast_retransmits"]),
        ("RTO expirations", s["rto_expirations"]),
        ("resets out", s["resets_out"]),
        ("drops", s["drops"]),
        ("checksum failures", s["checksum_failures"]),
        ("malformed", s["malformed"]),
        ("connections", s["connections"]),
    ]
    if s["xdp_redirected"] is not None:
        summary += [("xdp redirected", s["xdp_redirected"]), ("xdp passed", s["xdp_passed"])]
    out = ["summary", pairs(summary)]
    for layer, values in view["counters"].items():
        out += [layer, pairs(list(values.items()))]
    drops = [
        (f"{layer} {reason}", v)
        for layer, per in view["drops"].items()
        for reason, v in per.items()
    ]
    out += ["drops", pairs(drops)]
    out += ["datapath", pairs(list(view["datapath"].items()))]
    if view["xdp"] is not None:
        out += ["xdp program", pairs(list(view["xdp"].items()))]
    else:
        out += ["xdp program", "  (none)"]
    engine = view["engine"]
    out += [
        "engine",
        pairs(
            [
                ("sockets", engine["sockets"]),
                ("steered ports", len(engine["steered_ports"])),
                ("wakeups", engine["wakeups"]),
                ("uptime", fmt_uptime(engine["uptime_s"])),
            ]
        ),
    ]
    out += ["api", pairs(list(view["api"].items()))]
    return "\n".join(out)


# ===================================================================================
# steering
# ===================================================================================
def render_steering(view: dict[str, Any]) -> str:
    entries = view.get("entries") or []
    body = [(e.get("address"), e.get("port")) for e in entries]
    text = table(("Address", "Port"), body, right=(1,))
    n = len(entries)
    count = f"{n} {'entry' if n == 1 else 'entries'}"
    if view.get("source") == "xdp":
        return f"{text}\n{count} in the XDP steering map"
    return f"{text}\n{count} (the engine's ports; no XDP program)"

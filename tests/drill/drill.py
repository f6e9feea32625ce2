"""Packetdrill-style scripts for the sans-IO TCP core (``TcpPeer``) in virtual time.

A drill script is a conversation between the stack under test and a scripted remote
peer, written one event per line the way RFC figures and ``tcpdump`` show segments::

    // RFC 9293 3.5: passive open.
    --config delayed_ack_s=0.04
    0.000 listen 8080 -> l
    0.100 < S 0:0(0) win 65535 <mss 1460,wscale 7>
       +0 > S. 0:0(0) ack 1 <mss 1460,wscale *>
    +0.05 < . 1:1(0) ack 1 win 512
       +0 accept l = c

The stack is ``192.168.0.1``; the scripted peer is ``192.0.2.1``. A script drives one
connection (plus, for a passive open, its listener).

Header lines
------------
Lines starting with ``--`` come before the first event and set up the run:

``--config key=value ...``
    Override ``TcpConfig`` fields, e.g. ``--config rto_min_s=0.2 msl_s=1 nodelay=true``.
``--tolerance_ms=N``
    How far (ms) an outbound segment may be from its scripted time (default 1).
``--remote_isn=N``
    The scripted peer's ISN (default 1000000); sequence numbers it sends are relative to it.
``--local_port=N`` / ``--remote_port=N``
    Ports used before ``listen``/``connect`` name them (defaults 8080 and 40000), e.g. for
    segments sent to a closed port.

Times
-----
Every event line starts with a time, in seconds of virtual time:

* ``0.100`` absolute; ``+0.040`` relative to the previous line's time.
* ``*`` (outbound lines only): whenever the next segment comes after the previous line
  (waiting up to an hour of virtual time); the line's time becomes the time it was sent.

Before a line runs, virtual time advances to the line's time and the core's timers run
at each deadline on the way (``handle_timers``). Timers due at or before a line's time
fire before the line. An outbound segment must appear within the tolerance of its line's
time; one that appears earlier, or any segment no line expects, fails the script.

Segments
--------
``< FLAGS [SEQ] [ack N] [win N] [<OPTIONS>] ["payload"]``  inbound (peer -> stack)
``> FLAGS [SEQ] [ack N] [win N] [<OPTIONS>] ["payload"]``  outbound expectation
``> nothing``  no segment is sent up to this line's time

* ``FLAGS``: tcpdump letters, ``S`` ``F`` ``R`` ``P`` ``U`` and ``.`` for ACK (``S.``,
  ``P.``, ``F.``, ``R.``, ``.``). Outbound flags must match exactly.
* ``SEQ`` is ``start:end(len)`` with ``len`` the payload length (SYN and FIN are not
  counted, as in packetdrill: ``S 0:0(0)``, ``F. 1:1(0)``). Inbound numbers are
  relative to the peer's ISN; outbound ones to the stack's ISN, which the runner learns
  from the first SYN the stack sends for each connection (after ``connect``, or after a
  SYN arrives while the 4-tuple has no connection or one in TIME-WAIT; retransmitted
  SYNs must repeat it). Before that the stack's ISN counts as 0, so numbers are
  absolute: ``< . 0:0(0) ack 5000`` to a closed port draws ``> R 5000:5000(0)``.
* ``ack N``: inbound, relative to the stack's ISN; outbound, relative to the peer's ISN.
* ``win N``: the raw 16-bit window field (unscaled). Inbound default: 65535.
* ``<OPTIONS>``: comma-separated ``mss N``, ``wscale N``, ``sackOK``, ``TS val N ecr N``,
  ``sack L:R ...``, ``nop``, ``eol``, ``opt KIND [HEX]`` (any other kind). Inbound options
  are sent in the order written (padded with EOL to a 4-byte multiple); none by default.
  Outbound: ``<>`` means "no options"; an omitted list is not checked; a written list
  must equal the options sent, ignoring order, ``nop`` and ``eol``; ``*`` stands for any
  value (``wscale *``).
* Payload: inbound data is a deterministic byte pattern of the stream offset unless a
  quoted literal (Python escapes) follows. Outbound payloads are always compared with the
  bytes the application pushed at that stream offset.

Outbound fields not written are not checked: ``> . ack 1001`` checks flags and ack only.

Application calls
-----------------
Sockets have names. ``OP ...`` without ``= RESULT`` starts an operation; ``OP ... =
RESULT`` checks its result at this line's time (starting it first if none is
outstanding), failing if it has not completed yet. ``RESULT`` is a number, ``EOF``, an
errno name (``ECONNREFUSED``), or ``pending`` (outstanding, not completed). ``=`` and
``->`` stand between blanks (``backlog=1`` is one word).

``listen PORT [backlog=N] [-> NAME]``      socket + bind 0.0.0.0:PORT + listen (NAME: ``l``)
``accept L [= NAME]``                      accept on listener L; the new socket is NAME
``connect IP:PORT [-> NAME]``              socket + connect (NAME: ``c``); result later:
``connect NAME = 0 | ERRNO``
``push NAME N | "text" [= ERRNO]``        push N pattern bytes, or a literal
``pop NAME [SIZE] [= N | EOF | ERRNO | pending]``  popped bytes are checked against what
                                           the peer sent at that stream offset
``close NAME`` / ``abort NAME``            graceful close / RST
``setsockopt NAME OPTION VALUE``           e.g. ``setsockopt c TCP_NODELAY 1``
``expect_state NAME STATE``                RFC 9293 state, e.g. ``FIN_WAIT_2``; ``CLOSED``
                                           when the connection no longer exists;
                                           ``LISTEN`` for a listener

A call that raises ``OSError`` fails the script unless the line says ``= ERRNO``.

Comments start with ``//``. From Python, ``Drill().run_text(text)`` runs a script (call it
again to continue the same conversation); ``drill.peer`` and ``drill.counters`` are then
available for further checks. Failures raise :class:`DrillFailure` (an ``AssertionError``)
naming the script line, what was expected, what happened and the virtual time.
"""

from __future__ import annotations

import ast
import dataclasses
import errno
import random
import re
import socket
import struct
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from xdpstackd.inetstack.completion import Completion, OpCode
from xdpstackd.inetstack.config import TcpConfig
from xdpstackd.inetstack.counters import Counters

if TYPE_CHECKING:
    from xdpstackd.inetstack.layer4.tcp.peer import TcpPeer

LOCAL_IP = "192.168.0.1"
REMOTE_IP = "192.0.2.1"
DEFAULT_REMOTE_ISN = 1_000_000
DEFAULT_LOCAL_PORT = 8080
DEFAULT_REMOTE_PORT = 40_000
DEFAULT_TOLERANCE_S = 0.001
DEFAULT_INBOUND_WINDOW = 65535
#: The largest TCP segment an IPv4 datagram can carry (65535 - 20-byte IP header).
MAX_TCP_SEGMENT_BYTES = 65515
#: How long a ``*`` line waits (virtual seconds) for a segment before giving up.
ANY_TIME_LIMIT_S = 3600.0
#: Deadlines this close to a line's time count as due (float arithmetic on deadlines).
EPSILON_S = 1e-9

FIN, SYN, RST, PSH, ACK, URG, ECE, CWR = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20, 0x40, 0x80
#: tcpdump's letters in tcpdump's order; ``.`` (ACK) always comes last.
_FLAG_LETTERS: tuple[tuple[str, int], ...] = (
    ("S", SYN),
    ("F", FIN),
    ("R", RST),
    ("P", PSH),
    ("U", URG),
    ("E", ECE),
    ("W", CWR),
    (".", ACK),
)
_LETTER_TO_FLAG = dict(_FLAG_LETTERS)

_MOD32 = 1 << 32
_HDR = struct.Struct("!HHIIBBHHH")
_OPT_KINDS = {"eol": 0, "nop": 1, "mss": 2, "wscale": 3, "sackOK": 4, "sack": 5, "TS": 8}
_KIND_NAMES = {v: k for k, v in _OPT_KINDS.items()}


# ---------------------------------------------------------------------------------------
# errors
# ---------------------------------------------------------------------------------------
class DrillSyntaxError(ValueError):
    """The script itself is malformed (reported before anything runs)."""


class DrillFailure(AssertionError):
    """The stack did not behave as the script says."""


# ---------------------------------------------------------------------------------------
# small helpers
# ---------------------------------------------------------------------------------------
def ip_to_int(ip: str) -> int:
    """``"192.0.2.1"`` -> host-order int, as the stack represents IPv4 addresses."""
    return struct.unpack("!I", socket.inet_aton(ip))[0]


LOCAL_IP_INT = ip_to_int(LOCAL_IP)
REMOTE_IP_INT = ip_to_int(REMOTE_IP)


def pattern_bytes(offset: int, length: int) -> bytes:
    """The deterministic payload at stream ``offset``: byte ``i`` is ``i mod 251``.

    251 is prime, so a stream misplaced by any amount short of 251 bytes shows up.
    """
    return bytes((offset + i) % 251 for i in range(length))


def flags_to_str(flags: int) -> str:
    """tcpdump-style flags: ``S``, ``S.``, ``P.``, ``F.``, ``R``, ``.``."""
    return "".join(ch for ch, bit in _FLAG_LETTERS if flags & bit) or "none"


def _checksum(data: bytes, initial: int = 0) -> int:
    """RFC 1071 one's-complement sum, written independently of the stack's own."""
    if len(data) % 2:
        data += b"\0"
    total = initial + sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def _pseudo_header(src_ip: int, dst_ip: int, length: int) -> int:
    return _checksum(struct.pack("!IIBBH", src_ip, dst_ip, 0, 6, length))


def _fmt_time(t: float) -> str:
    return f"{t:.6f}".rstrip("0").rstrip(".") if t % 1 else f"{t:.3f}"


# ---------------------------------------------------------------------------------------
# TCP options and segments as the runner sees them (independent of the stack's parser)
# ---------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Option:
    """One TCP option. ``values`` holds its numbers; ``None`` is a wildcard (``*``).

    ``kind`` is a name from ``_OPT_KINDS`` or ``"opt"`` (then ``values[0]`` is the
    numeric kind and ``data`` its raw bytes). SACK block edges are stored *relative*
    to the ISN of the side whose data they describe.
    """

    kind: str
    values: tuple[int | None, ...] = ()
    data: bytes = b""

    def __str__(self) -> str:
        v = ["*" if x is None else str(x) for x in self.values]
        if self.kind == "TS":
            return f"TS val {v[0]} ecr {v[1]}"
        if self.kind == "sack":
            return "sack " + " ".join(f"{v[i]}:{v[i + 1]}" for i in range(0, len(v), 2))
        if self.kind == "opt":
            return f"opt {v[0]} {self.data.hex()}".rstrip()
        return " ".join([self.kind, *v])

    def matches(self, actual: Option) -> bool:
        """True when ``actual`` is this option, with ``None`` values matching anything."""
        if self.kind != actual.kind or len(self.values) != len(actual.values):
            return False
        if self.kind == "opt" and self.data != actual.data:
            return False
        return all(e is None or e == a for e, a in zip(self.values, actual.values))


def _option_bytes(opt: Option, sack_base: int) -> bytes:
    """Wire bytes of an inbound option (``sack_base``: ISN the SACK edges are relative to)."""
    if any(v is None for v in opt.values):
        raise DrillSyntaxError(f"'*' is only allowed in outbound options: {opt}")
    vals = [int(v) for v in opt.values if v is not None]
    if opt.kind in ("eol", "nop"):
        return bytes([_OPT_KINDS[opt.kind]])
    if opt.kind == "mss":
        return struct.pack("!BBH", 2, 4, vals[0])
    if opt.kind == "wscale":
        return bytes([3, 3, vals[0]])
    if opt.kind == "sackOK":
        return bytes([4, 2])
    if opt.kind == "TS":
        return struct.pack("!BBII", 8, 10, vals[0], vals[1])
    if opt.kind == "sack":
        edges = [(v + sack_base) % _MOD32 for v in vals]
        return struct.pack(f"!BB{len(edges)}I", 5, 2 + 4 * len(edges), *edges)
    return bytes([vals[0], 2 + len(opt.data)]) + opt.data


def _parse_wire_options(buf: bytes, sack_base: int) -> tuple[Option, ...]:
    """Options of an outbound segment, in wire order; raises ``ValueError`` if malformed."""
    out: list[Option] = []
    i = 0
    while i < len(buf):
        kind = buf[i]
        if kind == 0:
            out.append(Option("eol"))
            break
        if kind == 1:
            out.append(Option("nop"))
            i += 1
            continue
        if i + 1 >= len(buf) or buf[i + 1] < 2 or i + buf[i + 1] > len(buf):
            raise ValueError(f"malformed option kind {kind} at byte {i} of {buf.hex()}")
        length = buf[i + 1]
        body = buf[i + 2 : i + length]
        name = _KIND_NAMES.get(kind)
        expected_len = {"mss": 4, "wscale": 3, "sackOK": 2, "TS": 10}.get(name or "")
        if expected_len is not None and length != expected_len:
            raise ValueError(f"option {name} has length {length}, not {expected_len}")
        if name == "mss":
            out.append(Option("mss", struct.unpack("!H", body)))
        elif name == "wscale":
            out.append(Option("wscale", (body[0],)))
        elif name == "sackOK":
            out.append(Option("sackOK"))
        elif name == "TS":
            out.append(Option("TS", struct.unpack("!II", body)))
        elif name == "sack" and len(body) % 8 == 0 and body:
            edges = struct.unpack(f"!{len(body) // 4}I", body)
            out.append(Option("sack", tuple((e - sack_base) % _MOD32 for e in edges)))
        else:
            out.append(Option("opt", (kind,), bytes(body)))
        i += length
    return tuple(out)


@dataclass(frozen=True, slots=True)
class WireSegment:
    """A segment the stack sent, decoded by the runner. Numbers are absolute."""

    src_ip: int
    dst_ip: int
    src_port: int
    dst_port: int
    seq: int
    ack: int
    flags: int
    window: int
    options: tuple[Option, ...]
    payload: bytes

    @classmethod
    def decode(cls, src_ip: int, dst_ip: int, raw: bytes, sack_base: int) -> WireSegment:
        """Decode and verify (length, data offset, checksum); ``ValueError`` if broken."""
        if len(raw) < 20:
            raise ValueError(f"segment of {len(raw)} bytes is shorter than a TCP header")
        sport, dport, seq, ack, off, flags, win, _csum, _urg = _HDR.unpack_from(raw)
        hlen = (off >> 4) * 4
        if not 20 <= hlen <= len(raw):
            raise ValueError(f"data offset {hlen} in a {len(raw)}-byte segment")
        if _checksum(raw, _pseudo_header(src_ip, dst_ip, len(raw))) != 0xFFFF:
            raise ValueError("bad TCP checksum")
        options = _parse_wire_options(raw[20:hlen], sack_base)
        return cls(src_ip, dst_ip, sport, dport, seq, ack, flags, win, options, raw[hlen:])


@dataclass(frozen=True, slots=True)
class SeqRange:
    """``start:end(len)`` as written in a script (relative numbers)."""

    start: int
    end: int
    length: int

    def __str__(self) -> str:
        return f"{self.start}:{self.end}({self.length})"


@dataclass(frozen=True, slots=True)
class SegmentSpec:
    """A segment line: what to send, or what to expect (``None`` = not written)."""

    flags: int
    seq: SeqRange | None = None
    ack: int | None = None
    window: int | None = None
    options: tuple[Option, ...] | None = None
    payload: bytes | None = None

    def __str__(self) -> str:
        parts = [flags_to_str(self.flags)]
        if self.seq is not None:
            parts.append(str(self.seq))
        if self.ack is not None:
            parts.append(f"ack {self.ack}")
        if self.window is not None:
            parts.append(f"win {self.window}")
        if self.options is not None:
            parts.append("<" + ",".join(map(str, self.options)) + ">")
        if self.payload is not None:
            parts.append(repr(self.payload)[1:])
        return " ".join(parts)


# ---------------------------------------------------------------------------------------
# script lines
# ---------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Timing:
    """``kind`` is ``"abs"``, ``"rel"`` or ``"any"`` (``*``)."""

    kind: str
    value: float = 0.0


@dataclass(frozen=True, slots=True)
class Inbound:
    spec: SegmentSpec


@dataclass(frozen=True, slots=True)
class Outbound:
    spec: SegmentSpec | None  # None: ``> nothing``


@dataclass(frozen=True, slots=True)
class Call:
    """An application call: ``op`` and its tokens (the ``= RESULT`` part split off)."""

    op: str
    args: tuple[str, ...]
    result: str | None


Event = Inbound | Outbound | Call


@dataclass(frozen=True, slots=True)
class Line:
    where: str  # "script.pkt:12"
    text: str
    timing: Timing
    event: Event


@dataclass(slots=True)
class Script:
    name: str
    headers: list[tuple[str, str]] = field(default_factory=list)  # (where, text)
    lines: list[Line] = field(default_factory=list)


_SEQ_RE = re.compile(r"^(-?\d+):(-?\d+)\((\d+)\)$")
_CALLS = ("listen", "accept", "connect", "push", "pop", "close", "abort", "setsockopt")
_CALLS_ALL = (*_CALLS, "expect_state")


def _strip_comment(text: str) -> str:
    """Drop ``// ...`` outside double-quoted payloads."""
    in_quote = False
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == "\\" and in_quote:
            i += 2
            continue
        if ch == '"':
            in_quote = not in_quote
        elif not in_quote and text.startswith("//", i):
            return text[:i]
        i += 1
    return text


def _int(token: str, where: str, what: str) -> int:
    try:
        return int(token, 0)
    except ValueError:
        raise DrillSyntaxError(f"{where}: {what} must be an integer, got {token!r}") from None


def _opt_value(token: str, where: str) -> int | None:
    return None if token == "*" else _int(token, where, "option value")


def parse_options(text: str, where: str) -> tuple[Option, ...]:
    """``mss 1460,wscale 7,sackOK,nop,TS val 1 ecr 0`` -> options (SACK edges relative)."""
    if not text.strip():
        return ()
    out: list[Option] = []
    for item in text.split(","):
        words = item.split()
        if not words:
            raise DrillSyntaxError(f"{where}: empty option in <{text}>")
        name, rest = words[0], words[1:]
        if name in ("nop", "eol", "sackOK") and not rest:
            out.append(Option(name))
        elif name in ("mss", "wscale") and len(rest) == 1:
            out.append(Option(name, (_opt_value(rest[0], where),)))
        elif name == "TS" and len(rest) == 4 and rest[0] == "val" and rest[2] == "ecr":
            out.append(Option("TS", (_opt_value(rest[1], where), _opt_value(rest[3], where))))
        elif name == "sack" and rest:
            edges: list[int | None] = []
            for block in rest:
                left, sep, right = block.partition(":")
                if not sep:
                    raise DrillSyntaxError(f"{where}: SACK block must be L:R, got {block!r}")
                edges += [_opt_value(left, where), _opt_value(right, where)]
            out.append(Option("sack", tuple(edges)))
        elif name == "opt" and 1 <= len(rest) <= 2:
            kind = _int(rest[0], where, "option kind")
            data = bytes.fromhex(rest[1]) if len(rest) == 2 else b""
            out.append(Option("opt", (kind,), data))
        else:
            raise DrillSyntaxError(f"{where}: cannot read option {item.strip()!r}")
    return tuple(out)


def parse_segment(text: str, where: str) -> SegmentSpec:
    """The part of a segment line after ``<`` / ``>``."""
    payload: bytes | None = None
    m = re.search(r'"((?:[^"\\]|\\.)*)"\s*$', text)
    if m:
        payload = ast.literal_eval('b"' + m.group(1) + '"')
        text = text[: m.start()]
    options: tuple[Option, ...] | None = None
    m = re.search(r"<([^<>]*)>", text)
    if m:
        options = parse_options(m.group(1), where)
        text = text[: m.start()] + text[m.end() :]
    tokens = text.split()
    if not tokens:
        raise DrillSyntaxError(f"{where}: segment line without flags")
    flags = 0
    for ch in tokens[0]:
        if ch not in _LETTER_TO_FLAG:
            raise DrillSyntaxError(
                f"{where}: unknown flag {ch!r} in {tokens[0]!r} (use S F R P U E W .)"
            )
        flags |= _LETTER_TO_FLAG[ch]
    seq = ack = window = None
    i = 1
    while i < len(tokens):
        tok = tokens[i]
        sm = _SEQ_RE.match(tok)
        if sm and seq is None and i == 1:
            start, end, length = (int(g) for g in sm.groups())
            if end - start != length:
                raise DrillSyntaxError(f"{where}: {tok}: end - start must equal len")
            seq = SeqRange(start, end, length)
            i += 1
        elif tok in ("ack", "win") and i + 1 < len(tokens):
            value = _int(tokens[i + 1], where, tok)
            if tok == "ack":
                ack = value
            else:
                window = value
            i += 2
        else:
            raise DrillSyntaxError(f"{where}: unexpected {tok!r} in segment {text.strip()!r}")
    if ack is not None and not flags & ACK:
        raise DrillSyntaxError(f"{where}: 'ack {ack}' given but the flags have no '.'")
    if seq is not None and payload is not None and len(payload) != seq.length:
        raise DrillSyntaxError(f"{where}: payload has {len(payload)} bytes, seq says {seq}")
    return SegmentSpec(flags, seq, ack, window, options, payload)


def _split_result(tokens: list[str]) -> tuple[list[str], str | None]:
    if "=" in tokens:
        i = tokens.index("=")
        if i != len(tokens) - 2:
            raise DrillSyntaxError(f"'= RESULT' must end the line: {' '.join(tokens)}")
        return tokens[:i], tokens[i + 1]
    return tokens, None


def _tokenize_call(text: str) -> list[str]:
    """Split on blanks, keeping a double-quoted literal (with escapes) as one token.

    ``=`` and ``->`` are tokens of their own only between blanks, so ``backlog=1`` stays
    one token while ``pop c = 100`` has a result.
    """
    return re.findall(r'"(?:[^"\\]|\\.)*"|\S+', text)


def parse_line(raw: str, where: str) -> Line | None:
    """One event line, or None for a blank/comment line. Header lines are handled apart."""
    text = _strip_comment(raw).strip()
    if not text:
        return None
    time_tok, _, rest = text.partition(" ")
    rest = rest.strip()
    if time_tok == "*":
        timing = Timing("any")
    else:
        try:
            value = float(time_tok)
        except ValueError:
            raise DrillSyntaxError(
                f"{where}: a line must start with a time (0.1, +0.04 or *), got {time_tok!r}"
            ) from None
        if value < 0:
            raise DrillSyntaxError(f"{where}: negative time {time_tok}")
        timing = Timing("rel" if time_tok.startswith("+") else "abs", value)
    if not rest:
        raise DrillSyntaxError(f"{where}: a time with no event")
    event: Event
    if rest[0] in "<>":
        body = rest[1:].strip()
        if rest[0] == ">":
            event = Outbound(None if body == "nothing" else parse_segment(body, where))
        else:
            event = Inbound(parse_segment(body, where))
    else:
        try:
            tokens, result = _split_result(_tokenize_call(rest))
        except DrillSyntaxError as exc:
            raise DrillSyntaxError(f"{where}: {exc}") from None
        if tokens[0] not in _CALLS_ALL:
            raise DrillSyntaxError(
                f"{where}: unknown call {tokens[0]!r}; expected one of {', '.join(_CALLS_ALL)}"
            )
        event = Call(tokens[0], tuple(tokens[1:]), result)
    if timing.kind == "any" and not (isinstance(event, Outbound) and event.spec is not None):
        raise DrillSyntaxError(f"{where}: '*' is only for outbound segment expectations")
    return Line(where, raw.rstrip("\n"), timing, event)


def parse_script(text: str, name: str = "<script>") -> Script:
    """Parse a whole script; raises :class:`DrillSyntaxError` naming the line."""
    script = Script(name)
    for lineno, raw in enumerate(text.splitlines(), 1):
        where = f"{name}:{lineno}"
        stripped = _strip_comment(raw).strip()
        if stripped.startswith("--"):
            if script.lines:
                raise DrillSyntaxError(f"{where}: header {stripped!r} after the first event")
            script.headers.append((where, stripped))
            continue
        line = parse_line(raw, where)
        if line is not None:
            script.lines.append(line)
    return script


def _coerce_config(cfg: TcpConfig, key: str, value: str, where: str) -> Any:
    """A ``--config key=value`` value converted to the type of the field's default."""
    names = {f.name for f in dataclasses.fields(cfg)}
    if key not in names:
        raise DrillSyntaxError(
            f"{where}: TcpConfig has no field {key!r}; fields: {', '.join(sorted(names))}"
        )
    current = getattr(cfg, key)
    try:
        if isinstance(current, bool):
            if value.lower() not in ("1", "0", "true", "false", "yes", "no"):
                raise ValueError(value)
            return value.lower() in ("1", "true", "yes")
        if isinstance(current, int | float):
            return type(current)(ast.literal_eval(value))
        if isinstance(current, str):
            return value
        return ast.literal_eval(value)
    except (ValueError, SyntaxError):
        raise DrillSyntaxError(f"{where}: bad value {value!r} for {key}") from None


def _errno_value(name: str, where: str) -> int:
    code = getattr(errno, name, None)
    if not isinstance(code, int) or not name.startswith("E"):
        raise DrillSyntaxError(f"{where}: {name!r} is not an errno name")
    return code


# ---------------------------------------------------------------------------------------
# the runner
# ---------------------------------------------------------------------------------------
@dataclass(slots=True)
class _Emitted:
    time: float
    segment: WireSegment


@dataclass(slots=True)
class _Sock:
    qd: int
    kind: str  # "listener" | "connection"
    read_offset: int = 0  # remote-stream bytes popped so far


def _make_peer(config: TcpConfig) -> TcpPeer:
    """Build the TcpPeer under test (imported late: the runner parses scripts without it)."""
    from xdpstackd.inetstack.layer4.tcp.peer import TcpPeer

    return TcpPeer(
        config,
        LOCAL_IP_INT,
        counters=Counters(),
        isn_secret=b"xdpstack-drill-secret-key-000000",
        rng=random.Random(0),
    )


class Drill:
    """One conversation between a ``TcpPeer`` and a scripted remote peer.

    ``run_text``/``run_file`` may be called several times; later scripts continue where
    the previous one stopped (same peer, same virtual time, same socket names). Header
    lines are only accepted before the peer exists (that is, in the first script).
    """

    def __init__(self, config: TcpConfig | None = None, **config_overrides: Any) -> None:
        self.config = dataclasses.replace(config or TcpConfig(), **config_overrides)
        self._peer: TcpPeer | None = None
        self.now = 0.0
        self.tolerance_s = DEFAULT_TOLERANCE_S
        self.remote_isn = DEFAULT_REMOTE_ISN
        self.local_isn: int | None = None
        self._new_incarnation = True  # the next SYN the stack sends carries a new ISN
        self.local_port: int | None = DEFAULT_LOCAL_PORT
        self.remote_port = DEFAULT_REMOTE_PORT
        self.sockets: dict[str, _Sock] = {}
        self.local_stream = bytearray()  # everything the application pushed, in order
        self.remote_literals: dict[int, int] = {}  # stream offset -> byte, for literals
        self.outbox: deque[_Emitted] = deque()
        self.completions: dict[int, tuple[float, Completion]] = {}
        self.outstanding: dict[tuple[str, OpCode], int] = {}
        self._line_time = 0.0
        self._line: Line | None = None

    # -- public entry points ------------------------------------------------------------
    @property
    def peer(self) -> TcpPeer:
        """The ``TcpPeer`` under test (created when the first script starts)."""
        if self._peer is None:
            raise RuntimeError("no script has run yet: the peer is created by run_text()")
        return self._peer

    @property
    def counters(self) -> Counters:
        """The peer's counters, e.g. ``drill.counters["tcp_challenge_acks"]``."""
        return self.peer.counters

    def run_file(self, path: str | Path, *, final_check: bool = True) -> None:
        p = Path(path)
        self.run_text(p.read_text(), name=p.name, final_check=final_check)

    def run_text(self, text: str, name: str = "<script>", *, final_check: bool = True) -> None:
        """Parse and run a script. ``final_check``: fail on segments nobody expected."""
        script = parse_script(text, name)
        self._apply_headers(script.headers)
        if self._peer is None:
            self._peer = _make_peer(self.config)
        for line in script.lines:
            self._run_line(line)
        self._line = None
        if final_check and self.outbox:
            self._fail_unexpected(f"at the end of {name}")

    # -- headers ------------------------------------------------------------------------
    def _apply_headers(self, headers: Iterable[tuple[str, str]]) -> None:
        for where, text in headers:
            if self._peer is not None:
                raise DrillSyntaxError(f"{where}: headers must come before the first event")
            m = re.match(r"--(\w+)(?:\s*=\s*|\s+|$)(.*)$", text)
            if m is None:
                raise DrillSyntaxError(f"{where}: cannot read header {text!r}")
            key, value = m.group(1), m.group(2).strip()
            if key == "config":
                overrides = {}
                for item in value.split():
                    k, eq, v = item.partition("=")
                    if not eq:
                        raise DrillSyntaxError(f"{where}: --config wants key=value, got {item!r}")
                    overrides[k] = _coerce_config(self.config, k, v, where)
                self.config = dataclasses.replace(self.config, **overrides)
            elif key == "tolerance_ms":
                self.tolerance_s = float(value) / 1000
            elif key == "remote_isn":
                self.remote_isn = _int(value, where, "--remote_isn") % _MOD32
            elif key == "local_port":
                self.local_port = _int(value, where, "--local_port")
            elif key == "remote_port":
                self.remote_port = _int(value, where, "--remote_port")
            else:
                raise DrillSyntaxError(
                    f"{where}: unknown header --{key}; known: --config, --tolerance_ms, "
                    "--remote_isn, --local_port, --remote_port"
                )

    # -- time ---------------------------------------------------------------------------
    def _advance(self, until: float, *, stop_on_output: bool = False) -> None:
        """Run the core's timers at each deadline up to ``until``; then ``now = until``.

        With ``stop_on_output``, stop at the first deadline that makes the stack send.
        """
        stuck = 0
        while True:
            deadline = self.peer.next_deadline()
            if deadline is None or deadline > until + EPSILON_S:
                break
            if deadline <= self.now:
                stuck += 1
                if stuck > 1000:
                    self._fail(
                        f"core is stuck: next_deadline() stays at {_fmt_time(deadline)} "
                        f"(<= now {_fmt_time(self.now)}) however often handle_timers() runs"
                    )
            else:
                stuck = 0
            self.now = max(self.now, deadline)
            self._call_core("handle_timers", self.peer.handle_timers, self.now)
            if stop_on_output and self.outbox:
                return
        self.now = max(self.now, until)

    # -- dispatch -----------------------------------------------------------------------
    def _run_line(self, line: Line) -> None:
        self._line = line
        t = line.timing
        if t.kind == "abs":
            if t.value + EPSILON_S < self._line_time:
                raise DrillSyntaxError(
                    f"{line.where}: time {t.value} is before the previous line's "
                    f"{_fmt_time(self._line_time)}"
                )
            self._line_time = t.value
        elif t.kind == "rel":
            self._line_time += t.value
        ev = line.event
        if isinstance(ev, Outbound):
            if ev.spec is None:
                self._advance(self._line_time)
                if self.outbox:
                    self._fail_unexpected("while the script expects silence")
            else:
                self._expect(ev.spec, any_time=t.kind == "any")
            return
        self._advance(self._line_time)
        if self.outbox:
            self._fail_unexpected("before this line")
        if isinstance(ev, Inbound):
            self._inject(ev.spec)
        else:
            self._call(ev)

    def _collect(self) -> None:
        """Drain what the core produced: segments to the outbox, completions by token."""
        for src, dst, raw in self.peer.poll_transmit():
            base = self.remote_isn
            try:
                seg = WireSegment.decode(src, dst, bytes(raw), base)
            except ValueError as exc:
                self._fail(f"stack sent a malformed segment ({exc}): {bytes(raw).hex()}")
            if (src, dst) != (LOCAL_IP_INT, REMOTE_IP_INT):
                self._fail(
                    f"stack sent a segment from {socket.inet_ntoa(struct.pack('!I', src))} "
                    f"to {socket.inet_ntoa(struct.pack('!I', dst))}; expected "
                    f"{LOCAL_IP} -> {REMOTE_IP}"
                )
            if seg.flags & SYN and self._new_incarnation:
                self._new_incarnation = False
                if self.local_isn is not None and seg.seq != self.local_isn:
                    self.local_stream.clear()  # a new connection: new streams
                    self.remote_literals.clear()
                self.local_isn = seg.seq
            if self.local_port is None:
                self.local_port = seg.src_port
            self.outbox.append(_Emitted(self.now, seg))
        for comp in self.peer.poll_completions():
            self.completions[comp.qt] = (self.now, comp)

    def _call_core(self, what: str, fn: Callable[..., Any], *args: Any) -> Any:
        """Call into the core; anything but ``OSError`` is a core bug, reported as such."""
        try:
            return fn(*args)
        except OSError:
            raise
        except Exception as exc:
            self._fail(f"core raised {type(exc).__name__} in {what}: {exc}", cause=exc)
        finally:
            self._collect()

    # -- segments -----------------------------------------------------------------------
    @property
    def _local_base(self) -> int:
        return self.local_isn if self.local_isn is not None else 0

    def _remote_payload(self, offset: int, length: int) -> bytes:
        data = bytearray(pattern_bytes(offset, length))
        for i in range(length):
            if offset + i in self.remote_literals:
                data[i] = self.remote_literals[offset + i]
        return bytes(data)

    def _inject(self, spec: SegmentSpec) -> None:
        if spec.seq is None:
            self._fail("inbound segments need start:end(len)")
        seq = (self.remote_isn + spec.seq.start) % _MOD32
        ack = (self._local_base + spec.ack) % _MOD32 if spec.ack is not None else 0
        offset = spec.seq.start - 1  # stream offset: relative seq 0 is the SYN
        if spec.payload is not None:
            payload = spec.payload
            for i, b in enumerate(payload):
                self.remote_literals[offset + i] = b
        else:
            payload = self._remote_payload(offset, spec.seq.length)
        opts = b"".join(_option_bytes(o, self._local_base) for o in spec.options or ())
        opts += b"\0" * (-len(opts) % 4)
        if len(opts) > 40:
            self._fail(f"options take {len(opts)} bytes; at most 40 fit in a TCP header")
        if 20 + len(opts) + len(payload) > MAX_TCP_SEGMENT_BYTES:
            self._fail(f"a TCP segment in IPv4 holds at most {MAX_TCP_SEGMENT_BYTES} bytes")
        window = spec.window if spec.window is not None else DEFAULT_INBOUND_WINDOW
        if spec.flags & (SYN | ACK | RST) == SYN and self._connection_gone():
            self._new_incarnation = True
        header = _HDR.pack(
            self.remote_port,
            self._require_local_port(),
            seq,
            ack,
            ((20 + len(opts)) // 4) << 4,
            spec.flags,
            window,
            0,
            0,
        )
        raw = bytearray(header + opts + payload)
        csum = ~_checksum(bytes(raw), _pseudo_header(REMOTE_IP_INT, LOCAL_IP_INT, len(raw)))
        struct.pack_into("!H", raw, 16, csum & 0xFFFF)
        self._call_core(
            "receive", self.peer.receive, REMOTE_IP_INT, LOCAL_IP_INT, bytes(raw), self.now
        )

    def _require_local_port(self) -> int:
        if self.local_port is None:
            self._fail("the stack's port is not known yet (no SYN sent, no listen)")
        return self.local_port

    def format_segment(self, seg: WireSegment) -> str:
        """tcpdump-style, numbers relative like the script's: ``S. 0:0(0) ack 1 win ...``."""
        start = (seg.seq - self._local_base) % _MOD32
        parts = [flags_to_str(seg.flags), f"{start}:{start + len(seg.payload)}({len(seg.payload)})"]
        if seg.flags & ACK:
            parts.append(f"ack {(seg.ack - self.remote_isn) % _MOD32}")
        parts.append(f"win {seg.window}")
        parts.append("<" + ",".join(map(str, seg.options)) + ">")
        if (seg.src_port, seg.dst_port) != (self.local_port, self.remote_port):
            parts.append(f"[ports {seg.src_port}->{seg.dst_port}]")
        return " ".join(parts)

    def _differences(self, spec: SegmentSpec, seg: WireSegment) -> list[str]:
        diffs: list[str] = []
        if (seg.src_port, seg.dst_port) != (self.local_port, self.remote_port):
            diffs.append(
                f"ports {seg.src_port}->{seg.dst_port}, expected "
                f"{self.local_port}->{self.remote_port}"
            )
        if seg.flags != spec.flags:
            diffs.append(
                f"flags [{flags_to_str(seg.flags)}], expected [{flags_to_str(spec.flags)}]"
            )
        if spec.seq is not None:
            start = (seg.seq - self._local_base) % _MOD32
            if start != spec.seq.start % _MOD32:
                diffs.append(f"seq {start}, expected {spec.seq.start}")
            if len(seg.payload) != spec.seq.length:
                diffs.append(f"{len(seg.payload)} payload bytes, expected {spec.seq.length}")
        if spec.ack is not None:
            ack = (seg.ack - self.remote_isn) % _MOD32
            if ack != spec.ack % _MOD32:
                diffs.append(f"ack {ack}, expected {spec.ack}")
        if spec.window is not None and seg.window != spec.window:
            diffs.append(f"win {seg.window}, expected {spec.window}")
        if spec.options is not None:
            diffs += self._option_differences(spec.options, seg.options)
        if spec.payload is not None and seg.payload != spec.payload:
            diffs.append(f"payload {seg.payload!r}, expected {spec.payload!r}")
        diffs += self._payload_vs_pushed(seg)
        return diffs

    @staticmethod
    def _option_differences(expected: Iterable[Option], actual: Iterable[Option]) -> list[str]:
        exp = [o for o in expected if o.kind not in ("nop", "eol")]
        left = [o for o in actual if o.kind not in ("nop", "eol")]
        diffs: list[str] = []
        for want in exp:
            hit = next((a for a in left if want.matches(a)), None)
            if hit is None:
                same_kind = [str(a) for a in left if a.kind == want.kind]
                got = f" (sent {', '.join(same_kind)})" if same_kind else ""
                diffs.append(f"option <{want}> missing{got}")
            else:
                left.remove(hit)
        diffs += [f"unexpected option <{a}>" for a in left if a.kind not in {w.kind for w in exp}]
        return diffs

    def _payload_vs_pushed(self, seg: WireSegment) -> list[str]:
        """Outbound data must be exactly what the application pushed at that offset."""
        if not seg.payload or self.local_isn is None:
            return []
        offset = (seg.seq - self.local_isn - 1) % _MOD32
        pushed = bytes(self.local_stream[offset : offset + len(seg.payload)])
        if pushed == seg.payload:
            return []
        if len(pushed) < len(seg.payload):
            return [
                f"payload at stream offset {offset}+{len(seg.payload)} goes past the "
                f"{len(self.local_stream)} bytes the application pushed"
            ]
        first = next(i for i, (a, b) in enumerate(zip(seg.payload, pushed)) if a != b)
        return [f"payload differs from the pushed data at stream offset {offset + first}"]

    def _expect(self, spec: SegmentSpec, *, any_time: bool) -> None:
        tol = self.tolerance_s
        if any_time:
            if not self.outbox:
                self._advance(self.now + ANY_TIME_LIMIT_S, stop_on_output=True)
            if not self.outbox:
                self._fail(
                    f"expected > {spec} at any time, but nothing was sent within "
                    f"{ANY_TIME_LIMIT_S:.0f} s"
                )
        else:
            if not self.outbox:
                self._advance(self._line_time - tol, stop_on_output=True)
            if not self.outbox:
                self._advance(self._line_time + tol, stop_on_output=True)
            if not self.outbox:
                nd = self.peer.next_deadline()
                nd_s = "none" if nd is None else _fmt_time(nd)
                self._fail(
                    f"expected > {spec} at {_fmt_time(self._line_time)} "
                    f"(±{tol * 1000:g} ms), but nothing was sent (the core's next deadline: "
                    f"{nd_s})"
                )
        emitted = self.outbox.popleft()
        seg = emitted.segment
        if any_time:
            self._line_time = max(self._line_time, emitted.time)
        elif abs(emitted.time - self._line_time) > tol + EPSILON_S:
            when = "early" if emitted.time < self._line_time else "late"
            self._fail(
                f"segment sent too {when}\n"
                f"  expected: > {spec}  at {_fmt_time(self._line_time)}\n"
                f"  actual:   > {self.format_segment(seg)}  at {_fmt_time(emitted.time)}"
            )
        diffs = self._differences(spec, seg)
        if diffs:
            self._fail(
                "outbound segment does not match\n"
                f"  expected: > {spec}\n"
                f"  actual:   > {self.format_segment(seg)}  (sent at {_fmt_time(emitted.time)})\n"
                "  differs:  " + "; ".join(diffs)
            )

    # -- application calls -------------------------------------------------------------
    def _call(self, call: Call) -> None:
        handler = getattr(self, f"_call_{call.op}")
        expected_errno: int | None = None
        result = call.result
        if call.op != "accept" and result and result.startswith("E") and result != "EOF":
            expected_errno = _errno_value(result, self._where)
        try:
            handler(call)
        except OSError as exc:
            if expected_errno is not None and exc.errno == expected_errno:
                return
            want = f"expected {call.result}" if call.result else "expected success"
            self._fail(
                f"{call.op} raised OSError({errno.errorcode.get(exc.errno or 0, exc.errno)}, "
                f"{exc.strerror or exc}); {want}"
            )

    @property
    def _where(self) -> str:
        return self._line.where if self._line else "<python>"

    def _sock(self, name: str, kind: str | None = None) -> _Sock:
        sock = self.sockets.get(name)
        if sock is None:
            known = ", ".join(sorted(self.sockets)) or "none yet"
            self._fail(f"no socket named {name!r} (known: {known})")
        if kind is not None and sock.kind != kind:
            self._fail(f"socket {name!r} is a {sock.kind}, not a {kind}")
        return sock

    def _args(self, call: Call, count: int | tuple[int, int], form: str) -> tuple[str, ...]:
        lo, hi = (count, count) if isinstance(count, int) else count
        if not lo <= len(call.args) <= hi:
            raise DrillSyntaxError(f"{self._where}: usage: {form}")
        return call.args

    def _named(self, args: tuple[str, ...], default: str, form: str) -> tuple[list[str], str]:
        if "->" in args:
            i = args.index("->")
            if i != len(args) - 2:
                raise DrillSyntaxError(f"{self._where}: usage: {form}")
            return list(args[:i]), args[i + 1]
        return list(args), default

    def _take_completion(self, name: str, opcode: OpCode) -> tuple[float, Completion] | None:
        """The completion of the outstanding ``opcode`` on ``name``; None while pending."""
        qt = self.outstanding.get((name, opcode))
        if qt is None or qt not in self.completions:
            return None
        del self.outstanding[(name, opcode)]
        return self.completions.pop(qt)

    def _check_errno(self, what: str, comp: Completion, result: str | None) -> None:
        got = errno.errorcode.get(comp.errno, str(comp.errno)) if comp.errno else "0"
        want = "0" if result in (None, "0") else result
        if got != want:
            self._fail(f"{what} completed with {got}, expected {want}")

    def _call_listen(self, call: Call) -> None:
        form = "listen PORT [backlog=N] [-> NAME]"
        args, name = self._named(call.args, "l", form)
        if not 1 <= len(args) <= 2:
            raise DrillSyntaxError(f"{self._where}: usage: {form}")
        port = _int(args[0], self._where, "port")
        backlog = 128
        if len(args) == 2:
            if not args[1].startswith("backlog="):
                raise DrillSyntaxError(f"{self._where}: usage: {form}")
            backlog = _int(args[1][8:], self._where, "backlog")
        qd = self._call_core("socket", self.peer.socket)
        self._call_core("bind", self.peer.bind, qd, ("0.0.0.0", port))
        self._call_core("listen", self.peer.listen, qd, backlog)
        self.sockets[name] = _Sock(qd, "listener")
        self.local_port = port

    def _call_accept(self, call: Call) -> None:
        (lname,) = self._args(call, 1, "accept LISTENER [= NAME]")
        listener = self._sock(lname, "listener")
        key = (lname, OpCode.ACCEPT)
        if key not in self.outstanding:
            self.outstanding[key] = self._call_core("accept", self.peer.accept, listener.qd)
        if call.result is None:
            return
        done = self._take_completion(lname, OpCode.ACCEPT)
        if call.result == "pending":
            if done is not None:
                self._fail(f"accept on {lname} completed; expected it pending")
            return
        if done is None:
            self._fail(f"accept on {lname} has not completed by {_fmt_time(self.now)}")
        comp = done[1]
        self._check_errno(f"accept on {lname}", comp, None)
        if comp.new_qd is None:
            self._fail(f"accept completion without new_qd: {comp}")
        if comp.addr != (REMOTE_IP, self.remote_port):
            self._fail(
                f"accept returned peer {comp.addr}, expected {(REMOTE_IP, self.remote_port)}"
            )
        self.sockets[call.result] = _Sock(comp.new_qd, "connection")

    def _call_connect(self, call: Call) -> None:
        if call.result is not None:  # connect NAME = RESULT
            (name,) = self._args(call, 1, "connect NAME = 0|ERRNO|pending")
            self._sock(name, "connection")
            done = self._take_completion(name, OpCode.CONNECT)
            if call.result == "pending":
                if done is not None:
                    self._fail(f"connect on {name} completed; expected it pending")
                return
            if done is None:
                self._fail(f"connect on {name} has not completed by {_fmt_time(self.now)}")
            self._check_errno(f"connect on {name}", done[1], call.result)
            return
        form = "connect IP:PORT [-> NAME]"
        args, name = self._named(call.args, "c", form)
        if len(args) != 1 or ":" not in args[0]:
            raise DrillSyntaxError(f"{self._where}: usage: {form}")
        ip, _, port_s = args[0].rpartition(":")
        if ip != REMOTE_IP:
            raise DrillSyntaxError(f"{self._where}: the scripted peer is {REMOTE_IP}, not {ip}")
        self.remote_port = _int(port_s, self._where, "port")
        self.local_port = None  # learned from the SYN
        self._new_incarnation = True
        qd = self._call_core("socket", self.peer.socket)
        self.sockets[name] = _Sock(qd, "connection")
        self.outstanding[(name, OpCode.CONNECT)] = self._call_core(
            "connect", self.peer.connect, qd, (ip, self.remote_port), self.now
        )

    def _call_push(self, call: Call) -> None:
        name, what = self._args(call, 2, 'push NAME N|"text" [= ERRNO]')
        sock = self._sock(name, "connection")
        if what.startswith('"'):
            data = ast.literal_eval("b" + what)
        else:
            data = pattern_bytes(len(self.local_stream), _int(what, self._where, "byte count"))
        qt = self._call_core("push", self.peer.push, sock.qd, data, self.now)
        if call.result is not None:
            done = self.completions.pop(qt, None)
            if done is None:
                self._fail(f"push on {name} has not completed; expected {call.result}")
            self._check_errno(f"push on {name}", done[1], call.result)
            if done[1].errno:
                return
        self.local_stream += data

    def _call_pop(self, call: Call) -> None:
        args = self._args(call, (1, 2), "pop NAME [SIZE] [= N|EOF|ERRNO|pending]")
        name = args[0]
        sock = self._sock(name, "connection")
        key = (name, OpCode.POP)
        if key not in self.outstanding:
            size = _int(args[1], self._where, "size") if len(args) == 2 else None
            self.outstanding[key] = self._call_core("pop", self.peer.pop, sock.qd, size, self.now)
        if call.result is None:
            return
        done = self._take_completion(name, OpCode.POP)
        if call.result == "pending":
            if done is not None:
                self._fail(f"pop on {name} completed with {self._describe_pop(done[1])}")
            return
        if done is None:
            self._fail(
                f"pop on {name} has not completed by {_fmt_time(self.now)}; expected {call.result}"
            )
        comp = done[1]
        got = self._describe_pop(comp)
        if call.result == "EOF" or call.result.startswith("E"):
            if got != call.result:
                self._fail(f"pop on {name} returned {got}, expected {call.result}")
            return
        want = _int(call.result, self._where, "pop result")
        if comp.errno or len(comp.data) != want:
            self._fail(f"pop on {name} returned {got}, expected {want} bytes")
        expected = self._remote_payload(sock.read_offset, len(comp.data))
        if comp.data != expected:
            first = next(i for i, (a, b) in enumerate(zip(comp.data, expected)) if a != b)
            self._fail(
                f"pop on {name} returned the wrong bytes: stream offset "
                f"{sock.read_offset + first} is {comp.data[first]:#04x}, the peer sent "
                f"{expected[first]:#04x}"
            )
        sock.read_offset += len(comp.data)

    @staticmethod
    def _describe_pop(comp: Completion) -> str:
        if comp.errno:
            return errno.errorcode.get(comp.errno, str(comp.errno))
        return "EOF" if not comp.data else f"{len(comp.data)} bytes"

    def _call_close(self, call: Call) -> None:
        (name,) = self._args(call, 1, "close NAME")
        self._call_core("close", self.peer.close, self._sock(name).qd, self.now)

    def _call_abort(self, call: Call) -> None:
        (name,) = self._args(call, 1, "abort NAME")
        self._call_core("abort", self.peer.abort, self._sock(name).qd, self.now)

    def _call_setsockopt(self, call: Call) -> None:
        name, option, value = self._args(call, 3, "setsockopt NAME OPTION VALUE")
        qd = self._sock(name).qd
        val = _int(value, self._where, "option value")
        self._call_core("setsockopt", self.peer.setsockopt, qd, option, val)

    def _call_expect_state(self, call: Call) -> None:
        name, want = self._args(call, 2, "expect_state NAME STATE")
        got = self.state_of(name)
        if got != want.upper():
            self._fail(f"{name} is in state {got}, expected {want.upper()}")

    def state_of(self, name: str) -> str:
        """RFC 9293 state of a named socket: ``LISTEN`` for a listener, the connection's
        state (also after ``close``, while it lingers), ``CLOSED`` once the stack forgot it.
        """
        sock = self._sock(name)
        if sock.kind == "listener":
            return "LISTEN"
        try:
            snap: dict[str, Any] | None = self.peer.snapshot(sock.qd)
        except OSError:  # the descriptor is gone (closed); the connection may linger
            snap = None
        if snap is None or "connection_management" not in snap:
            snap = self._find_connection()
        if snap is None:
            return "CLOSED"
        state = snap["connection_management"].get("state")
        return str(state).rsplit(".", 1)[-1].upper()

    def _connection_gone(self) -> bool:
        """True when a SYN would start a new connection: none, or one in TIME-WAIT."""
        conn = self._find_connection()
        return conn is None or conn["connection_management"].get("state") == "TIME_WAIT"

    def _find_connection(self) -> dict[str, Any] | None:
        """This script's connection in ``peer.connections()``, found by its 4-tuple."""
        local = (LOCAL_IP, self.local_port)
        remote = (REMOTE_IP, self.remote_port)
        for conn in self.peer.connections():
            cm = conn.get("connection_management", {})
            if tuple(cm.get("local", ())) == local and tuple(cm.get("remote", ())) == remote:
                return conn
        return None

    # -- failures -----------------------------------------------------------------------
    def _fail(self, message: str, cause: BaseException | None = None) -> NoReturn:
        line = self._line
        head = f"{line.where}: {line.text.strip()}" if line else "drill"
        err = DrillFailure(
            f"{head}\n  {message}\n  (virtual time {_fmt_time(self.now)}, "
            f"line time {_fmt_time(self._line_time)})"
        )
        if cause is not None:
            raise err from cause
        raise err

    def _fail_unexpected(self, context: str) -> NoReturn:
        shown = "\n".join(
            f"    > {self.format_segment(e.segment)}  (sent at {_fmt_time(e.time)})"
            for e in self.outbox
        )
        self._fail(f"unexpected outbound segment(s) {context}:\n{shown}")


def run_file(path: str | Path, **config_overrides: Any) -> Drill:
    """Run one script file with a fresh peer; returns the ``Drill`` for further checks."""
    drill = Drill(**config_overrides)
    drill.run_file(path)
    return drill


def run_text(text: str, name: str = "<script>", **config_overrides: Any) -> Drill:
    """Run a script given as text with a fresh peer; returns the ``Drill``."""
    drill = Drill(**config_overrides)
    drill.run_text(text, name)
    return drill

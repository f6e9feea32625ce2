"""An established connection: the control block plus what the application is waiting
for (pending pops and pushes), and the executor of the dispatcher's actions.

``ControlBlock`` decides; this class does: it emits segments through the peer's
outbox, completes queue tokens, and runs the three duties (sender, retransmitter,
acknowledger) in the fixed order of ``_carry_out``.
"""

from __future__ import annotations

import errno
import random
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from xdpstackd.inetstack.completion import Completion, OpCode
from xdpstackd.inetstack.config import TcpConfig
from xdpstackd.inetstack.counters import Counters
from xdpstackd.inetstack.layer4.tcp.established import actions as A
from xdpstackd.inetstack.layer4.tcp.established.acknowledger import send_ack, send_probe
from xdpstackd.inetstack.layer4.tcp.established.congestion_control import make_algorithm
from xdpstackd.inetstack.layer4.tcp.established.congestion_control_state import (
    CongestionControl,
)
from xdpstackd.inetstack.layer4.tcp.established.connection_management import (
    ConnectionManagement,
    State,
)
from xdpstackd.inetstack.layer4.tcp.established.ctrlblk import ControlBlock
from xdpstackd.inetstack.layer4.tcp.established.flow_control import FlowControl
from xdpstackd.inetstack.layer4.tcp.established.ordered_delivery import OrderedDelivery
from xdpstackd.inetstack.layer4.tcp.established.retransmitter import retransmit_head
from xdpstackd.inetstack.layer4.tcp.established.rto import RtoCalculator
from xdpstackd.inetstack.layer4.tcp.established.sender import send_pending
from xdpstackd.inetstack.layer4.tcp.header import ACK, MAX_WINDOW_SCALE, RST, TcpHeader
from xdpstackd.inetstack.layer4.tcp.sequence_number import SeqNumber

if TYPE_CHECKING:
    from xdpstackd.inetstack.layer4.tcp.output import TcpOutput
    from xdpstackd.inetstack.layer4.tcp.socket import SocketOptions

# Linux's tcp_invalid_ratelimit: one ACK per half second for bare out-of-window segments
INVALID_ACK_INTERVAL_S = 0.5
MIN_SND_MSS = 48  # Linux's tcp_min_snd_mss
SYN_TIMEOUT_FALLBACK_RTO_S = 3.0  # RFC 6298 5.7, Linux TCP_TIMEOUT_FALLBACK


class ChallengeAckLimiter:
    """RFC 5961 7's stack-wide backstop behind the per-connection limit.

    A fixed global budget is an off-path side channel (CVE-2016-5696: spend it on your
    own connection, then count the challenge ACKs a victim's connection still draws), so,
    as Linux does since 4.7, each connection first limits itself (one out-of-window
    answer per ``INVALID_ACK_INTERVAL_S``) and this budget is drawn at random each second
    from [limit/2, limit*3/2)."""

    __slots__ = ("count", "limit_per_s", "rng", "window_start")

    def __init__(self, limit_per_s: int, rng: random.Random | None = None) -> None:
        self.limit_per_s = limit_per_s
        self.rng = rng if rng is not None else random.Random()
        self.window_start = float("-inf")
        self.count = 0

    def allow(self, now: float) -> bool:
        if now - self.window_start >= 1.0:
            self.window_start = now
            half = (self.limit_per_s + 1) >> 1
            self.count = self.rng.randint(half, self.limit_per_s + half - 1)
        if self.count > 0:
            self.count -= 1
            return True
        return False


class AckBatch:
    """Connections owed an ACK at the end of the receive batch being processed.

    Linux hands TCP one GRO-merged segment per burst and ACKs it once; we get the burst
    as an AF_XDP rx batch of separate frames. While ``active`` (``TcpPeer.begin_batch``
    .. ``end_batch``), the every-second-segment ACK (``A.ACK_DUE``) only marks the
    connection here, and ``end_batch`` sends one ACK per marked connection. Everything
    else that wants an ACK at once (out-of-order data, a filled hole, a FIN, a window
    update) still gets it at once; a batch of one segment behaves as without batching.

    ``touched``: the connections that received segments in the batch; their deadlines are
    read and scheduled once at its end rather than after every segment (nothing can
    fire in between: the whole batch is at one ``now``)."""

    __slots__ = ("active", "due", "touched")

    def __init__(self) -> None:
        self.active = False
        self.due: list[EstablishedSocket] = []
        self.touched: set[Any] = set()


class EstablishedSocket:
    is_handshake = False

    __slots__ = (
        "_ack_due",
        "_acked_this_round",
        "_last_invalid_ack",
        "ack_batch",
        "cb",
        "close_requested",
        "completions",
        "config",
        "conn_id",
        "counters",
        "flow",
        "limiter",
        "local",
        "on_released",
        "pending_pops",
        "pending_pushes",
        "qd",
        "released",
        "remote",
        "scheduled",
    )

    def __init__(
        self,
        cb: ControlBlock,
        *,
        config: TcpConfig,
        output: TcpOutput,
        ack_batch: AckBatch,
        completions: list[Completion],
        counters: Counters,
        limiter: ChallengeAckLimiter,
        on_released: Callable[[EstablishedSocket], None],
    ) -> None:
        self.cb = cb
        self.config = config
        self.local = cb.cm.local
        self.remote = cb.cm.remote
        self.flow = output.flow(self.local, self.remote)
        self.ack_batch = ack_batch
        self._ack_due = False
        self.completions = completions
        self.counters = counters
        self.limiter = limiter
        self.on_released = on_released
        self.qd: int | None = None
        # Memory per idle connection: an empty deque is 760 bytes, an empty list 56. Pops
        # wait one or two at a time (a list); pushes can queue by the thousand (a deque,
        # made when the first one has to wait and dropped when they are all through).
        self.pending_pops: list[tuple[int, int | None]] = []
        self.pending_pushes: deque[list] | None = None  # [qt, data, offset]
        self.close_requested = False
        self.released = False
        self._acked_this_round = False
        self._last_invalid_ack = float("-inf")
        self.scheduled: float | None = None  # deadline the peer's timer heap holds for us
        self.conn_id = 0

    @classmethod
    def create(
        cls,
        *,
        config: TcpConfig,
        options: SocketOptions,
        local: tuple[int, int],
        remote: tuple[int, int],
        iss: SeqNumber,
        irs: SeqNumber,
        peer_mss: int | None,
        peer_wscale: int | None,
        our_wscale: int,
        peer_window_raw: int,
        advertised_window: int,
        handshake_rtt_s: float | None,
        now: float,
        output: TcpOutput,
        ack_batch: AckBatch,
        completions: list[Completion],
        counters: Counters,
        limiter: ChallengeAckLimiter,
        on_released: Callable[[EstablishedSocket], None],
    ) -> EstablishedSocket:
        """Build the four components from what the handshake negotiated."""
        scaling = peer_wscale is not None
        # RFC 9293 3.7.1 default 536; a tiny MSS is raised to Linux's floor (tcp_min_snd_mss)
        # so a peer cannot make us send a segment per byte (CVE-2019-11479)
        mss = min(max(peer_mss if peer_mss else 536, MIN_SND_MSS), config.mss)
        cm = ConnectionManagement(
            local, remote, config, nodelay=options.nodelay, keepalive=options.keepalive, now=now
        )
        cm.keepalive_idle_s = options.keepidle_s
        cm.keepalive_interval_s = options.keepintvl_s
        cm.keepalive_probes = options.keepcnt
        if options.keepalive:
            cm.set_keepalive(True)
        rod = OrderedDelivery(
            iss,
            irs,
            send_buffer_bytes=options.send_buffer_bytes,
            ooo_max_bytes=min(config.ooo_max_bytes, options.recv_buffer_bytes),
        )
        fc = FlowControl(
            mss=mss,
            snd_wnd=peer_window_raw,  # windows in SYNs are never scaled (RFC 7323 2.2)
            snd_wscale=min(peer_wscale, MAX_WINDOW_SCALE) if scaling else 0,
            rcv_wscale=our_wscale if scaling else 0,
            rcv_buffer_bytes=options.recv_buffer_bytes,
            snd_wl1=irs,
            snd_wl2=iss,
            rcv_adv=irs + 1 + advertised_window,
            probe_max_s=config.zero_window_probe_max_s,
            retries=config.retries2,
        )
        if handshake_rtt_s is not None:
            rto = RtoCalculator(config.rto_initial_s, config.rto_min_s, config.rto_max_s)
            rto.on_rtt_sample(handshake_rtt_s)
        else:
            # RFC 6298 5.7: the SYN (or SYN-ACK) timed out, so start data at RTO >= 3 s
            initial_s = max(config.rto_initial_s, SYN_TIMEOUT_FALLBACK_RTO_S)
            rto = RtoCalculator(initial_s, config.rto_min_s, config.rto_max_s)
        algorithm = make_algorithm(config.congestion_control, mss, config.initial_cwnd_segments)
        cc = CongestionControl(algorithm, rto, mss, iss)
        cb = ControlBlock(cm, rod, fc, cc, config, counters)
        return cls(
            cb,
            config=config,
            output=output,
            ack_batch=ack_batch,
            completions=completions,
            counters=counters,
            limiter=limiter,
            on_released=on_released,
        )

    # -- network side -------------------------------------------------------------------
    def receive(self, hdr: TcpHeader, payload: memoryview, now: float) -> None:
        actions = self.cb.on_segment(hdr, payload, now)
        if actions:
            self._carry_out(actions, now)

    def on_timer(self, now: float) -> None:
        actions = self.cb.on_timer(now)
        if actions:
            self._carry_out(actions, now)

    def next_deadline(self) -> float | None:
        return None if self.released else self.cb.next_deadline()

    @property
    def state(self) -> State:
        return self.cb.cm.state

    # -- application side ---------------------------------------------------------------
    def push(self, qt: int, data: bytes, now: float) -> None:
        cm = self.cb.cm
        if cm.error:
            self._complete(OpCode.PUSH, qt, errno_=cm.error)
            return
        if self.close_requested or not cm.sending_allowed:
            self._complete(OpCode.PUSH, qt, errno_=errno.EPIPE)
            return
        if self.pending_pushes:
            self.pending_pushes.append([qt, data, 0])
            return
        taken = self.cb.rod.push(data, 0)
        if taken == len(data):
            self._complete(OpCode.PUSH, qt)
        else:
            self.pending_pushes = deque(([qt, data, taken],))
        if taken:
            self._carry_out(A.SEND, now)

    def pop(self, qt: int, size: int | None, now: float) -> None:
        if self.pending_pops:
            self.pending_pops.append((qt, size))
            return
        rod = self.cb.rod
        if rod.recv_queue_bytes:
            data = rod.pop(size)
            self._complete(OpCode.POP, qt, data=data)
            if self.cb.fc.window_update_due(rod) and self.cb.cm.receiving:
                self._carry_out(A.ACK_NOW, now)
        elif rod.eof:
            self._complete(OpCode.POP, qt, data=b"")
        elif self.cb.cm.error:
            self._complete(OpCode.POP, qt, errno_=self.cb.cm.error)
        elif self.cb.cm.state is State.CLOSED:
            self._complete(OpCode.POP, qt, data=b"")
        else:
            self.pending_pops.append((qt, size))

    def close(self, now: float, *, discard_pending: bool = False) -> None:
        """The descriptor is closed: graceful FIN after queued data, or RST when the
        application leaves received data unread (as Linux's tcp_close does).

        ``discard_pending``: the process went away, so pushes not yet in the send buffer
        are dropped (on Linux such bytes were never copied out of the dead writer)."""
        cm = self.cb.cm
        self._fail_pops(errno.ECANCELED)  # pops of this descriptor can never complete now
        if discard_pending:
            while self.pending_pushes:
                qt = self.pending_pushes.popleft()[0]
                self._complete(OpCode.PUSH, qt, errno_=errno.ECANCELED)
            self.pending_pushes = None
        self.qd = None
        if cm.state is State.CLOSED:
            self._release()
            return
        if self.cb.rod.recv_queue_bytes and self.config.rst_on_close_with_unread:
            self.counters["tcp_rst_close_with_unread"] += 1
            self.abort(now, errno.ECONNABORTED)
            return
        cm.on_orphaned(now)
        self.close_requested = True
        if not self.pending_pushes:
            self._queue_fin(now)

    def shutdown_write(self, now: float) -> None:
        """Half-close: FIN after queued data, the receive side stays open."""
        if not self.close_requested:
            self.close_requested = True
            if not self.pending_pushes:
                self._queue_fin(now)

    def end_time_wait(self) -> None:
        """A new SYN reuses this 4-tuple (RFC 6191): leave TIME_WAIT now."""
        self.cb.cm.on_reset(0)
        self._release()

    def abort(
        self, now: float, errno_: int = errno.ECONNABORTED, *, descriptor_closed: bool = True
    ) -> None:
        """Hard close: RST now, discard everything (RFC 9293 3.10.5 ABORT).

        ``descriptor_closed``: the application aborted its own descriptor, so its pending
        operations are cancelled (ECANCELED). Otherwise (an operator's abort, a listener
        closing) the descriptor stays and its operations fail with ``errno_``.
        """
        cm = self.cb.cm
        if cm.state not in (State.CLOSED, State.TIME_WAIT):
            self._send_rst()
        self._fail_pending(errno.ECANCELED if descriptor_closed else errno_)
        if descriptor_closed:
            self.qd = None
        cm.on_reset(errno_)
        cm.error = errno_  # later pops and pushes report it, even from TIME_WAIT
        self._release()

    # -- executing actions ----------------------------------------------------------------
    def _queue_fin(self, now: float) -> None:
        actions = self.cb.cm.on_close() | self.cb.rod.on_close()
        self._carry_out(actions, now)

    def _carry_out(self, actions: int, now: float) -> None:
        """Carry out handler actions in the one fixed order."""
        cb = self.cb
        rod = cb.rod
        self._acked_this_round = False
        if actions & (A.RESET | A.TIMED_OUT):
            err = cb.cm.error or errno.ETIMEDOUT
            self.counters["tcp_timeouts" if actions & A.TIMED_OUT else "tcp_resets_in"] += 1
            self._fail_pending(err)
        if actions & (A.DELIVER | A.EOF_RECEIVED) and self.pending_pops:
            actions |= self._complete_pops()
        if actions & A.SPACE and self.pending_pushes:
            self._drain_pending_pushes(now)
        if actions & A.SEND_RST:
            self._send_rst()
        elif cb.cm.state is not State.CLOSED:
            if actions & A.RETRANSMIT:
                self.counters["tcp_fast_retransmits"] += 1
                retransmit_head(self, now)
            if actions & A.SEND and (rod.send_buf or rod.fin_queued):
                send_pending(self, now)
            if actions & A.PROBE:
                send_probe(self)
            if actions & A.CHALLENGE_ACK:
                # per connection first (Linux: tcp_oow_rate_limited), then stack-wide
                if now - self._last_invalid_ack >= INVALID_ACK_INTERVAL_S and self.limiter.allow(
                    now
                ):
                    self._last_invalid_ack = now
                    self.counters["tcp_challenge_acks"] += 1
                    send_ack(self)
                else:
                    self.counters["tcp_challenge_acks_suppressed"] += 1
            if actions & A.ACK_INVALID and not actions & A.ACK_NOW:
                if now - self._last_invalid_ack >= INVALID_ACK_INTERVAL_S:
                    self._last_invalid_ack = now
                    actions |= A.ACK_NOW
                else:
                    self.counters["tcp_invalid_acks_suppressed"] += 1
            if actions & A.ACK_NOW:
                if not self._acked_this_round:
                    send_ack(self)
            elif actions & A.ACK_DUE and not self._acked_this_round:
                batch = self.ack_batch
                if not batch.active:
                    send_ack(self)
                elif not self._ack_due:
                    self._ack_due = True
                    batch.due.append(self)
            elif actions & A.ACK_DELAYED and rod.rcv_acked != rod.rcv_nxt:
                rod.arm_delayed_ack(now, self.config.delayed_ack_s)
        if actions & A.CLOSED:
            self._release()

    def send_batch_ack(self) -> None:
        """The end of a receive batch: the ACK ``A.ACK_DUE`` deferred, unless a segment
        sent since (data, a window update) already carried it."""
        self._ack_due = False
        rod = self.cb.rod
        if (
            not self.released
            and self.cb.cm.state is not State.CLOSED
            and rod.rcv_acked != rod.rcv_nxt
        ):
            send_ack(self)

    def emit(self, flags: int, seq: SeqNumber, payload: bytes | memoryview) -> None:
        """Send one segment through the flow; every segment carries our ACK and window."""
        cb = self.cb
        rod = cb.rod
        if flags & ACK:
            self.flow.send(flags, seq.value, rod.rcv_nxt.value, cb.fc.advertise(rod), payload)
            rod.on_ack_sent()
            self._acked_this_round = True
        else:
            self.flow.send(flags, seq.value, rod.rcv_nxt.value, 0, payload)
        self.counters["tcp_segments_out"] += 1

    def on_burst_sent(self, count: int) -> None:
        """The sender put ``count`` data segments (all with our ACK) on the flow itself:
        the bookkeeping ``emit`` does per segment, once."""
        self.cb.rod.on_ack_sent()
        self._acked_this_round = True
        self.counters["tcp_segments_out"] += count

    def _send_rst(self) -> None:
        rod = self.cb.rod
        self.flow.send(RST | ACK, rod.snd_max.value, rod.rcv_nxt.value, 0, b"")
        self.counters["tcp_segments_out"] += 1
        self.counters["tcp_resets_out"] += 1

    def _complete(self, opcode: OpCode, qt: int, *, data: bytes = b"", errno_: int = 0) -> None:
        self.completions.append(
            Completion(opcode, qt, self.qd if self.qd is not None else -1, data, None, None, errno_)
        )

    def _complete_pops(self) -> int:
        rod = self.cb.rod
        pops = self.pending_pops
        while pops and (rod.recv_queue_bytes or rod.eof):
            qt, size = pops.pop(0)
            self._complete(OpCode.POP, qt, data=rod.pop(size) if rod.recv_queue_bytes else b"")
        if self.cb.fc.window_update_due(rod):
            return A.ACK_NOW
        return A.NONE

    def _drain_pending_pushes(self, now: float) -> None:
        rod = self.cb.rod
        pushes = self.pending_pushes
        while pushes:
            entry = pushes[0]
            qt, data, offset = entry
            taken = rod.push(data, offset)
            entry[2] = offset + taken
            if entry[2] < len(data):
                break
            pushes.popleft()
            self._complete(OpCode.PUSH, qt)
        if not pushes:
            self.pending_pushes = None
        if not pushes and self.close_requested and not rod.fin_queued:
            actions = self.cb.cm.on_close() | rod.on_close()
            self._carry_out(actions | A.SEND, now)

    def _fail_pops(self, errno_: int) -> None:
        while self.pending_pops:
            qt, _ = self.pending_pops.pop(0)
            self._complete(OpCode.POP, qt, errno_=errno_)

    def _fail_pending(self, errno_: int) -> None:
        self._fail_pops(errno_)
        while self.pending_pushes:
            qt = self.pending_pushes.popleft()[0]
            self._complete(OpCode.PUSH, qt, errno_=errno_)
        self.pending_pushes = None

    def _release(self) -> None:
        if not self.released:
            self.released = True
            self.on_released(self)

    def snapshot(self) -> dict[str, dict[str, object]]:
        snap = self.cb.snapshot()
        snap["connection_management"]["qd"] = self.qd
        snap["ordered_delivery"]["pending_pops"] = len(self.pending_pops)
        snap["ordered_delivery"]["pending_pushes"] = len(self.pending_pushes or ())
        return snap

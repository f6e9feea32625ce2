"""Tests of the drill runner itself: its parser, and that it fails loudly and clearly.

A conformance runner that passes too easily proves nothing, so each way a script can
catch the stack out (wrong field, early, late, missing, extra segment, wrong bytes
delivered) is shown here to fail, with the line and the difference in the message.
"""

from __future__ import annotations

import pytest
from drill import (
    ACK,
    PSH,
    SYN,
    Drill,
    DrillFailure,
    DrillSyntaxError,
    Inbound,
    Option,
    Outbound,
    WireSegment,
    parse_line,
    parse_options,
    parse_script,
    pattern_bytes,
)

HANDSHAKE = """
0.000 listen 8080 -> l
0.100 < S 0:0(0) win 65535 <mss 1460,wscale 7>
+0    > S. 0:0(0) ack 1
+0.1  < . 1:1(0) ack 1 win 512
+0    accept l = c
"""


def fails(script: str, *fragments: str) -> str:
    """Run ``script``; it must fail with a message containing every fragment."""
    with pytest.raises(DrillFailure) as info:
        Drill().run_text(script, "t.pkt")
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in:\n{message}"
    return message


# -- parsing ----------------------------------------------------------------------------
def test_parse_inbound_segment_fields() -> None:
    line = parse_line("+0.1 < P. 1:101(100) ack 1 win 512 <mss 1460,nop,wscale 7>", "t:1")
    assert line is not None and isinstance(line.event, Inbound)
    spec = line.event.spec
    assert line.timing.kind == "rel" and line.timing.value == pytest.approx(0.1)
    assert spec.flags == PSH | ACK
    assert (spec.seq.start, spec.seq.end, spec.seq.length) == (1, 101, 100)  # type: ignore[union-attr]
    assert (spec.ack, spec.window) == (1, 512)
    assert spec.options == (Option("mss", (1460,)), Option("nop"), Option("wscale", (7,)))


def test_parse_outbound_unwritten_fields_are_none() -> None:
    line = parse_line("* > S. <mss *,TS val 5 ecr *>", "t:1")
    assert line is not None and isinstance(line.event, Outbound)
    spec = line.event.spec
    assert spec is not None and spec.flags == SYN | ACK
    assert spec.seq is None and spec.ack is None and spec.window is None
    assert spec.options == (Option("mss", (None,)), Option("TS", (5, None)))
    assert parse_line("1.0 > nothing", "t:1").event == Outbound(None)  # type: ignore[union-attr]


def test_parse_payload_literal_and_comment() -> None:
    line = parse_line('0 < P. 1:9(8) ack 1 "a//b\\x00cd\\n"  // comment', "t:1")
    assert line is not None and isinstance(line.event, Inbound)
    assert line.event.spec.payload == b"a//b\x00cd\n"


def test_parse_options_sack_and_unknown() -> None:
    opts = parse_options("sack 1:101 201:301,opt 253 c0de,eol", "t:1")
    assert opts[0] == Option("sack", (1, 101, 201, 301))
    assert opts[1] == Option("opt", (253,), b"\xc0\xde")
    assert opts[2] == Option("eol")


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("0 < X 0:0(0)", "unknown flag 'X'"),
        ("0 < S 0:5(4)", "end - start must equal len"),
        ("0 < S 0:0(0) ack 1", "no '.'"),
        ('0 < P. 1:3(2) ack 1 "abc"', "payload has 3 bytes"),
        ("* < S 0:0(0)", "only for outbound"),
        ("0 frobnicate c", "unknown call 'frobnicate'"),
        ("soon < S 0:0(0)", "must start with a time"),
        ("0 < S 0:0(0) <mss>", "cannot read option"),
    ],
)
def test_syntax_errors_name_the_line(text: str, error: str) -> None:
    with pytest.raises(DrillSyntaxError, match="t:1") as info:
        parse_line(text, "t:1")
    assert error in str(info.value)


def test_headers_only_before_events() -> None:
    with pytest.raises(DrillSyntaxError, match="after the first event"):
        parse_script("0 listen 8080\n--config msl_s=1\n", "t.pkt")
    with pytest.raises(DrillSyntaxError, match="no field 'nonsense'"):
        Drill().run_text("--config nonsense=1\n", "t.pkt")


def test_config_header_is_applied() -> None:
    drill = Drill()
    drill.run_text("--config msl_s=1.5 nodelay=true syn_retries=3\n--tolerance_ms=2\n")
    assert drill.config.msl_s == 1.5 and drill.config.nodelay is True
    assert drill.config.syn_retries == 3 and drill.tolerance_s == pytest.approx(0.002)


def test_pattern_is_offset_based() -> None:
    assert pattern_bytes(0, 4) == b"\x00\x01\x02\x03"
    assert pattern_bytes(250, 3) == b"\xfa\x00\x01"  # period 251
    assert pattern_bytes(10, 5)[2:] == pattern_bytes(12, 3)


def test_wire_decode_rejects_bad_checksum() -> None:
    raw = bytearray(20)
    raw[12] = 5 << 4
    with pytest.raises(ValueError, match="checksum"):
        WireSegment.decode(1, 2, bytes(raw), 0)


# -- runs against the core: every kind of mismatch fails, with the line and the reason -----
def test_handshake_passes_and_state_is_inspectable() -> None:
    drill = Drill()
    drill.run_text(HANDSHAKE)
    assert drill.state_of("c") == "ESTABLISHED"
    assert drill.local_isn is not None and drill.counters is not None
    # a second script continues the same conversation
    drill.run_text("+0.1 < P. 1:11(10) ack 1 win 512\n+0.04 > . 1:1(0) ack 11\n")


def test_wrong_field_is_reported_with_both_segments() -> None:
    fails(
        HANDSHAKE.replace("> S. 0:0(0) ack 1", "> S. 0:0(0) ack 2"),
        "t.pkt:4",
        "expected: > S. 0:0(0) ack 2",
        "actual:   > S. 0:0(0) ack 1",
        "ack 1, expected 2",
    )


def test_wrong_options_are_reported() -> None:
    fails(
        HANDSHAKE.replace("> S. 0:0(0) ack 1", "> S. 0:0(0) ack 1 <mss 1400>"),
        "option <mss 1400> missing (sent mss 1460)",
        "unexpected option <wscale",
    )


def test_early_segment_fails() -> None:
    fails(HANDSHAKE + "+0.1 < P. 1:11(10) ack 1 win 512\n+0.05 > . 1:1(0) ack 11\n", "too early")


def test_late_or_missing_segment_fails() -> None:
    fails(HANDSHAKE + "+0.1 push c 10\n+0.5 > P. 1:11(10) ack 1\n", "too early")
    fails(HANDSHAKE + "+0.1 > . 1:1(0) ack 1\n", "nothing was sent")


def test_unexpected_segment_before_next_line_fails() -> None:
    fails(
        HANDSHAKE + "+0.1 < P. 1:11(10) ack 1 win 512\n+0.1 push c 10\n",
        "unexpected outbound segment(s) before this line",
        "> . 1:1(0) ack 11",
    )


def test_unexpected_segment_at_end_fails() -> None:
    fails(HANDSHAKE + "+0.1 push c 10\n", "unexpected outbound segment(s) at the end")


def test_silence_expectation_fails_on_a_segment() -> None:
    fails(HANDSHAKE + "+0.1 push c 10\n+0.1 > nothing\n", "while the script expects silence")


def test_any_time_waits_for_the_segment() -> None:
    drill = Drill()
    drill.run_text(HANDSHAKE + "+0.1 < P. 1:11(10) ack 1 win 512\n* > . 1:1(0) ack 11\n")
    assert drill.now == pytest.approx(0.34)


def test_pop_checks_delivered_bytes() -> None:
    drill = Drill()
    drill.run_text(HANDSHAKE + "+0.1 < P. 1:11(10) ack 1 win 512\n")
    drill.remote_literals[3] = 0xEE  # pretend the peer had sent another byte there
    with pytest.raises(DrillFailure, match="wrong bytes: stream offset 3 is 0x03"):
        drill.run_text("+0 pop c = 10\n", final_check=False)


def test_pop_result_mismatch_and_pending() -> None:
    fails(HANDSHAKE + "+0 pop c = 10\n", "pop on c has not completed")
    fails(HANDSHAKE + "+0.1 < P. 1:11(10) ack 1 win 512\n+0 pop c = EOF\n", "returned 10 bytes")


def test_oserror_without_expectation_fails() -> None:
    fails("0 listen 8080 -> a\n0 listen 8080 -> b\n", "OSError(EADDRINUSE")
    Drill().run_text("0 listen 8080 -> a\n0 listen 8080 -> b = EADDRINUSE\n")

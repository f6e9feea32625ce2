"""inetstack: xdpstack's sans-IO TCP/IP protocol core.

Frames, application commands and the current time go in; frames to send, completions
and the next deadline come out. Nothing in this package reads a clock, opens a socket
or sleeps.

The layout follows Demikernel's inetstack: ``layer2`` (Ethernet, ARP), ``layer3``
(IPv4, ICMP, checksums) and ``layer4.tcp``, whose sockets move through phases
(unbound/bound, listening = passive open, connecting = active open, established,
closing). An established connection owns a control block made of four components:
connection management, ordered delivery, flow control and congestion control (with a
pluggable algorithm and an RFC 6298 RTO calculator). Each component handles events on
its own fields, sees the others only through read-only views, and returns actions that
the control block's dispatcher carries out in a fixed order.

``stack.InetStack`` is the single entry point the daemon calls. See
``docs/ARCHITECTURE.md`` for the full map.
"""

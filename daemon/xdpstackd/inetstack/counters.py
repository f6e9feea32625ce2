"""Stack-wide counters: every drop is counted under a name that says why."""

from collections import Counter


class Counters(Counter):
    """A ``collections.Counter`` of event names; ``counters["tcp_segments_in"] += 1``.

    Names are snake_case and prefixed with the layer (``eth_``, ``arp_``, ``ipv4_``,
    ``icmp_``, ``tcp_``); drops are ``<layer>_drop_<reason>``.
    """

    def snapshot(self) -> dict[str, int]:
        """A plain, sorted copy for the CLI and tests."""
        return dict(sorted(self.items()))

"""The daemon's datapath: the XDP program that steers frames (``xdp_program``), the AF_XDP
sockets that carry them (``xsk``), and a simulated link for tests (``sim``)."""

"""TCP: segments, sequence numbers, ISNs, the peer (socket table and demux) and sockets."""

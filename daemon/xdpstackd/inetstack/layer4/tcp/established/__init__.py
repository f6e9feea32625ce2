"""Established TCP connections: the control block and its four components."""

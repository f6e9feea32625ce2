"""One daemon per interface: a claim file, locked with flock, that records what the
daemon changed outside itself.

The kernel drops an flock when its holder dies, however it dies. So a claim we *can*
lock was left by a crashed run (or none existed), and what it records (the ephemeral
ports it reserved in the kernel) are leftovers to undo, while an XDP program on the
interface is a stale one to detach. A claim we cannot lock belongs to a live daemon:
we must not touch its interface, and say so.

Claims are per network namespace (an interface name is only unique within one), kept
in ``/run/xdpstack/claims/<netns inode>-<ifname>.json``.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
from typing import Any

CLAIM_DIR = "/run/xdpstack/claims"


class InterfaceBusyError(RuntimeError):
    """Another live xdpstackd serves this interface."""


class InterfaceClaim:
    def __init__(self, ifname: str, claim_dir: str = CLAIM_DIR) -> None:
        netns_inode = os.stat("/proc/thread-self/ns/net").st_ino
        self.ifname = ifname
        self.path = os.path.join(claim_dir, f"{netns_inode}-{ifname}.json")
        self._fd: int | None = None

    def acquire(self) -> dict[str, Any]:
        """Lock the claim; return what a crashed previous holder recorded ({} if none)."""
        os.makedirs(os.path.dirname(self.path), mode=0o755, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                holder = self._read_path().get("pid", "?")
                raise InterfaceBusyError(
                    f"interface {self.ifname} is already served by xdpstackd (pid {holder}); "
                    f"stop that one first, or choose another interface"
                ) from None
            raise
        self._fd = fd
        previous = self._read_fd()
        self.record({})
        return previous

    def record(self, state: dict[str, Any]) -> None:
        """Replace the recorded state (always with our pid)."""
        assert self._fd is not None, "acquire() first"
        data = json.dumps({"pid": os.getpid(), **state}).encode()
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, data, 0)

    def release(self) -> None:
        """Everything recorded was undone: remove the claim and unlock."""
        if self._fd is None:
            return
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        os.close(self._fd)  # closing drops the lock
        self._fd = None

    def _read_fd(self) -> dict[str, Any]:
        assert self._fd is not None
        size = os.fstat(self._fd).st_size
        return self._parse(os.pread(self._fd, size, 0)) if size else {}

    def _read_path(self) -> dict[str, Any]:
        try:
            with open(self.path, "rb") as fh:
                return self._parse(fh.read())
        except OSError:
            return {}

    @staticmethod
    def _parse(raw: bytes) -> dict[str, Any]:
        try:
            data = json.loads(raw)
        except ValueError:
            return {}
        return data if isinstance(data, dict) else {}

"""One trainer leads: a second trainer process (a rolling restart, an operator's mistake) waits
instead of joining the consumer group, where it would split a round's data between two trainers
and train rounds twice.

The lease is an exclusive lock (flock) on a file in the policy registry, the one place every
trainer that publishes must share (on a shared filesystem that supports locks, e.g. NFSv4). The
kernel drops the lock when its holder exits however it exits, so a crashed leader never blocks
the next one.
"""

from __future__ import annotations

import fcntl
import logging
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)


class LeaderLease:
    """An exclusive lock file; `acquire` waits until this process holds it."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._fd: int | None = None

    def holder(self) -> str:
        """Who holds (or last held) the lease, as it wrote itself down."""
        try:
            return self.path.read_text().strip() or "unknown"
        except OSError:
            return "unknown"

    def try_acquire(self) -> bool:
        """Take the lease if nobody holds it; never waits."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        os.ftruncate(fd, 0)
        os.write(
            fd,
            f"{socket.gethostname()} pid {os.getpid()} since {time.strftime('%Y-%m-%dT%H:%M:%S')}\n".encode(),
        )
        self._fd = fd
        return True

    def acquire(self, poll_s: float = 2.0, stop: Callable[[], bool] | None = None) -> bool:
        """Wait until this process leads (True), or until stop() says to give up (False)."""
        waited = 0.0
        while not self.try_acquire():
            if waited == 0.0:
                log.warning(
                    "trainer: another trainer leads (%s, lease %s); waiting to take over",
                    self.holder(),
                    self.path,
                )
            if stop and stop():
                return False
            time.sleep(poll_s)
            waited += poll_s
        if waited:
            log.info("trainer: took the lease after waiting %.0fs", waited)
        return True

    def release(self) -> None:
        """Let the next trainer lead."""
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

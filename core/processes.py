"""Child processes that alignloop starts (gateway, trainer, broker): ports and stopping."""

from __future__ import annotations

import os
import signal
import socket
import subprocess


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    return free_ports(1)[0]


def free_ports(n: int) -> list[int]:
    """n different loopback ports nobody listens on right now. Held open together while they are
    picked: two free_port() calls in a row can be handed the same port."""
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def stop_group(proc: subprocess.Popen[bytes], kill: bool = False, timeout: float = 60) -> None:
    """Stop a process started with start_new_session=True and everything it started:
    SIGTERM (graceful) or SIGKILL (a crash), then SIGKILL if it outlives the timeout."""
    try:
        os.killpg(proc.pid, signal.SIGKILL if kill else signal.SIGTERM)
        proc.wait(timeout=timeout)
    except ProcessLookupError:
        pass
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()

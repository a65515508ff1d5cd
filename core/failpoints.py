"""Named crash points for crash tests: the process kills itself (SIGKILL) at the point named in
``ALIGNLOOP_FAILPOINT``. A crash test can then stop a process exactly where a real crash would do
the most harm (between two writes that must look atomic), which a timed kill only hits by luck.
Unset (always, outside tests), a failpoint costs one environment lookup."""

from __future__ import annotations

import os
import signal
import sys

ENV = "ALIGNLOOP_FAILPOINT"


def failpoint(name: str) -> None:
    """Die here, without any clean-up, if ALIGNLOOP_FAILPOINT names this point."""
    if os.environ.get(ENV) == name:
        print(f"failpoint {name}: killing process {os.getpid()}", file=sys.stderr, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)

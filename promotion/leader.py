"""One decider among the gateways: a lease in the shared registry.

Each gateway keeps every replica's verdicts (promotion/evidence_feed.py) and could run the canary's
test; only the holder of this lease does, so one test decides, however many replicas there are.
The lease is a small file beside the registry's pointers, taken and renewed under the registry's
file lock; a holder that stops renewing (killed, hung, partitioned from the registry) loses it after
`ttl_s`, and another gateway takes over with the same verdicts and so the same test.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
import uuid
from pathlib import Path
from typing import Any


class LeaderLease:
    """This process's claim on the decider's lease."""

    def __init__(self, registry_root: Path, ttl_s: float = 10.0):
        self.path, self.ttl_s = Path(registry_root) / "promotion-leader.json", ttl_s
        self.me = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"

    def hold(self) -> bool:
        """Take or renew the lease; False while another live holder has it."""
        with open(self.path.with_name(".promotion-leader.lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                now = time.time()
                holder = self.holder()
                if holder and holder["holder"] != self.me and holder["until"] > now:
                    return False
                tmp = self.path.with_name(f".{self.path.name}.{self.me}")
                tmp.write_text(json.dumps({"holder": self.me, "until": now + self.ttl_s}))
                os.replace(tmp, self.path)
                return True
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def holder(self) -> dict[str, Any] | None:
        """Who holds the lease and until when (None: nobody yet)."""
        try:
            held: dict[str, Any] = json.loads(self.path.read_text())
            return held
        except (FileNotFoundError, ValueError):
            return None

    def release(self) -> None:
        """Give the lease up (a clean shutdown), so another gateway need not wait out the TTL."""
        with open(self.path.with_name(".promotion-leader.lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                holder = self.holder()
                if holder and holder["holder"] == self.me:
                    self.path.unlink(missing_ok=True)
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

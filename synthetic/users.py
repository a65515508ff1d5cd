"""A simulated user population: clients that ask for K candidates and rank them by a hidden taste.

They talk to the gateway over HTTP like any client (completions, then the feedback API); their
rule (synthetic/task.py: hidden_score, blue things first) is never given to the trainer, which
sees only the rankings.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

import httpx

from synthetic.task import rank

log = logging.getLogger(__name__)


@dataclass
class Tally:
    """What the population did and saw."""

    requests: int = 0
    failed: int = 0
    rankings: int = 0
    versions: Counter = field(default_factory=Counter)  # requests served by each version (one version each)
    mixed: int = 0  # requests answered by two versions (compare_versions while a canary ran)
    errors: list = field(default_factory=list)
    # (time sent, user, version) of every single-version answer: who saw what, for stickiness checks
    served: list = field(default_factory=list)

    def versions_seen(self, start: float, end: float) -> dict[int, set[str]]:
        """Per user, the versions of the single-version answers to requests sent between start and end."""
        seen: dict[int, set[str]] = {}
        for at, user, version in self.served:
            if start <= at <= end:
                seen.setdefault(user, set()).add(version)
        return seen


class Population:
    """`users` client threads ranking `k` candidates per request until stopped. User n calls with
    key `keys[n % len(keys)]` (a person: the canary counts a bounded share of verdicts per key) and
    names itself in the request's `user` (canary routing is sticky per user); every
    `compare_every`-th request of a user (0: none) opts into blinded comparisons across versions
    (`compare_versions`)."""

    def __init__(
        self,
        url: str,
        keys: str | list[str],
        prompts: list[str],
        users: int = 4,
        k: int = 4,
        max_tokens: int = 24,
        model: str = "alignloop-policy",
        pause_s: float = 0.0,
        seed: int = 0,
        compare_every: int = 0,
    ):
        self.keys = [keys] if isinstance(keys, str) else list(keys)
        self.url, self.prompts, self.users, self.k = url, prompts, users, k
        self.max_tokens, self.model, self.pause_s, self.seed = max_tokens, model, pause_s, seed
        self.compare_every = compare_every
        self.tally = Tally()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def _user(self, n: int) -> None:
        rng = random.Random(self.seed * 100 + n)
        key = self.keys[n % len(self.keys)]
        with httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {key}"}, timeout=120) as http:
            sent = 0
            while not self._stop.wait(self.pause_s):
                prompt = rng.choice(self.prompts)
                sent += 1
                compare = bool(self.compare_every) and sent % self.compare_every == 0
                at = time.time()
                try:
                    r = http.post(
                        "/v1/chat/completions",
                        json={
                            "model": self.model,
                            "n": self.k,
                            "max_tokens": self.max_tokens,
                            "temperature": 1.0,
                            "messages": [{"role": "user", "content": prompt}],
                            "user": f"user-{n}",
                            "compare_versions": compare,
                        },
                    )
                except httpx.HTTPError as exc:
                    with self._lock:
                        self.tally.requests += 1
                        self.tally.failed += 1
                        self.tally.errors.append(repr(exc))
                    continue
                with self._lock:
                    self.tally.requests += 1
                    if r.status_code != 200:
                        self.tally.failed += 1
                        self.tally.errors.append(r.text[:200])
                        continue
                    body = r.json()
                    if body["policy_version"] == "mixed":
                        self.tally.mixed += 1
                    else:
                        self.tally.versions[body["policy_version"]] += 1
                        self.tally.served.append((at, n, body["policy_version"]))
                ids = [c["id"] for c in body["choices"]]
                order = rank([c["message"]["content"] for c in body["choices"]])
                ranking = [[ids[i] for i in group] for group in order]
                if len(ranking) < 2:
                    continue  # all equally good to this user: nothing to say
                f = http.post(
                    "/v1/feedback/rankings", json={"ranking": [g[0] if len(g) == 1 else g for g in ranking]}
                )
                with self._lock:
                    if f.status_code == 202:
                        self.tally.rankings += 1
                    else:
                        self.tally.errors.append(f.text[:200])

    def start(self) -> Population:
        """Start (or, after stop, resume) the user threads; the tally goes on counting."""
        self._stop.clear()
        self._threads = [
            threading.Thread(target=self._user, args=(i,), daemon=True) for i in range(self.users)
        ]
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> Tally:
        """Stop and return the tally."""
        self._stop.set()
        for t in self._threads:
            t.join(timeout=120)
        return self.tally

"""Where alignloop keeps its state: the one layout of the state directory, in one place.

    <state_dir>/
        registry/                 policy versions and the CURRENT pointer (registry/store.py),
                                  unless settings.registry_dir names a shared one
        api_keys.json             generated keys when none are configured (mode 0600)
        feedback/events.db        the gateway's durable spool / embedded event log
        gateway/last_served       the version the gateway last served (its fallback at start)
        gateway/labels.db         the raters' labelling queue
        gateway/evidence.db       people's verdicts between versions (the canary's, the leaderboard's)
        gateway/ownership_secret  the generated key that signs served ids when none is configured
        trainer/dataset.db        the trainer's de-duplicated dataset
        trainer/rounds/rNNNN/     one training round's reward model and policy
        data/pretraining.jsonl    pretraining text for PPO-ptx's LM term (written with the tiny model)
        logs/                     process logs of `alignloop demo`

Every process (gateway, trainer, demo, tests) derives its paths from here, so two of them given the
same state directory always meet at the same files.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


class UnsafeStateFile(PermissionError):
    """A secret under the state directory (generated keys, the ownership secret) that other users
    can read: refused, with what to do about it."""


@dataclass(frozen=True)
class StatePaths:
    """The files and folders under one state directory."""

    root: Path
    shared_registry: Path | None = None

    @property
    def registry(self) -> Path:
        """The policy registry's root."""
        return self.shared_registry or self.root / "registry"

    @property
    def api_keys(self) -> Path:
        """Keys generated on first start when none are configured."""
        return self.root / "api_keys.json"

    @property
    def feedback_log(self) -> Path:
        """The gateway's spool, which is also the embedded event log when there is no broker."""
        return self.root / "feedback" / "events.db"

    @property
    def last_served(self) -> Path:
        """The version this gateway last served successfully (its fallback if CURRENT cannot load)."""
        return self.root / "gateway" / "last_served"

    @property
    def labels(self) -> Path:
        """The labelling queue: sampled prompts, their candidates, leases and rankings."""
        return self.root / "gateway" / "labels.db"

    @property
    def evidence(self) -> Path:
        """People's blinded verdicts between versions (the leaderboard's and the canary's evidence)."""
        return self.root / "gateway" / "evidence.db"

    @property
    def ownership_secret(self) -> Path:
        """The generated secret that signs served ids (when none is configured)."""
        return self.root / "gateway" / "ownership_secret"

    @property
    def trainer(self) -> Path:
        """The trainer's working folder."""
        return self.root / "trainer"

    @property
    def dataset(self) -> Path:
        """The trainer's dataset store."""
        return self.trainer / "dataset.db"

    def round_dir(self, number: int) -> Path:
        """One training round's outputs."""
        return self.trainer / "rounds" / f"r{number:04d}"

    @property
    def pretraining_data(self) -> Path:
        """Default pretraining text for PPO-ptx (JSON lines of {"text": ...})."""
        return self.root / "data" / "pretraining.jsonl"

    @property
    def hub_cache(self) -> Path:
        """Models fetched from the Hugging Face hub (base_model given as a model id)."""
        return self.root / "hub"

    @property
    def logs(self) -> Path:
        """Process logs of the demo."""
        return self.root / "logs"

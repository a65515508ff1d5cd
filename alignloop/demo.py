"""`alignloop demo`: the whole loop on one machine, on embedded defaults.

Starts the gateway (vLLM) and the trainer service as processes, and a simulated user population
that asks for 4 candidates at a time and ranks them by a taste the trainer never sees. Prints the
traffic, each training round's gate decision, each canary's decision by the users' blinded comparisons
and each version switch as they happen; stops after
--rounds promotions (or --minutes, or Ctrl-C) and reports how often the users' rule prefers the final policy's
answers over the base policy's, on prompts no user asked.

The console carries only that story; every process's own log (the demo's HTTP requests included)
goes to <state_dir>/logs/.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from alignloop.bootstrap import ensure_base_policy
from core.config import Settings
from core.processes import free_port, stop_group
from gateway.auth import load_or_create_keys
from registry.store import PolicyRegistry
from synthetic.judge import TRAIN_PROMPTS, HiddenRuleJudge
from synthetic.users import Population
from trainer.lora import full_checkpoint

# Small rounds so that a 2-core machine shows several of them within minutes. The tiny model's
# answers move far from SFT's (always one colour is ~10-20 nats per answer), hence the KL budget.
# PPO's iterations: 30, the best of 12/20/30/40 in `alignloop experiment`'s ablation (docs/learning.md).
DEMO_SETTINGS = [
    "train.loop.min_new_comparisons=40",
    "train.loop.max_interval_s=3600",
    "train.loop.rm_max_steps=60",
    "train.loop.kl_budget=25",
    "train.rm.learning_rate=0.001",
    "train.ppo.iterations=30",
    "train.ppo.rollout_batch=12",
    "train.ppo.minibatch=6",
    "train.ppo.max_new_tokens=24",
    "train.ppo.learning_rate=0.0002",
    "train.ppo.save_every=0",
    "train.ppo.rollout_engine=transformers",
    "train.cpu_threads=1",  # the trainer shares the cores with the gateway's CPU vLLM engine
]


def say(message: str) -> None:
    """One line of the demo's story on the console."""
    print(f"[demo] {message}", flush=True)


def _log_to_file(path: Path) -> None:
    # Everything logged in this process (httpx logs every request at INFO) goes to the file only.
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    # ... except the one-time build of the base model, whose progress (with rates) belongs to the story.
    console = logging.StreamHandler(sys.stdout)
    console.setFormatter(logging.Formatter("[demo] %(message)s"))
    for name in ("alignloop", "synthetic.tiny_model"):
        logging.getLogger(name).addHandler(console)


def _spawn(args: list[str], log_path: Path) -> subprocess.Popen:
    with open(log_path, "ab") as out:  # the child process keeps its own descriptor
        return subprocess.Popen(
            [sys.executable, "-m", "alignloop", *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=dict(os.environ, PYTHONUNBUFFERED="1"),
            start_new_session=True,
        )


@dataclass
class _Story:
    """What the demo has reported so far."""

    serving: str
    reported: set[str]
    promoted: list[str] = field(default_factory=list)
    on_canary: set[str] = field(default_factory=set)  # proposed versions whose canary is undecided
    canary_seen: set[str] = field(default_factory=set)  # ... that users have been served
    last_print: float = field(default_factory=time.monotonic)
    last_requests: int = 0
    started: float = field(default_factory=time.monotonic)

    def new_versions(self, registry: PolicyRegistry) -> None:
        """Tell each round's gate decision once its version appears in the registry."""
        for name in registry.names():
            if name in self.reported:
                continue
            self.reported.add(name)
            info = registry.info(name)
            gate = info.extra.get("gate", {})
            decision = gate.get("decision", "?")
            why = "" if decision != "rejected" else f": {'; '.join(gate.get('reasons', []))}"
            then = " -> on canary: the users' blinded comparisons decide" if decision == "proposed" else ""
            say(
                f"round {info.extra.get('round')}: candidate {name} {decision.upper()} by the offline gate "
                f"(reward {gate.get('candidate_reward', float('nan')):.2f} vs serving "
                f"{gate.get('serving_reward', float('nan')):.2f}, KL {gate.get('kl_from_sft', float('nan')):.2f}, "
                f"from {info.extra.get('data', {}).get('comparisons', 0)} comparisons){why}{then}"
            )
            if decision == "promoted":
                self.promoted.append(name)
            elif decision == "proposed":
                self.on_canary.add(name)
        for name in sorted(self.on_canary):
            decided = registry.decision(name)
            if decided is None:
                continue
            self.on_canary.discard(name)
            e = decided.get("evidence", {})
            low, high = e.get("interval_95") or (float("nan"), float("nan"))
            say(
                f"canary {name}: {decided['decision'].replace('_', ' ').upper()} ({decided['reason']}; users "
                f"preferred it in {e.get('wins', 0)} of {e.get('n', 0)} blinded comparisons against "
                f"{decided.get('against')}, 95% interval {low:.0%}-{high:.0%}, after {decided.get('canary_s', 0):.0f}s)"
            )
            if decided["decision"] in ("promoted", "promoted_by_operator"):
                self.promoted.append(name)

    def traffic(self, population: Population, registry: PolicyRegistry) -> None:
        """Tell version switches as users see them, and a traffic summary every 15 s."""
        tally = population.tally
        for name in sorted(self.on_canary - self.canary_seen):
            if tally.versions.get(name):
                self.canary_seen.add(name)
                say(
                    f"canary: some users (sticky) are now served {name}, the others {self.serving}; "
                    "their blinded comparisons of the two decide"
                )
        current = registry.current()
        if current and current != self.serving and tally.versions.get(current):
            say(f"users are now served {current} (was {self.serving})")
            self.serving = current
        if time.monotonic() - self.last_print >= 15:
            rate = (tally.requests - self.last_requests) / (time.monotonic() - self.last_print)
            say(
                f"{time.monotonic() - self.started:.0f}s: {tally.requests} requests ({rate:.1f}/s), "
                f"{tally.failed} failed, {tally.rankings} rankings given, serving {self.serving}"
            )
            self.last_print, self.last_requests = time.monotonic(), tally.requests


def _wait_ready(gateway: subprocess.Popen, url: str, log: Path) -> bool:
    while gateway.poll() is None:
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(1)
    print(f"[demo] the gateway exited; see {log}", file=sys.stderr)
    return False


def _hidden_rule_judge(registry: PolicyRegistry, base: str, scratch: Path):
    """A version's win rate against `base` by the simulated users' hidden rule (the report's judge)."""
    judge = HiddenRuleJudge(full_checkpoint(registry, base, scratch))
    return lambda version: judge(full_checkpoint(registry, version, scratch))


def _report(
    settings: Settings, registry: PolicyRegistry, base: str, promoted: list[str], population_tally
) -> int:
    from alignloop import report

    judge = _hidden_rule_judge(registry, base, settings.paths.trainer / "merged")
    final = promoted[-1]
    result = judge(final)
    low, high = result["interval_95"]
    page = report.build(
        settings,
        settings.state_dir / "report",
        judge=judge,
        judge_name="hidden rule",
        judged_versions=promoted,
    )
    print(page.read_text(), flush=True)
    say(f"report with plots: {page}")
    say(
        f"the users' hidden rule prefers {final}'s answers over those of {base} (served when the demo started) "
        f"{result['rate']:.0%} of the time (95% interval {low:.0%}-{high:.0%}, {result['pairs']} pairs), on prompts "
        f"no user asked (50% = no change)"
    )
    print(
        json.dumps(
            {
                "final": final,
                "win_rate_vs_base": result["rate"],
                "interval_95": [low, high],
                "pairs": result["pairs"],
                "failed_requests": population_tally.failed,
            }
        ),
        flush=True,
    )
    return 0 if population_tally.failed == 0 else 1


def run(settings: Settings, common: list[str], rounds: int, users: int, minutes: float = 30.0) -> int:
    """Run the loop until `rounds` candidates were promoted (or `minutes` passed); returns an exit code."""
    # A plain SIGTERM would end this process without its `finally`, leaving the gateway and the
    # trainer running: turn it into an orderly exit.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    logs = settings.paths.logs
    logs.mkdir(parents=True, exist_ok=True)
    _log_to_file(logs / "demo.log")
    say(f"preparing {settings.state_dir} (the first run builds the tiny base model: about a minute)")
    base = ensure_base_policy(settings)
    registry = PolicyRegistry(settings.paths.registry)
    # One key per simulated person: a canary counts at most a share of its verdicts from any one key.
    keys = [
        k.key
        for k in load_or_create_keys(settings.gateway.api_keys, settings.state_dir, users)
        if k.role == "user"
    ]
    url = f"http://{settings.gateway.host}:{settings.gateway.port}"
    loop_args = [*common, *[a for s in DEMO_SETTINGS for a in ("--set", s)]]
    say(f"serving {base} at start; starting the gateway on {url} (log: {logs / 'gateway.log'})")
    gateway = _spawn(["serve", *loop_args], logs / "gateway.log")
    trainer = population = None
    try:
        started = time.monotonic()
        if not _wait_ready(gateway, url, logs / "gateway.log"):
            return 1
        say(
            f"gateway ready in {time.monotonic() - started:.0f}s; starting the trainer "
            f"(log: {logs / 'trainer.log'}) and {users} simulated users"
        )
        metrics_port = free_port()
        trainer = _spawn(
            ["trainer", *loop_args, "--set", f"train.loop.metrics_port={metrics_port}"], logs / "trainer.log"
        )
        # Every other request opts into blinded comparisons: while a candidate is on canary, those
        # rankings are the evidence that promotes or rolls it back.
        population = Population(
            url, keys, TRAIN_PROMPTS, users=users, k=4, pause_s=1.0, compare_every=2
        ).start()
        say(f"trainer metrics on http://127.0.0.1:{metrics_port}/metrics; gateway metrics on {url}/metrics")
        say(
            f"rank answers yourself beside the simulated users: open {url}/ui/ and sign in with a key from "
            f"{settings.paths.api_keys} (the rater key also opens the labelling queue)"
        )
        story = _Story(serving=base, reported=set(registry.names()))
        deadline = time.monotonic() + 60 * minutes
        # ... and until the last promoted version has served users (the report judges what they got).
        while (
            len(story.promoted) < rounds or population.tally.versions.get(story.promoted[-1], 0) < 5
        ) and time.monotonic() < deadline:
            time.sleep(1)
            if trainer.poll() is not None:
                print(f"[demo] the trainer exited; see {logs / 'trainer.log'}", file=sys.stderr)
                return 1
            story.new_versions(registry)
            story.traffic(population, registry)
        tally = population.stop()
        population = None
        if not story.promoted:
            say(f"no candidate was promoted within {minutes:g} minutes; see {logs / 'trainer.log'}")
            return 1
        say(
            f"done: {len(story.promoted)} promotions, {tally.requests} requests, {tally.failed} failed, "
            f"versions served {dict(tally.versions)}"
        )
        return _report(settings, registry, base, story.promoted, tally)
    except KeyboardInterrupt:
        say("interrupted")
        return 130
    finally:
        if population is not None:
            population.stop()
        if trainer is not None:
            stop_group(trainer, timeout=30)
        stop_group(gateway, timeout=30)

"""`alignloop demo`: the whole loop on one machine, on embedded defaults.

Starts the gateway (vLLM) and the trainer service as processes, and a simulated user population
that asks for 4 candidates at a time and ranks them by a taste the trainer never sees. Prints the
traffic, each training round's gate decision and each version switch as they happen; stops after
--rounds promotions (or --minutes, or Ctrl-C) and reports how often the users' rule prefers the final policy's
answers over the base policy's, on prompts no user asked.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from alignloop.config import Settings
from alignloop.processes import free_port, stop_group

log = logging.getLogger("alignloop.demo")

# Small rounds so that a 2-core machine shows several of them within minutes. The tiny model's
# answers move far from SFT's (always one colour is ~10-20 nats per answer), hence the KL budget.
DEMO_SETTINGS = [
    "train.loop.min_new_comparisons=40", "train.loop.max_interval_s=3600", "train.loop.rm_max_steps=60",
    "train.loop.kl_budget=25",
    "train.rm.learning_rate=0.001",
    "train.ppo.iterations=8", "train.ppo.rollout_batch=16", "train.ppo.minibatch=8",
    "train.ppo.max_new_tokens=24", "train.ppo.learning_rate=0.0002", "train.ppo.save_every=0",
    "train.ppo.rollout_engine=transformers",
]


def _spawn(args: list[str], log_path: Path) -> subprocess.Popen:
    out = open(log_path, "ab")
    return subprocess.Popen([sys.executable, "-m", "alignloop", *args], stdout=out, stderr=subprocess.STDOUT,
                            env=dict(os.environ, PYTHONUNBUFFERED="1"), start_new_session=True)


def run(settings: Settings, common: list[str], rounds: int, users: int, minutes: float = 30.0) -> int:
    """Run the loop until `rounds` candidates were promoted (or `minutes` passed); returns an exit code."""
    from alignloop.cli import ensure_base_policy
    from alignloop.simulated_users import Population, win_rate
    from gateway.auth import load_or_create_keys
    from inference.corpus import ANIMALS
    from inference.registry import PolicyRegistry

    # A plain SIGTERM would end this process without its `finally`, leaving the gateway and the
    # trainer running: turn it into an orderly exit.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    state = settings.state_dir
    state.mkdir(parents=True, exist_ok=True)
    base = ensure_base_policy(settings)
    registry = PolicyRegistry(settings.registry_dir)
    key = next(k.key for k in load_or_create_keys(settings.gateway.api_keys, state) if k.role != "admin")
    url = f"http://{settings.gateway.host}:{settings.gateway.port}"
    logs = state / "logs"
    logs.mkdir(exist_ok=True)
    loop_args = [*common, *[a for s in DEMO_SETTINGS for a in ("--set", s)]]
    print(f"[demo] serving {base} at start; starting the gateway on {url} (log: {logs / 'gateway.log'})", flush=True)
    gateway = _spawn(["serve", *loop_args], logs / "gateway.log")
    trainer = None
    population = None
    try:
        started = time.monotonic()
        while True:
            if gateway.poll() is not None:
                print(f"[demo] the gateway exited; see {logs / 'gateway.log'}", file=sys.stderr)
                return 1
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(1)
        print(f"[demo] gateway ready in {time.monotonic() - started:.0f}s; starting the trainer "
              f"(log: {logs / 'trainer.log'}) and {users} simulated users", flush=True)
        metrics_port = free_port()
        trainer = _spawn(["trainer", *loop_args, "--set", f"train.loop.metrics_port={metrics_port}"],
                         logs / "trainer.log")
        train_prompts = [f"Describe a {a}." for a in ANIMALS[:7]]
        population = Population(url, key, train_prompts, users=users, k=4, pause_s=1.0).start()
        print(f"[demo] trainer metrics on http://127.0.0.1:{metrics_port}/metrics; gateway metrics on {url}/metrics",
              flush=True)

        reported: set[str] = set(registry.names())
        serving = base
        promoted: list[str] = []
        last_print, last_requests, t0 = time.monotonic(), 0, time.monotonic()
        deadline = time.monotonic() + 60 * minutes
        while len(promoted) < rounds and time.monotonic() < deadline:
            time.sleep(1)
            if trainer.poll() is not None:
                print(f"[demo] the trainer exited; see {logs / 'trainer.log'}", file=sys.stderr)
                return 1
            for name in registry.names():
                if name in reported:
                    continue
                reported.add(name)
                info = registry.info(name)
                gate = info.extra.get("gate", {})
                print(f"[demo] round {info.extra.get('round')}: candidate {name} {gate.get('decision', '?').upper()} "
                      f"(reward {gate.get('candidate_reward', float('nan')):.2f} vs serving "
                      f"{gate.get('serving_reward', float('nan')):.2f}, KL {gate.get('kl_from_sft', float('nan')):.2f}, "
                      f"from {info.extra.get('data', {}).get('comparisons', 0)} comparisons)"
                      + ("" if gate.get("decision") == "promoted" else f": {'; '.join(gate.get('reasons', []))}"),
                      flush=True)
                if gate.get("decision") == "promoted":
                    promoted.append(name)
            tally = population.tally
            newest = max(tally.versions, key=lambda v: int(v[1:])) if tally.versions else serving
            if newest != serving:
                print(f"[demo] users are now served {newest} (was {serving})", flush=True)
                serving = newest
            if time.monotonic() - last_print >= 15:
                rate = (tally.requests - last_requests) / (time.monotonic() - last_print)
                print(f"[demo] {time.monotonic() - t0:.0f}s: {tally.requests} requests ({rate:.1f}/s), "
                      f"{tally.failed} failed, {tally.rankings} rankings given, serving {serving}", flush=True)
                last_print, last_requests = time.monotonic(), tally.requests
        tally = population.stop()
        population = None
        if not promoted:
            print(f"[demo] no candidate was promoted within {minutes:g} minutes; see {logs / 'trainer.log'}", flush=True)
            return 1
        from trainer.ppo_trainer import sampled_responses

        held_out = [f"Describe a {a}." for a in ANIMALS[7:]]
        final = promoted[-1]
        rate = win_rate(sampled_responses(registry.path(final), held_out),
                        sampled_responses(registry.path(base), held_out))
        print(f"[demo] done: {len(promoted)} promotions, {tally.requests} requests, {tally.failed} failed, "
              f"versions served {dict(tally.versions)}", flush=True)
        print(f"[demo] the users' hidden rule prefers {final}'s answers over those of {base} (served when the demo "
              f"started) {rate:.0%} of the time, on prompts no user asked (50% = no change)", flush=True)
        print(json.dumps({"final": final, "win_rate_vs_base": rate, "failed_requests": tally.failed}), flush=True)
        return 0 if tally.failed == 0 else 1
    except KeyboardInterrupt:
        print("[demo] interrupted", flush=True)
        return 130
    finally:
        if population is not None:
            population.stop()
        if trainer is not None:
            stop_group(trainer, timeout=30)
        stop_group(gateway, timeout=30)
    return 0

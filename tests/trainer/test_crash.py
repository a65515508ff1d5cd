"""Killing the trainer mid-round and restarting it: the same dataset, a consistent registry."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from feedback.events import Comparison, CompletionServed, ServedChoice
from feedback.local_log import LocalLog
from feedback.topics import topic_for
from registry.store import PolicyRegistry
from registry.validation import validate_checkpoint
from synthetic import task
from tests.conftest import REPO, write_pretraining_data
from trainer.dataset_store import DatasetStore


def logged_feedback(n: int) -> list:
    """What a gateway would have logged: chat completions with 4 candidates and users' rankings;
    every third one the second turn of a conversation."""
    out = []
    for i, r in enumerate(task.rankings(n, k=4, seed=7)):
        rid = f"chatcmpl-crash-{i}"
        ids = [f"{rid}-{k}" for k in range(4)]
        earlier = [
            {"role": "user", "content": "Describe a fox."},
            {"role": "assistant", "content": "The fox is blue."},
        ]
        out.append(
            CompletionServed(
                request_id=rid,
                route="chat",
                messages=[*(earlier if i % 3 == 2 else []), {"role": "user", "content": r.prompt}],
                prompt_text=r.prompt,
                prompt_tokens=8,
                sampling={},
                policy_version="v0001",
                caller="u",
                choices=[
                    ServedChoice(choice_id=c, text=t, completion_tokens=9) for c, t in zip(ids, r.responses)
                ],
            )
        )
        out.append(Comparison(request_id=rid, ranking=[[ids[k] for k in g] for g in r.ranking], rater="u"))
    return out


def start_trainer(config, log, failpoint: str | None = None):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.pop("ALIGNLOOP_FAILPOINT", None)
    if failpoint:
        env["ALIGNLOOP_FAILPOINT"] = failpoint
    with open(log, "ab") as out:  # the child process keeps its own descriptor
        return subprocess.Popen(
            [sys.executable, "-m", "alignloop", "trainer", "--config", str(config)],
            cwd=REPO,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )


def wait_for(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def prepare(tmp_path, model_dir, n: int, promotion: str = "direct", **sections: dict):
    """A registry holding v0001, n logged rankings, and a trainer config; `sections` (loop=, rm=,
    ppo=) override train.<section> fields; `promotion` is promotion.mode."""
    state = tmp_path / "state"
    write_pretraining_data(state)
    registry = PolicyRegistry(state / "registry")
    registry.publish(model_dir, source="tiny-model", make_current=True)
    events = logged_feedback(n)
    LocalLog(state / "feedback" / "events.db").append([(topic_for(e), e.key(), e.to_bytes()) for e in events])
    # A gate that passes anything: these tests are about where the process dies, not what it learns.
    train = {
        "loop": {
            "min_new_comparisons": 10,
            "metrics_port": 0,
            "kl_budget": 1000.0,
            "ptx_regression": 100.0,
            "gate_margin": -1000.0,
            "min_judge_accuracy": 0.0,
        },
        "rm": {"batch_size": 4, "learning_rate": 0.001},
        "ppo": {"minibatch": 4, "rollout_engine": "transformers"},
    }
    for section, fields in sections.items():
        train[section].update(fields)
    lines = [f'state_dir = "{state}"', "[promotion]", f'mode = "{promotion}"']
    for section, fields in train.items():
        lines += [f"[train.{section}]", *(f"{k} = {json.dumps(v)}" for k, v in fields.items())]
    config = tmp_path / "trainer.toml"
    config.write_text("\n".join(lines) + "\n")
    return state, registry, events, config


def test_killed_mid_training_then_restarted(tiny_model_dir, tmp_path):
    state, registry, events, config = prepare(
        tmp_path,
        tiny_model_dir,
        40,
        promotion="canary",
        loop={"rm_max_steps": 6},
        rm={"save_every": 2},
        ppo={"iterations": 4, "rollout_batch": 8, "max_new_tokens": 12, "save_every": 1},
    )
    log = tmp_path / "trainer.log"

    first = start_trainer(config, log)
    wait_for(lambda: "ppo: iter 2/4" in log.read_text(errors="replace"), 300, "PPO to be half done")
    first.send_signal(signal.SIGKILL)
    first.wait()
    assert registry.names() == ["v0001"], "nothing may be published by an unfinished round"

    second = start_trainer(config, log)
    try:
        wait_for(
            lambda: (
                len(registry.names()) == 2 and DatasetStore(state / "trainer" / "dataset.db").last_round()
            ),
            300,
            "the round to finish after the restart",
        )
    finally:
        second.send_signal(signal.SIGKILL)
        second.wait()

    after_restart = log.read_text(errors="replace").split("trainer: consuming as group")[-1]
    assert "ppo: iter 4/4" in after_restart
    assert "ppo: iter 1/4" not in after_restart, "the restarted round resumed PPO instead of starting over"
    store = DatasetStore(state / "trainer" / "dataset.db")
    expected = {e.event_id for e in events if e.type == "comparison"}
    assert sorted(store.comparison_ids()) == sorted(expected)  # nothing lost, nothing doubled
    assert store.last_round()["round"] == 1
    for name in registry.names():
        validate_checkpoint(registry.path(name))
    v2 = registry.info("v0002")
    assert v2.parent == "v0001" and v2.extra["data"]["comparisons"] == 40
    # promotion = canary: a candidate that passed the gate is proposed to the gateway, not served.
    assert v2.extra["gate"]["decision"] == "proposed", v2.extra["gate"]
    assert registry.current() == "v0001" and registry.candidate() == "v0002"
    first = min(e.timestamp for e in events if e.type == "comparison")
    assert v2.extra["data"]["first_new_comparison_at"] == pytest.approx(first), (
        "the feedback-to-deployment clock"
    )


def test_killed_at_every_dangerous_point_then_restarted(tiny_model_dir, tmp_path):
    """Crash exactly where two writes must look atomic: after storing events but before committing
    their offsets, with a checkpoint written but not yet in place and halfway through putting it in
    place, mid-copy into the registry, after the version appears but before CURRENT moves, after
    CURRENT moves but before the round is recorded. Each restart must finish the job once."""
    state, registry, events, config = prepare(
        tmp_path,
        tiny_model_dir,
        30,
        loop={"rm_max_steps": 2, "consume_batch": 7},
        rm={"save_every": 1},
        ppo={"iterations": 1, "rollout_batch": 4, "max_new_tokens": 8},
    )
    log = tmp_path / "trainer.log"
    store_path = state / "trainer" / "dataset.db"
    round_dir = state / "trainer" / "rounds" / "r0001"

    for point in (
        "trainer.consume.stored",
        "trainer.checkpoint.staged",
        "trainer.checkpoint.swapping",
        "registry.publish.staged",
        "registry.publish.renamed",
        "trainer.round.promoted",
    ):
        proc = start_trainer(config, log, failpoint=point)
        assert proc.wait(timeout=600) == -signal.SIGKILL, (
            f"the trainer did not die at {point}:\n{log.read_text()[-3000:]}"
        )
        assert f"failpoint {point}" in log.read_text(errors="replace")
        if point == "trainer.consume.stored":
            assert 0 < len(DatasetStore(store_path).comparison_ids()) < 30, "should die after the first batch"
        if point == "trainer.checkpoint.staged":  # the RM's first checkpoint (step 1), written, not in place
            assert (round_dir / ".rm.saving").is_dir() and not (round_dir / "rm").exists()
        if point == "trainer.checkpoint.swapping":  # step 2's: step 1's moved aside, step 2's not in yet
            assert (round_dir / ".rm.previous").is_dir() and not (round_dir / "rm").exists()
            assert (round_dir / ".rm.saving").is_dir()
        if point == "registry.publish.staged":
            # The swap was undone: step 1's checkpoint back in place, and training went on from it.
            since_swap_kill = log.read_text(errors="replace").split("failpoint trainer.checkpoint.swapping")[
                -1
            ]
            assert "rm: resuming at step 1" in since_swap_kill
            assert registry.names() == ["v0001"], "a half-copied version must stay invisible"
            assert list((state / "registry" / "versions").glob(".staging-*")), (
                "expected the abandoned staging dir"
            )
        if point == "registry.publish.renamed":
            assert registry.names() == ["v0001", "v0002"] and registry.current() == "v0001"
        if point == "trainer.round.promoted":
            assert registry.current() == "v0002" and DatasetStore(store_path).last_round() is None

    last = start_trainer(config, log)
    try:
        wait_for(lambda: DatasetStore(store_path).last_round(), 300, "the round to be recorded")
    finally:
        last.send_signal(signal.SIGKILL)
        last.wait()
    store = DatasetStore(store_path)
    expected = {e.event_id for e in events if e.type == "comparison"}
    assert sorted(store.comparison_ids()) == sorted(expected)  # nothing lost, nothing doubled
    assert registry.names() == ["v0001", "v0002"], "the round was published twice"
    assert not list((state / "registry" / "versions").glob(".staging-*")), "abandoned staging dir left behind"
    assert sorted(p.name for p in round_dir.iterdir()) == ["policy", "rm"], (
        "a checkpoint's staging left behind"
    )
    for name in registry.names():
        validate_checkpoint(registry.path(name))
    assert registry.current() == "v0002"
    record = store.last_round()
    assert record["round"] == 1 and record["version"] == "v0002"
    assert registry.info("v0002").extra["round"] == 1


def test_a_second_trainer_waits_for_the_leader_and_takes_over_when_it_dies(tiny_model_dir, tmp_path):
    """Issue 14: two trainers on one registry (a rolling restart): only the leader consumes and
    trains; the other joins no consumer group until the leader's process is gone, then finishes
    the work once: every comparison stored once, one round."""
    state, _registry, events, config = prepare(
        tmp_path,
        tiny_model_dir,
        24,
        loop={"rm_max_steps": 4},
        ppo={"iterations": 2, "rollout_batch": 4, "max_new_tokens": 8},
    )
    logs = [tmp_path / "leader.log", tmp_path / "follower.log"]
    leader = start_trainer(config, logs[0])
    wait_for(
        lambda: "trainer: consuming as group" in logs[0].read_text(errors="replace"),
        300,
        "the leader to start",
    )
    follower = start_trainer(config, logs[1])
    try:
        wait_for(
            lambda: "another trainer leads" in logs[1].read_text(errors="replace"),
            120,
            "the follower to wait",
        )
        assert f"pid {leader.pid}" in logs[1].read_text(errors="replace")
        leader.send_signal(signal.SIGKILL)  # wherever it is: mid-round or done
        leader.wait()
        wait_for(
            lambda: "took the lease" in logs[1].read_text(errors="replace"), 60, "the follower to take over"
        )
        wait_for(
            lambda: DatasetStore(state / "trainer" / "dataset.db").last_round(),
            300,
            "a round by the new leader",
        )
    finally:
        for p in (leader, follower):
            if p.poll() is None:
                p.send_signal(signal.SIGKILL)
                p.wait()
    assert "trainer: consuming as group" not in logs[1].read_text(errors="replace").split("took the lease")[0]
    store = DatasetStore(state / "trainer" / "dataset.db")
    assert sorted(store.comparison_ids()) == sorted(e.event_id for e in events if e.type == "comparison")
    assert store.last_round()["round"] == 1

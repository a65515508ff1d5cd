"""Killing the trainer mid-round and restarting it: the same dataset, a consistent registry."""

import os
import signal
import subprocess
import sys
import time

from feedback.events import Comparison, CompletionServed, ServedChoice
from feedback.local_log import LocalLog
from feedback.topics import topic_for
from inference.registry import PolicyRegistry, validate_checkpoint
from trainer import synthetic
from trainer.dataset_store import DatasetStore
from tests.conftest import REPO


def logged_feedback(n: int) -> list:
    """What a gateway would have logged: chat completions with 4 candidates and users' rankings."""
    out = []
    for i, r in enumerate(synthetic.rankings(n, k=4, seed=7)):
        rid = f"chatcmpl-crash-{i}"
        ids = [f"{rid}-{k}" for k in range(4)]
        out.append(CompletionServed(request_id=rid, route="chat", messages=[{"role": "user", "content": r.prompt}],
                                    prompt_text=r.prompt, prompt_tokens=8, sampling={}, policy_version="v0001",
                                    caller="u", choices=[ServedChoice(choice_id=c, text=t, completion_tokens=9)
                                                         for c, t in zip(ids, r.responses)]))
        out.append(Comparison(request_id=rid, ranking=[[ids[k] for k in g] for g in r.ranking], rater="u"))
    return out


def start_trainer(config, log):
    out = open(log, "ab")
    return subprocess.Popen([sys.executable, "-m", "alignloop", "trainer", "--config", str(config)], cwd=REPO,
                            stdout=out, stderr=subprocess.STDOUT, env=dict(os.environ, PYTHONUNBUFFERED="1"))


def wait_for(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def test_killed_mid_training_then_restarted(tiny_model_dir, tmp_path):
    state = tmp_path / "state"
    registry = PolicyRegistry(state / "registry")
    registry.publish(tiny_model_dir, source="tiny-model", make_current=True)
    events = logged_feedback(40)
    LocalLog(state / "feedback" / "events.db").append([(topic_for(e), e.key(), e.to_bytes()) for e in events])
    config = tmp_path / "trainer.toml"
    config.write_text(f'state_dir = "{state}"\n'
                      "[train.loop]\nmin_new_comparisons = 10\nrm_max_steps = 6\nmetrics_port = 0\nkl_budget = 1000.0\n"
                      "ptx_regression = 10.0\ngate_margin = -1000.0\n"
                      "[train.rm]\nbatch_size = 4\nsave_every = 2\nlearning_rate = 0.001\n"
                      "[train.ppo]\niterations = 4\nrollout_batch = 8\nminibatch = 4\nmax_new_tokens = 12\n"
                      'save_every = 1\nrollout_engine = "transformers"\n')
    log = tmp_path / "trainer.log"

    first = start_trainer(config, log)
    wait_for(lambda: "ppo: iter 2/4" in log.read_text(errors="replace"), 300, "PPO to be half done")
    first.send_signal(signal.SIGKILL)
    first.wait()
    assert registry.names() == ["v0001"], "nothing may be published by an unfinished round"

    second = start_trainer(config, log)
    try:
        wait_for(lambda: len(registry.names()) == 2 and DatasetStore(state / "trainer" / "dataset.db").last_round(),
                 300, "the round to finish after the restart")
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
    assert registry.current() in registry.names()
    v2 = registry.info("v0002")
    assert v2.parent == "v0001" and v2.extra["gate"]["decision"] in ("promoted", "rejected")
    assert v2.extra["data"]["comparisons"] == 40

"""Interrupted runs resume exactly; the entry points run under torchrun with 2 processes (gloo)."""

import json
import os
import subprocess
import sys

import torch
from safetensors.torch import load_file

from core.config import RMConfig
from synthetic import task
from trainer.data import write_jsonl
from trainer.reward_training import train_rm
from tests.conftest import REPO

CFG = RMConfig(batch_size=4, learning_rate=1e-3, eval_fraction=0.2, save_every=0)


def weights(path):
    return {**load_file(path / "model.safetensors"), **load_file(path / "reward_head.safetensors")}


def test_interrupted_rm_training_resumes_exactly(tiny_model_dir, tmp_path):
    data = task.rankings(60, k=4, seed=9)
    train_rm(tiny_model_dir, data, tmp_path / "straight", CFG, max_steps=6)
    train_rm(tiny_model_dir, data, tmp_path / "resumed", CFG, max_steps=3)  # "killed" after step 3
    state = json.loads((tmp_path / "resumed" / "training_state" / "state.json").read_text())
    assert not (tmp_path / "resumed" / "training_state.safetensors").exists()  # vLLM would load it as weights
    assert state["train_state"]["step"] == 3
    train_rm(tiny_model_dir, data, tmp_path / "resumed", CFG, max_steps=6)  # a new run picks it up
    a, b = weights(tmp_path / "straight"), weights(tmp_path / "resumed")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_rm_and_ppo_under_torchrun_with_two_processes(tiny_model_dir, tmp_path):
    write_jsonl(tmp_path / "rankings.jsonl", [{"prompt": r.prompt, "responses": r.responses, "ranking": r.ranking}
                                              for r in task.rankings(40, k=4, seed=4)])
    write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": p} for p in task.prompts(16, seed=5)])
    write_jsonl(tmp_path / "pretraining.jsonl", [{"text": t} for t in ["The cat sees the dog.", "The red fox helps."] * 8])
    env = dict(os.environ, OMP_NUM_THREADS="1")
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                "-m", "alignloop", "train"]
    rm = subprocess.run([*torchrun, "rm", "--init", str(tiny_model_dir), "--data", str(tmp_path / "rankings.jsonl"),
                         "--out", str(tmp_path / "rm"), "--max-steps", "3", "--set", "train.rm.batch_size=2"],
                        cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert rm.returncode == 0, rm.stderr[-3000:]
    assert json.loads(rm.stdout.strip().splitlines()[-1])["steps"] == 3
    ppo = subprocess.run([*torchrun, "ppo", "--init", str(tiny_model_dir), "--rm", str(tmp_path / "rm"),
                          "--data", str(tmp_path / "prompts.jsonl"), "--pretraining", str(tmp_path / "pretraining.jsonl"),
                          "--out", str(tmp_path / "ppo"), "--set", "train.ppo.iterations=2",
                          "--set", "train.ppo.rollout_batch=8", "--set", "train.ppo.minibatch=2",
                          "--set", "train.ppo.max_new_tokens=8", "--set", "train.ppo.rollout_engine=transformers",
                          "--set", "train.ppo.ptx_batch=2"],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert ppo.returncode == 0, ppo.stderr[-3000:]
    assert json.loads(ppo.stdout.strip().splitlines()[-1])["iteration"] == 2
    assert (tmp_path / "ppo" / "model.safetensors").exists() and (tmp_path / "ppo" / "value" / "reward_head.safetensors").exists()

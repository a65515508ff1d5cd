"""Interrupted runs resume exactly; the entry points run under torchrun with 2 processes (gloo),
with DDP and with FSDP2."""

import json
import os
import subprocess
import sys

import torch
from safetensors.torch import load_file
from torch.optim.optimizer import register_optimizer_step_pre_hook

from core.config import RMConfig
from registry.validation import validate_checkpoint
from synthetic import task
from tests.conftest import REPO
from trainer.data import write_jsonl
from trainer.reward_training import train_rm

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


def test_rm_under_torchrun_with_two_processes(tiny_model_dir, tmp_path):
    """The CLI's RM stage under DDP over two gloo ranks (PPO under DDP is in test_vllm_rollout.py,
    the CLI's PPO under torchrun in the FSDP test below)."""
    write_jsonl(
        tmp_path / "rankings.jsonl",
        [
            {"prompt": r.prompt, "responses": r.responses, "ranking": r.ranking}
            for r in task.rankings(40, k=4, seed=4)
        ],
    )
    env = dict(os.environ, OMP_NUM_THREADS="1")
    torchrun = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "alignloop",
        "train",
    ]
    rm = subprocess.run(
        [
            *torchrun,
            "rm",
            "--init",
            str(tiny_model_dir),
            "--data",
            str(tmp_path / "rankings.jsonl"),
            "--out",
            str(tmp_path / "rm"),
            "--max-steps",
            "3",
            "--set",
            "train.rm.batch_size=2",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert rm.returncode == 0, rm.stderr[-3000:]
    assert json.loads(rm.stdout.strip().splitlines()[-1])["steps"] == 3


def test_fsdp2_matches_one_process_and_trains_lora_ppo_under_torchrun(tiny_model_dir, tmp_path):
    """FSDP2 (fully_shard over 2 gloo ranks) computes what one process computes on the same global
    batch: the reward model's weights after a step agree; and LoRA PPO-ptx runs sharded, writing a
    merged checkpoint that loads."""
    data = task.rankings(40, k=4, seed=4)
    write_jsonl(
        tmp_path / "rankings.jsonl",
        [{"prompt": r.prompt, "responses": r.responses, "ranking": r.ranking} for r in data],
    )
    write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": p} for p in task.prompts(16, seed=5)])
    write_jsonl(
        tmp_path / "pretraining.jsonl",
        [{"text": t} for t in ["The cat sees the dog.", "The red fox helps."] * 8],
    )
    env = dict(os.environ, OMP_NUM_THREADS="1")
    torchrun = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "alignloop",
        "train",
    ]
    fsdp = ["--set", "train.sharding=fsdp"]
    rm = subprocess.run(
        [
            *torchrun,
            "rm",
            "--init",
            str(tiny_model_dir),
            "--data",
            str(tmp_path / "rankings.jsonl"),
            "--out",
            str(tmp_path / "rm"),
            "--max-steps",
            "1",
            "--set",
            "train.rm.batch_size=2",
            "--set",
            "train.rm.learning_rate=0.001",
            *fsdp,
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert rm.returncode == 0, rm.stderr[-3000:]
    assert "fsdp over 2 ranks" in rm.stderr
    train_rm(
        tiny_model_dir,
        data,
        tmp_path / "one",
        CFG.model_copy(update={"batch_size": 4, "eval_fraction": 0.1}),
        max_steps=1,
    )  # 4 rankings per step = 2 ranks x 2
    sharded, single = weights(tmp_path / "rm"), weights(tmp_path / "one")
    assert sharded.keys() == single.keys()
    # Adam's first step moves every weight by ±lr whatever the size of its gradient, so weights whose
    # gradient is ~0 may flip with float rounding (one process sums in another order): allow those.
    differ = sum(int(((sharded[k] - single[k]).abs() > 1e-6).sum()) for k in single)
    assert differ / sum(v.numel() for v in single.values()) < 1e-3, differ
    start = load_file(tiny_model_dir / "model.safetensors")["model.embed_tokens.weight"]
    assert not torch.equal(sharded["embed_tokens.weight"], start), "training changed nothing"

    ppo = subprocess.run(
        [
            *torchrun,
            "ppo",
            "--init",
            str(tiny_model_dir),
            "--rm",
            str(tmp_path / "rm"),
            "--data",
            str(tmp_path / "prompts.jsonl"),
            "--pretraining",
            str(tmp_path / "pretraining.jsonl"),
            "--out",
            str(tmp_path / "ppo"),
            "--set",
            "train.ppo.iterations=2",
            *fsdp,
            "--set",
            "train.lora.enabled=true",
            "--set",
            "train.ppo.rollout_batch=8",
            "--set",
            "train.ppo.minibatch=2",
            "--set",
            "train.ppo.max_new_tokens=8",
            "--set",
            "train.ppo.rollout_engine=transformers",
            "--set",
            "train.ppo.ptx_batch=2",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert ppo.returncode == 0, ppo.stderr[-3000:]
    assert json.loads(ppo.stdout.strip().splitlines()[-1])["iteration"] == 2
    validate_checkpoint(tmp_path / "ppo")
    merged = load_file(tmp_path / "ppo" / "model.safetensors")
    assert (
        not any("lora" in k for k in merged)
        and merged.keys() == load_file(tiny_model_dir / "model.safetensors").keys()
    )


def _gather(rank: int, init_file: str, model_dir: str, out: str) -> None:
    import tempfile

    import torch.distributed as dist
    from safetensors.torch import save_file

    from trainer.distributed import World, full_state_dict, wrap
    from trainer.models import load_causal_lm

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        world = World(rank=rank, size=2)
        model = wrap(load_causal_lm(model_dir), world, "fsdp")
        state = full_state_dict(model, every_rank=True)
        save_file({k: v.clone().contiguous() for k, v in state.items()}, f"{out}.{rank}.safetensors")
        agreed = world.agreed_path(lambda: tempfile.mkdtemp(prefix="agreed-"))
        with open(f"{out}.{rank}.path", "w") as f:
            f.write(str(agreed))
        # bf16 under FSDP: what the linear layers compute with, and the shards' and gradients' dtypes.
        mixed = wrap(load_causal_lm(model_dir), world, "fsdp", "bf16")
        compute: set[str] = set()

        def linear_weight(module, args):
            if isinstance(module, torch.nn.Linear):
                compute.add(str(module.weight.dtype))

        hook = torch.nn.modules.module.register_module_forward_pre_hook(linear_weight)
        try:
            mixed(input_ids=torch.tensor([[4, 5, 6, 7]])).logits.float().sum().backward()
        finally:
            hook.remove()
        dtypes = {
            "compute": sorted(compute),
            "shards": sorted({str(p.dtype) for p in mixed.parameters()}),
            "grads": sorted({str(p.grad.dtype) for p in mixed.parameters() if p.grad is not None}),
        }
        with open(f"{out}.{rank}.dtypes", "w") as f:
            json.dump(dtypes, f)
    finally:
        dist.destroy_process_group()


def test_every_rank_gets_the_whole_weights_and_the_folder_rank_0_writes(tiny_model_dir, tmp_path):
    """Each rank's rollout engine is handed the whole policy: under FSDP2 every rank gathers every
    tensor whole (rank 0 alone gets them for a checkpoint). The ranks agree on the folder where
    rank 0 writes what every rank reads (the LoRA adapter for the rollout engines): each making its
    own left every other rank's empty. And in bf16, FSDP2 computes in bf16 while its shards and
    gradients stay float32 (a MixedPrecisionPolicy; without one it gathers float32)."""
    args = (str(tmp_path / "init"), str(tiny_model_dir), str(tmp_path / "state"))
    torch.multiprocessing.spawn(_gather, args=args, nprocs=2)
    saved = load_file(tiny_model_dir / "model.safetensors")
    for rank in (0, 1):
        gathered = load_file(tmp_path / f"state.{rank}.safetensors")
        assert saved.keys() <= gathered.keys()
        assert all(torch.equal(gathered[k], v) for k, v in saved.items()), f"rank {rank}"
        dtypes = json.loads((tmp_path / f"state.{rank}.dtypes").read_text())
        assert dtypes == {
            "compute": ["torch.bfloat16"],
            "shards": ["torch.float32"],
            "grads": ["torch.float32"],
        }
    paths = [(tmp_path / f"state.{rank}.path").read_text() for rank in (0, 1)]
    assert paths[0] == paths[1] and os.path.isdir(paths[0])
    os.rmdir(paths[0])


def test_rm_steps_in_micro_batches_train_the_same_with_one_micro_batch_in_memory(tiny_model_dir, tmp_path):
    """A step of 4 rankings of K = 9 (36 sequences) forwarded in micro-batches of at most 9
    sequences takes the gradient one forward of all 36 does, and no forward holds more than one
    ranking. (Gradients, not weights after the step, are compared: Adam scales every gradient to a
    step of about the learning rate, so an element whose gradient is rounding noise, such as the
    head's bias, which a ranking loss never sees, moves by noise of that size either way.)"""
    data = task.rankings(40, k=9, seed=3)
    whole = RMConfig(**{**CFG.model_dump(), "micro_batch_sequences": 1000})
    parts = RMConfig(**{**CFG.model_dump(), "micro_batch_sequences": 9})
    seen: list[int] = []  # the batch of every training forward of the reward model
    grads: list[list[torch.Tensor]] = []  # every parameter's gradient at each optimizer step

    def count(module, args):
        if type(module).__name__ == "RewardModel" and module.training:
            seen.append(args[0].shape[0])

    def capture(optimizer, args, kwargs):
        grads.append(
            [p.grad.clone() for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        )

    forward = torch.nn.modules.module.register_module_forward_pre_hook(count)
    step = register_optimizer_step_pre_hook(capture)
    try:
        train_rm(tiny_model_dir, data, tmp_path / "parts", parts, max_steps=1)
        in_parts, seen[:] = max(seen), []
        train_rm(tiny_model_dir, data, tmp_path / "whole", whole, max_steps=1)
        at_once = max(seen)
    finally:
        forward.remove()
        step.remove()
    assert in_parts == 9 and at_once == 4 * 9
    assert len(grads) == 2 and len(grads[0]) == len(grads[1]) > 0
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)

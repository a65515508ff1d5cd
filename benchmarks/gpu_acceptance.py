"""The trainer's GPU acceptance: one command on a GPU box that has torch, transformers, peft and
pydantic (no vLLM, no web packages), meant to finish in under 8 minutes on one H100:

    PYTHONPATH=. python benchmarks/gpu_acceptance.py [--json figures.json]

Parts, each in its own process with its own time limit (one that fails or runs out of memory does
not hide the others):
  rm      the reward-model step at 310M against plain PyTorch (benchmarks/training.py), goal >= 0.8x
  ppo     one PPO-ptx iteration of a 6.7B Llama with LoRA r=16, bf16 and gradient checkpointing:
          time and peak memory, beside the memory plan's expected peak (trainer/memory_plan.py)
  nccl    with two GPUs: SFT, RM and PPO-ptx each under torchrun with 2 processes (NCCL)
  parity  a LoRA policy on a bf16 base, published with save_dtype=fp32, equals W + dW in float32,
          and its logits match the adapter applied unmerged

It ends with one table; the exit status is 1 if any part failed. `--small` runs the same parts at
toy sizes (the CPU check that the command itself works: `--small --two-ranks` runs the torchrun
part with gloo).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a file on a machine without the project installed
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch

REPO = Path(__file__).resolve().parent.parent
TRAINING = [sys.executable, str(REPO / "benchmarks" / "training.py")]
LIMITS_S = {"rm": 180, "ppo": 300, "nccl": 200, "parity": 90}


def _run(cmd: list[str], limit_s: int) -> tuple[bool, float, str]:
    """(succeeded, seconds, the output's tail) of a child process run to a time limit."""
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    )
    started = time.monotonic()
    try:
        done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=limit_s)
    except subprocess.TimeoutExpired as e:
        return False, time.monotonic() - started, f"over its {limit_s} s limit: {str(e.stderr)[-800:]}"
    tail = (done.stdout + done.stderr)[-1500:]
    return done.returncode == 0, time.monotonic() - started, tail


def part_rm(work: Path, small: bool) -> dict:
    """The RM step against the plain-PyTorch reference."""
    out = work / "rm.json"
    model = "small" if small else "310m"
    ok, seconds, tail = _run(
        [*TRAINING, "--model", model, "--only", "rm", "--json", str(out)], LIMITS_S["rm"]
    )
    if not ok:
        return {"ok": False, "seconds": seconds, "detail": tail}
    r = json.loads(out.read_text())
    ratio = r["ours"]["comparisons_per_s"] / r["plain_pytorch"]["comparisons_per_s"]
    return {
        "ok": ratio >= 0.8,
        "seconds": seconds,
        "detail": f"{model}: {r['ours']['comparisons_per_s']:.0f} vs {r['plain_pytorch']['comparisons_per_s']:.0f} "
        f"pairs/s = {ratio:.2f}x (goal >= 0.8x); peak {r['ours']['peak_gib']:.1f} vs "
        f"{r['plain_pytorch']['peak_gib']:.1f} GiB",
        "figures": r,
    }


def part_ppo(work: Path, small: bool) -> dict:
    """One LoRA PPO-ptx iteration of a 7B-class model: time, peak memory, and the plan's peak."""
    from benchmarks.training import MODELS
    from core.config import LoRAConfig, Settings, TinyModelConfig
    from trainer.memory_plan import GIB, ModelShape, plan_round
    from trainer.runtime import Runtime

    model = "small" if small else "7b"
    out = work / "ppo.json"
    shape = "16,8,64,8"
    cmd = [*TRAINING, "--model", model, "--only", "ppo", "--lora-only", "--gradient-checkpointing"]
    cmd += ["--ppo-shape", shape, "--ppo-iterations", "1", "--no-ppo-vllm", "--json", str(out)]
    ok, seconds, tail = _run(cmd, LIMITS_S["ppo"])
    if not ok:
        return {"ok": False, "seconds": seconds, "detail": tail}
    run = next(iter(json.loads(out.read_text())["ppo"].values()))
    # The plan for the same run: prompts of about 30 tokens + 64 new ones, the benchmark's shapes.
    from transformers import LlamaConfig, LlamaForCausalLM

    vocab = TinyModelConfig().vocab_size  # build_models gives the big models the tiny tokenizer
    with torch.device("meta"):
        params = LlamaForCausalLM(LlamaConfig(vocab_size=vocab, **MODELS[model])).num_parameters()
    m = MODELS[model]
    model_shape = ModelShape(params, m["hidden_size"], m["num_hidden_layers"], m["intermediate_size"], vocab)
    settings = Settings()
    train = settings.train.model_copy(
        update={
            "rm": settings.train.rm.model_copy(update={"max_len": 96}),
            "ppo": settings.train.ppo.model_copy(
                update={"minibatch": 8, "ptx_batch": 8, "rollout_engine": "transformers"}
            ),
        }
    )
    cuda = torch.cuda.is_available()
    runtime = Runtime(
        device=torch.device("cuda" if cuda else "cpu"),
        precision="bf16" if cuda else "fp32",
        lora=LoRAConfig(enabled=True),
        gradient_checkpointing=True,
    )
    plan = plan_round(model_shape, model_shape, settings.model_copy(update={"train": train}), runtime, 1)
    planned = next(s.total for s in plan.stages if s.stage == "ppo") / GIB
    return {
        "ok": True,
        "seconds": seconds,
        "detail": f"{model}: one iteration {run['iteration_s']:.1f} s, peak {run['peak_gib']:.2f} GiB "
        f"(memory plan: {planned:.2f} GiB{'' if small else '; reference on an H100: 3.8 s, 31.9 GiB'})",
        "figures": run | {"planned_gib": planned},
    }


def part_nccl(work: Path, small: bool, two_ranks: bool) -> dict:
    """Each stage under torchrun with 2 processes: NCCL on two GPUs (gloo with --two-ranks on a CPU)."""
    if torch.cuda.device_count() < 2 and not two_ranks:
        return {"ok": True, "seconds": 0.0, "detail": f"skipped: {torch.cuda.device_count()} GPU(s)"}
    from core.config import TinyModelConfig
    from synthetic import task
    from synthetic.tiny_model import build_tiny_model
    from trainer.data import write_jsonl

    base = build_tiny_model(work / "nccl-base", TinyModelConfig(pretrain_steps=1, corpus_examples=600))
    write_jsonl(
        work / "demos.jsonl", [{"prompt": p, "response": r} for p, r in task.demonstrations(16, seed=0)]
    )
    write_jsonl(
        work / "rankings.jsonl",
        [
            {"prompt": r.prompt, "responses": r.responses, "ranking": r.ranking}
            for r in task.rankings(16, k=4, seed=4)
        ],
    )
    write_jsonl(work / "prompts.jsonl", [{"prompt": p} for p in task.prompts(16, seed=5)])
    write_jsonl(work / "pretraining.jsonl", [{"text": "The cat sees the dog."}] * 16)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    torchrun += ["-m", "alignloop", "train"]
    stages = {
        "sft": ["--init", str(base), "--data", str(work / "demos.jsonl"), "--max-steps", "2"],
        "rm": ["--init", str(base), "--data", str(work / "rankings.jsonl"), "--max-steps", "2"],
        "ppo": [
            *("--init", str(base), "--rm", str(work / "nccl-rm"), "--data", str(work / "prompts.jsonl")),
            *("--pretraining", str(work / "pretraining.jsonl")),
            *("--set", "train.ppo.iterations=1", "--set", "train.ppo.rollout_batch=8"),
            *("--set", "train.ppo.minibatch=2", "--set", "train.ppo.max_new_tokens=8"),
            *("--set", "train.ppo.rollout_engine=transformers", "--set", "train.ppo.ptx_batch=2"),
        ],
    }
    results, started = [], time.monotonic()
    for stage, args in stages.items():
        ok, seconds, tail = _run(
            [*torchrun, stage, *args, "--out", str(work / f"nccl-{stage}")], LIMITS_S["nccl"]
        )
        results.append(f"{stage} {'ok' if ok else 'FAILED'} in {seconds:.0f} s")
        if not ok:
            return {
                "ok": False,
                "seconds": time.monotonic() - started,
                "detail": "; ".join(results) + ": " + tail,
            }
    backend = "NCCL" if torch.cuda.device_count() >= 2 else "gloo"
    return {
        "ok": True,
        "seconds": time.monotonic() - started,
        "detail": f"2 ranks, {backend}: " + "; ".join(results),
    }


def part_parity(work: Path, small: bool) -> dict:
    """A LoRA policy on a bf16 base: the fp32-published merge is W + dW, and matches the adapter."""
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from benchmarks.training import build_models
    from core.config import LoRAConfig
    from trainer import lora
    from trainer.distributed import full_state_dict
    from trainer.models import load_causal_lm, save_policy, trainable_policy
    from trainer.runtime import Runtime

    started = time.monotonic()
    fp32_dir, _ = build_models("small", work / "parity")
    base = work / "parity-bf16"
    AutoModelForCausalLM.from_pretrained(fp32_dir, dtype=torch.bfloat16).save_pretrained(base)
    tok = AutoTokenizer.from_pretrained(fp32_dir)
    tok.save_pretrained(base)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    runtime = Runtime(device=device, precision="bf16", save_dtype="fp32", lora=LoRAConfig(enabled=True))
    policy = trainable_policy(base, runtime)
    with torch.no_grad():  # a small trained update, as a few PPO steps leave
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 2e-4, generator=torch.Generator(device=device).manual_seed(0))
    save_policy(policy, tok, work / "published", runtime, base)
    published = load_file(work / "published" / "model.safetensors")
    lost = total = 0.0  # |published - (W + dW)| over |dW|, W + dW computed here from the modules
    for name, module in policy.named_modules():
        if "default" in getattr(module, "lora_A", {}):
            delta = (
                module.lora_B["default"].weight.detach().float()
                @ module.lora_A["default"].weight.detach().float()
            )
            delta = (delta * module.scaling["default"]).cpu()
            exact = module.base_layer.weight.detach().float().cpu() + delta
            key = name.removeprefix("base_model.model.") + ".weight"
            lost += float((published[key].float() - exact).norm())
            total += float(delta.norm())
    lost_fp32 = lost / total
    lost_bf16 = lora.update_lost(full_state_dict(policy), lora.scaling(runtime.lora), torch.bfloat16)
    ids = torch.tensor([tok("The red fox helps the cat.")["input_ids"]], device=device)
    with torch.no_grad():
        merged = load_causal_lm(work / "published", Runtime(device=device))(input_ids=ids).logits
        unmerged = policy.float()(input_ids=ids).logits
    diff = float((merged - unmerged).abs().max())
    same_argmax = bool(torch.equal(merged.argmax(-1), unmerged.argmax(-1)))
    return {
        "ok": lost_fp32 < 1e-4 and diff < 1e-3 and same_argmax,
        "seconds": time.monotonic() - started,
        "detail": f"fp32 merge vs W + dW: {100 * lost_fp32:.4f}% of the update lost; a bf16 merge would lose "
        f"{100 * lost_bf16:.0f}% of the update; logits merged vs adapter: max |diff| {diff:.1e}, "
        f"greedy tokens {'equal' if same_argmax else 'DIFFER'}",
    }


PARTS = {"rm": part_rm, "ppo": part_ppo, "nccl": part_nccl, "parity": part_parity}


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--small", action="store_true", help="toy sizes: check the command on a CPU")
    parser.add_argument("--two-ranks", action="store_true", help="run the torchrun part without two GPUs")
    parser.add_argument("--only", choices=list(PARTS), action="append", help="run these parts only")
    parser.add_argument("--json", type=Path, help="write the results here too")
    args = parser.parse_args()
    from benchmarks.training import machine

    results = {}
    with tempfile.TemporaryDirectory(prefix="alignloop-gpu-acceptance-") as tmp:
        for name in args.only or list(PARTS):
            work = Path(tmp) / name
            work.mkdir()
            print(f"[{time.strftime('%H:%M:%S')}] {name} ...", flush=True)
            try:
                extra = (args.two_ranks,) if name == "nccl" else ()
                results[name] = PARTS[name](work, args.small, *extra)
            except Exception as e:  # one part's failure is reported, the others still run
                results[name] = {"ok": False, "seconds": 0.0, "detail": f"{type(e).__name__}: {e}"}
            print(f"[{time.strftime('%H:%M:%S')}] {name}: {results[name]['detail']}", flush=True)
    print(f"\nMachine: {machine()}\n\n| part | result | seconds | figures |\n|---|---|---|---|")
    for name, r in results.items():
        detail = r["detail"].replace("\n", " ").replace("|", "/")
        print(f"| {name} | {'pass' if r['ok'] else 'FAIL'} | {r['seconds']:.0f} | {detail} |")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))
    return 0 if all(r["ok"] for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())

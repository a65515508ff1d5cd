"""Swapping a LoRA-trained version into vLLM, both ways, in one run on one engine:

1. merged: the adapter merged into full weights (how alignloop publishes) and reloaded in place
   (`reload_weights`, what the gateway's in-place swap does);
2. adapter: vLLM's LoRA support (`enable_lora`), the base stays loaded and the request names the
   adapter; the first request with a new adapter loads it.

It also checks each way's greedy text against transformers on the same weights (merged: the
merged model; adapter: peft's model with the adapter), since serving must be exact.

    .venv/bin/python -m benchmarks.lora_swap [--swaps 5]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from benchmarks.processes import machine
from core.config import EngineConfig, LoRAConfig, TinyModelConfig
from inference.vllm_args import engine_kwargs
from synthetic.tiny_model import build_tiny_model
from trainer.data import prompt_ids
from trainer.lora import add_adapter, merged_state_dict, scaling

QUESTIONS = ["Describe a fox.", "Count to 5.", "Say hello to Ada.", "What is 2 plus 3?", "Is 7 even or odd?"]


def make_adapters(base: Path, work: Path, n: int, cfg: LoRAConfig) -> list[tuple[Path, Path]]:
    """n random adapters (as training would leave them) and their merged checkpoints."""
    out = []
    for i in range(n):
        model = add_adapter(AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32), cfg, "CAUSAL_LM")
        gen = torch.Generator().manual_seed(i)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.copy_(0.05 * torch.randn(p.shape, generator=gen))
        adapter, merged = work / f"adapter{i}", work / f"merged{i}"
        model.save_pretrained(adapter)
        state = merged_state_dict({k: v.detach() for k, v in model.state_dict().items()}, scaling(cfg))
        model.get_base_model().save_pretrained(merged, state_dict=state, safe_serialization=True)
        AutoTokenizer.from_pretrained(base).save_pretrained(merged)
        out.append((adapter, merged))
    return out


def hf_greedy(model, ids: list[list[int]], tok) -> list[str]:
    """transformers' greedy continuation of each prompt."""
    out = []
    with torch.no_grad():
        for p in ids:
            gen = model.generate(torch.tensor([p]), max_new_tokens=16, do_sample=False)
            out.append(tok.decode(gen[0, len(p) :], skip_special_tokens=True))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--swaps", type=int, default=5)
    args = parser.parse_args()
    from peft import PeftModel
    from vllm import LLM, SamplingParams
    from vllm.lora.request import LoRARequest

    cfg = LoRAConfig(enabled=True, r=8, alpha=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])
    with tempfile.TemporaryDirectory(prefix="alignloop-loraswap-") as tmp:
        work = Path(tmp)
        base = build_tiny_model(work / "base", TinyModelConfig())
        tok = AutoTokenizer.from_pretrained(base)
        ids = [prompt_ids(tok, q) for q in QUESTIONS]
        pairs = make_adapters(base, work, args.swaps, cfg)
        llm = LLM(**engine_kwargs(base, EngineConfig(), enable_lora=True, max_lora_rank=cfg.r, max_loras=2))
        greedy = SamplingParams(max_tokens=16, temperature=0)
        merged_s, adapter_s, merged_ok, adapter_ok = [], [], 0, 0
        for i, (adapter, merged) in enumerate(pairs):
            t = time.perf_counter()
            llm.collective_rpc("reload_weights", kwargs={"weights_path": str(merged)})
            merged_s.append(time.perf_counter() - t)
            texts = [
                o.outputs[0].text
                for o in llm.generate([{"prompt_token_ids": p} for p in ids], greedy, use_tqdm=False)
            ]
            merged_ok += texts == hf_greedy(
                AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32), ids, tok
            )
            llm.collective_rpc("reload_weights", kwargs={"weights_path": str(base)})
            request = LoRARequest(f"v{i}", i + 1, str(adapter))
            one = [{"prompt_token_ids": ids[0]}]
            t = time.perf_counter()
            llm.generate(one, greedy, lora_request=request, use_tqdm=False)  # loads the adapter
            first = time.perf_counter() - t
            t = time.perf_counter()
            llm.generate(one, greedy, lora_request=request, use_tqdm=False)  # already loaded
            adapter_s.append(max(0.0, first - (time.perf_counter() - t)))
            outs = llm.generate(
                [{"prompt_token_ids": p} for p in ids], greedy, lora_request=request, use_tqdm=False
            )
            peft_model = PeftModel.from_pretrained(
                AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32), adapter
            )
            adapter_ok += [o.outputs[0].text for o in outs] == hf_greedy(peft_model, ids, tok)
    print(
        f"\nMachine: {machine()}\nTiny model, LoRA r={cfg.r} on q,k,v,o; {args.swaps} versions, {len(QUESTIONS)} "
        "greedy prompts each.\n"
    )
    print("| way | swap seconds (median, max) | greedy text == transformers |\n|---|---|---|")
    print(
        f"| merged weights, reload in place | {statistics.median(merged_s):.3f}, {max(merged_s):.3f} | "
        f"{merged_ok} of {args.swaps} versions |"
    )
    print(
        f"| adapter, vLLM LoRA (load on first request) | {statistics.median(adapter_s):.3f}, {max(adapter_s):.3f} | "
        f"{adapter_ok} of {args.swaps} versions |"
    )


if __name__ == "__main__":
    main()

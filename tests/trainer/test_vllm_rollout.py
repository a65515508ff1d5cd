"""PPO rollouts on vLLM: every rank's engine follows the trainer's weights, loaded in place in memory or from disk."""

from safetensors.torch import load_file
from transformers import AutoTokenizer

from core.config import PPOConfig
from synthetic import task
from tests.conftest import perturbed_copy
from trainer.data import prompt_ids
from trainer.models import load_causal_lm
from trainer.ppo_training import train_ppo
from trainer.reward_model import RewardModel
from trainer.rollout import TransformersSampler, VLLMSampler

QUESTIONS = ["Describe a fox.", "What is 2 plus 3?", "Count to 4."]
# Two short PPO iterations sampling on a caller's vLLM engine (tests/trainer/test_hardware_and_lora.py too).
TWO_VLLM_ITERATIONS = PPOConfig(
    iterations=2,
    rollout_batch=8,
    minibatch=4,
    max_new_tokens=8,
    ptx_coef=0.0,
    save_every=0,
    rollout_engine="vllm",
)


def hf_greedy(path, prompts):
    tok = AutoTokenizer.from_pretrained(path)
    sampler = TransformersSampler(load_causal_lm(path), tok.pad_token_id, tok.eos_token_id)
    return [sampler.generate([p], 16, 0.0, 0)[0] for p in prompts]


def _ppo_rank(rank: int, init_file: str, base: str, other: str, rm: str, out: str) -> None:
    """One of two gloo ranks with its own vLLM engine: rank 0 first loads `other`'s weights in
    memory and then `base` back from its checkpoint; both train PPO. Each rank's greedy text on
    QUESTIONS at each point goes to out/greedy.<rank>."""
    import json

    import torch.distributed as dist

    from trainer.distributed import World
    from trainer.runtime import Runtime

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    tok = AutoTokenizer.from_pretrained(base)
    prompts = [prompt_ids(tok, q) for q in QUESTIONS]
    sampler = VLLMSampler(base)  # every rank's engine starts on the base, not on trained weights
    seen: dict = {}
    try:
        if rank == 0:  # the other rank waits at the run's first collective meanwhile
            seen["base"] = sampler.generate(prompts, 16, 0.0, 0)
            sampler.update_weights(load_file(f"{other}/model.safetensors"))
            seen["in_memory"] = sampler.generate(prompts, 16, 0.0, 0)
            sampler.update(base)  # from its checkpoint on disk
            seen["reloaded"] = sampler.generate(prompts, 16, 0.0, 0)
        world = World(rank=rank, size=2, local_rank=rank)
        cfg = TWO_VLLM_ITERATIONS.model_copy(
            update={"learning_rate": 2e-3}
        )  # far enough to change greedy text
        train_ppo(
            base, rm, task.prompts(16, seed=1), [], f"{out}/ppo", cfg, Runtime(world=world), sampler=sampler
        )
        seen["trained"] = sampler.generate(prompts, 16, 0.0, 0)
        with open(f"{out}/greedy.{rank}", "w") as f:
            json.dump(seen, f)
    finally:
        sampler.close()
        World(rank=rank, size=2).barrier()
        dist.destroy_process_group()


def test_every_ranks_rollout_engine_samples_the_trained_weights(tiny_model_dir, tmp_path, monkeypatch):
    """An engine samples what transformers samples on the same weights, whether they came in memory
    (update_weights: no file written) or from a checkpoint reloaded.
    Then PPO on two ranks, each with its own engine synced in memory: afterwards every rank's engine
    gives the published policy's greedy text (none is left on the base or another rank's copy)."""
    import json

    import torch

    other = perturbed_copy(tiny_model_dir, tmp_path / "other", seed=5)
    RewardModel.from_pretrained(tiny_model_dir).save_pretrained(tmp_path / "rm")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # two ranks and two engines share the cores
    paths = (tmp_path / "init", tiny_model_dir, other, tmp_path / "rm", tmp_path)
    torch.multiprocessing.spawn(_ppo_rank, args=tuple(str(p) for p in paths), nprocs=2)
    seen = [json.loads((tmp_path / f"greedy.{rank}").read_text()) for rank in (0, 1)]
    prompts = [prompt_ids(AutoTokenizer.from_pretrained(tiny_model_dir), q) for q in QUESTIONS]
    base = hf_greedy(tiny_model_dir, prompts)
    assert seen[0]["base"] == base and seen[0]["reloaded"] == base
    assert seen[0]["in_memory"] == hf_greedy(other, prompts) != base
    published = hf_greedy(tmp_path / "ppo", prompts)
    assert published != base
    for rank in (0, 1):
        assert seen[rank]["trained"] == published, f"rank {rank}"

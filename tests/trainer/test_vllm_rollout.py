"""PPO rollouts on vLLM: the sampler follows the trainer's weights after each in-place reload."""

import shutil

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


def test_vllm_rollouts_follow_pushed_weights(tiny_model_dir, tmp_path):
    live = tmp_path / "live"
    shutil.copytree(tiny_model_dir, live)
    tok = AutoTokenizer.from_pretrained(live)
    prompts = [prompt_ids(tok, q) for q in QUESTIONS]
    sampler = VLLMSampler(live)
    try:
        before = sampler.generate(prompts, 16, 0.0, 0)
        assert before == hf_greedy(live, prompts)

        shutil.copy(
            perturbed_copy(tiny_model_dir, tmp_path / "other", seed=5) / "model.safetensors",
            live / "model.safetensors",
        )
        sampler.update(live)
        after = sampler.generate(prompts, 16, 0.0, 0)
        assert after == hf_greedy(live, prompts)
        assert after != before

        # Two PPO iterations sampling on this engine; afterwards it serves the trained policy.
        RewardModel.from_pretrained(tiny_model_dir).save_pretrained(tmp_path / "rm")
        metrics = train_ppo(
            tiny_model_dir,
            tmp_path / "rm",
            task.prompts(16, seed=1),
            [],
            tmp_path / "ppo",
            TWO_VLLM_ITERATIONS,
            sampler=sampler,
        )
        assert metrics["iteration"] == 2 and metrics["samples_per_s"] > 0
        sampler.update(tmp_path / "ppo")
        assert sampler.generate(prompts, 16, 0.0, 0) == hf_greedy(tmp_path / "ppo", prompts)
    finally:
        sampler.close()

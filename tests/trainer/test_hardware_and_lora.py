"""Training on real hardware options, checked on CPU: LoRA for the reward model and PPO (sharing
one base between policy and reference), merged LoRA and bf16 checkpoints that vLLM serves, a LoRA
policy published as trained from a bf16 base, collectives on the runtime's device, and evaluation
whose memory does not grow with the number of prompts."""

import shutil

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoTokenizer

from core.config import LoRAConfig, PPOConfig, RMConfig, SFTConfig, TrainConfig
from synthetic import task
from synthetic.corpus import ANIMALS, pretraining_texts
from trainer.data import pad_batch, prompt_ids, response_ids
from trainer.distributed import World
from trainer.evaluate import greedy_responses, mean_reward, pretraining_loss, score, sequence_logprobs
from trainer.lm import token_logprobs
from trainer.lora import ADAPTER_DIR, merged_state_dict, scaling, update_lost
from trainer.models import load_causal_lm, save_policy, trainable_policy
from trainer.ppo_models import load_ppo_models
from trainer.ppo_training import train_ppo
from trainer.reward_model import RewardModel
from trainer.reward_training import train_rm
from trainer.runtime import Runtime
from trainer.sft import train_sft

LORA = Runtime(lora=LoRAConfig(enabled=True, r=8, alpha=16))
TRAIN_PROMPTS = [f"Describe a {a}." for a in ANIMALS[:7]] * 4
HELDOUT_PROMPTS = [f"Describe a {a}." for a in ANIMALS[7:]]


@pytest.fixture(scope="module")
def lora_rm(sft_model, tmp_path_factory):
    """A reward model trained with LoRA on the SFT backbone (the head trains in full)."""
    out = tmp_path_factory.mktemp("lora-rm") / "rm"
    rankings = task.rankings(240, k=4, seed=2) + task.rankings(240, k=9, seed=3)
    metrics = train_rm(
        sft_model,
        rankings,
        out,
        RMConfig(batch_size=8, learning_rate=3e-3, eval_fraction=0.3),
        LORA,
        reference=task.demonstrations(64, seed=1),
    )
    return out, metrics


def test_lora_reward_model_learns_the_hidden_rule(lora_rm):
    out, metrics = lora_rm
    print(f"\nLoRA RM: {metrics}")
    assert metrics["heldout_rankings"] > 50
    assert metrics["heldout_accuracy"] >= 0.85, metrics
    # Published merged: an ordinary backbone beside the head, and the adapter kept for resuming.
    assert (out / "model.safetensors").exists() and (out / ADAPTER_DIR / "adapter_model.safetensors").exists()
    assert not any("lora" in k for k in RewardModel.from_pretrained(out).state_dict())


def test_reference_with_the_adapter_disabled_is_exactly_sft(sft_model, lora_rm):
    models = load_ppo_models(sft_model, lora_rm[0], LORA)
    assert models.reference is None, "with LoRA on the SFT base the reference must be that base, not a copy"
    with torch.no_grad():  # move the adapter away from its zero start, as training does
        for name, p in models.policy.named_parameters():
            if "lora_B" in name:
                p.add_(0.05 * torch.randn_like(p))
    tok = AutoTokenizer.from_pretrained(sft_model)
    seqs = [prompt_ids(tok, p) + response_ids(tok, "The fox is blue.") for p in HELDOUT_PROMPTS]
    ids, attn, _ = pad_batch(seqs, tok.pad_token_id)
    sft = load_causal_lm(sft_model, frozen=True)
    with torch.no_grad():
        expected = token_logprobs(sft(input_ids=ids, attention_mask=attn).logits, ids)
        reference = models.ref_logprobs(ids, attn)
        policy = token_logprobs(models.policy(input_ids=ids, attention_mask=attn).logits, ids)
        rm_scores = models.scores(ids, attn)
        rm_alone = RewardModel.from_pretrained(lora_rm[0], frozen=True)(ids, attn)
    assert torch.equal(reference, expected)
    assert not torch.allclose(policy, expected), "the adapter should change the policy"
    assert torch.equal(rm_scores, rm_alone), "the value adapter must not leak into the reward model's scores"
    # One base for policy and reference, one for reward and value model: two backbones, not four.
    assert models.value.backbone is models.reward_model.backbone


@pytest.fixture(scope="module")
def lora_ppo(sft_model, lora_rm, tmp_path_factory):
    out = tmp_path_factory.mktemp("lora-ppo") / "ppo"
    cfg = PPOConfig(
        iterations=12,
        rollout_batch=16,
        minibatch=8,
        max_new_tokens=24,
        learning_rate=2e-3,
        rollout_engine="transformers",
        save_every=0,
        seed=3,
    )
    metrics = train_ppo(sft_model, lora_rm[0], TRAIN_PROMPTS, pretraining_texts(400, seed=11), out, cfg, LORA)
    return out, metrics


def test_lora_ppo_ptx_raises_the_heldout_reward(sft_model, lora_rm, lora_ppo):
    out, metrics = lora_ppo
    tok = AutoTokenizer.from_pretrained(sft_model)
    rm = RewardModel.from_pretrained(lora_rm[0], frozen=True)
    before = mean_reward(load_causal_lm(sft_model, frozen=True), rm, tok, HELDOUT_PROMPTS)
    after = mean_reward(load_causal_lm(out, frozen=True), rm, tok, HELDOUT_PROMPTS)  # the merged checkpoint
    print(f"\nLoRA PPO-ptx: held-out greedy reward {before:.3f} -> {after:.3f}; {metrics}")
    assert after > before + 0.1, (before, after)
    assert (out / ADAPTER_DIR / "adapter_model.safetensors").exists()
    assert (out / "value" / ADAPTER_DIR / "adapter_model.safetensors").exists()


def test_merged_lora_and_bf16_checkpoints_serve_in_vllm(sft_model, lora_ppo, tmp_path):
    """vLLM loads a bf16 checkpoint from a bf16 run on the CPU, and a merged LoRA policy; its greedy
    text equals transformers' on the same weights."""
    from tests.trainer.test_vllm_rollout import hf_greedy
    from trainer.rollout import VLLMSampler

    bf16 = Runtime(precision="bf16", save_dtype="bf16", gradient_checkpointing=True)
    train_sft(sft_model, task.demonstrations(64, seed=4), tmp_path / "bf16", SFTConfig(batch_size=16), bf16)
    config = (tmp_path / "bf16" / "config.json").read_text()
    assert '"dtype": "bfloat16"' in config
    assert {v.dtype for v in load_causal_lm(tmp_path / "bf16").state_dict().values()} == {torch.float32}
    from safetensors.torch import load_file

    assert {t.dtype for t in load_file(tmp_path / "bf16" / "model.safetensors").values()} == {torch.bfloat16}

    tok = AutoTokenizer.from_pretrained(sft_model)
    prompts = [prompt_ids(tok, q) for q in ["Describe a fox.", "Count to 4.", "What is 2 plus 3?"]]
    sampler = VLLMSampler(tmp_path / "bf16")
    try:
        assert sampler.generate(prompts, 16, 0.0, 0) == hf_greedy(tmp_path / "bf16", prompts)
        merged = tmp_path / "merged"
        shutil.copytree(
            lora_ppo[0], merged, ignore=shutil.ignore_patterns("adapter", "value", "training_state")
        )
        sampler.update(merged)
        assert sampler.generate(prompts, 16, 0.0, 0) == hf_greedy(merged, prompts)
    finally:
        sampler.close()


def test_evaluation_memory_does_not_grow_with_the_number_of_prompts(sft_model, lora_rm):
    """Every forward pass of the evaluation functions sees at most `batch` sequences, however many
    prompts there are (a global forward hook reads the batch size of every model call)."""
    tok = AutoTokenizer.from_pretrained(sft_model)
    policy = load_causal_lm(sft_model, frozen=True)
    rm = RewardModel.from_pretrained(lora_rm[0], frozen=True)
    prompts = [f"Describe a {ANIMALS[i % len(ANIMALS)]}." for i in range(70)]
    seen: list[int] = []

    def record(module, args, kwargs, output):
        ids = kwargs.get("input_ids", args[0] if args else None)
        if isinstance(ids, torch.Tensor) and type(module).__name__ in ("LlamaForCausalLM", "LlamaModel"):
            seen.append(ids.shape[0])

    hook = torch.nn.modules.module.register_module_forward_hook(record, with_kwargs=True)
    try:
        answers = greedy_responses(policy, tok, prompts, 8, batch=8)
        scores = score(rm, tok, prompts, answers, batch=8)
        logp = sequence_logprobs(policy, tok, prompts, answers, batch=8)
        ptx = pretraining_loss(policy, tok, pretraining_texts(70, seed=3), batch=8)
    finally:
        hook.remove()
    assert len(answers) == len(scores) == len(logp) == 70 and ptx > 0
    assert seen and max(seen) <= 8, max(seen)
    # Batching changes nothing but memory: the same numbers as one big batch.
    assert torch.allclose(scores, score(rm, tok, prompts, answers, batch=70), atol=1e-4)


def test_a_lora_policy_is_published_as_trained_even_from_a_bf16_base(tiny_model_dir, tmp_path):
    """On a GPU the LoRA base is held in bf16. Merging and casting back to it before the save dtype
    applied rounded a small update away; with save_dtype fp32 the published weights are W + ΔW
    computed in float32, and a bf16 publication says how much of ΔW it loses."""
    runtime = Runtime(precision="bf16", save_dtype="fp32", lora=LoRAConfig(enabled=True, r=8, alpha=16))
    model = trainable_policy(tiny_model_dir, runtime)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(2e-4 * torch.randn(p.shape, generator=gen))  # a small update, as early PPO makes
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    save_policy(
        model, AutoTokenizer.from_pretrained(tiny_model_dir), tmp_path / "fp32", runtime, tiny_model_dir
    )
    published = load_file(tmp_path / "fp32" / "model.safetensors")
    expected = merged_state_dict(state, scaling(runtime.lora))
    adapted = [k for k in published if k.endswith("q_proj.weight")]
    assert adapted and all(published[k].dtype == torch.float32 for k in published)
    for key in adapted:
        base = state[f"base_model.model.{key.removesuffix('.weight')}.base_layer.weight"]
        assert base.dtype == torch.bfloat16
        assert torch.equal(published[key], expected[key]) and not torch.equal(published[key], base.float())
    assert update_lost(state, scaling(runtime.lora), torch.float32) == 0.0
    assert update_lost(state, scaling(runtime.lora), torch.bfloat16) > 0.1, (
        "bf16 rounds much of a small update away"
    )


def test_a_worlds_collectives_run_on_its_runtimes_device():
    """NCCL reduces only CUDA tensors; gloo (the suite's) takes any, so the device is checked here."""
    runtime = Runtime.resolve(TrainConfig(device="cpu"), World(rank=0, size=2))
    assert runtime.world.device == runtime.device
    assert World(size=2, device=torch.device("meta")).collective_tensor([1.0]).device.type == "meta"


def test_lora_rollouts_move_only_the_adapter_and_sample_what_the_merge_does(
    sft_model, lora_rm, lora_ppo, tmp_path
):
    """A vLLM engine on the base, handed the trained adapter (no merged checkpoint), gives the greedy
    text of the merged checkpoint; LoRA PPO then syncs each iteration's adapter into that engine."""
    from tests.trainer.test_vllm_rollout import TWO_VLLM_ITERATIONS, hf_greedy
    from trainer.rollout import VLLMSampler

    tok = AutoTokenizer.from_pretrained(sft_model)
    prompts = [prompt_ids(tok, q) for q in ["Describe a fox.", "Count to 4.", "Describe a cat."]]
    merged = tmp_path / "merged"
    shutil.copytree(lora_ppo[0], merged, ignore=shutil.ignore_patterns("adapter", "value", "training_state"))
    sampler = VLLMSampler(sft_model, lora_rank=LORA.lora.r)
    try:
        sampler.update_adapter(lora_ppo[0] / ADAPTER_DIR)
        assert sampler.generate(prompts, 16, 0.0, 0) == hf_greedy(merged, prompts)
        cfg = TWO_VLLM_ITERATIONS.model_copy(update={"seed": 4})
        out = tmp_path / "ppo"
        metrics = train_ppo(sft_model, lora_rm[0], TRAIN_PROMPTS, [], out, cfg, LORA, sampler=sampler)
        assert metrics["iteration"] == 2 and metrics["sync_s"] > 0
        assert sampler.adapter_updates == 1 + 1 + 2  # ours, the run's start, each iteration's end
        # The engine now samples the trained policy: the published merge's greedy text.
        assert sampler.generate(prompts, 16, 0.0, 0) == hf_greedy(out, prompts)
    finally:
        sampler.close()


def test_lora_targets_are_found_in_each_architecture():
    """With no target_modules set, adapters go on the attention projections the model has, whatever
    its family calls them, in the causal LM and in the reward model's backbone alike."""
    from transformers import (
        AutoModel,
        AutoModelForCausalLM,
        GemmaConfig,
        GPTNeoXConfig,
        LlamaConfig,
        Qwen2Config,
    )

    from trainer.lora import add_adapter, attention_projections

    shape = {"hidden_size": 64, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2}
    projections = ["k_proj", "o_proj", "q_proj", "v_proj"]
    for config, names in (
        (LlamaConfig(**shape, vocab_size=64), projections),
        (Qwen2Config(**shape, vocab_size=64, num_key_value_heads=1), projections),
        (GemmaConfig(**shape, vocab_size=64, head_dim=32), projections),
        (GPTNeoXConfig(**shape, vocab_size=64), ["dense", "query_key_value"]),
    ):
        assert attention_projections(AutoModelForCausalLM.from_config(config)) == names
        adapted = add_adapter(
            AutoModel.from_config(config), LoRAConfig(enabled=True, r=4), "FEATURE_EXTRACTION"
        )
        wrapped = {name.rsplit(".", 1)[-1] for name, m in adapted.named_modules() if hasattr(m, "lora_A")}
        assert wrapped == set(names), type(config).__name__

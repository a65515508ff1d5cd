"""All of alignloop's configuration, typed, in one place.

Precedence, lowest to highest: the defaults below < a TOML file (``--config``) < environment
variables (``ALIGNLOOP_<SECTION>__<FIELD>``, e.g. ``ALIGNLOOP_GATEWAY__PORT=9000``) < CLI
overrides (``--set gateway.port=9000`` and the named flags of each command).

This module is longer than the others on purpose: every setting of every package is here, in
one tree, so that one file answers "what can I set, and what does it default to".
"""

from __future__ import annotations

import json
import os
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from core.failpoints import ENV as FAILPOINT_ENV  # shares the prefix but is not a setting
from core.limits import MAX_K
from core.paths import StatePaths

ENV_PREFIX = "ALIGNLOOP_"


class _Section(BaseModel):
    # A typo in a config file or env var must fail loudly, not be ignored.
    model_config = ConfigDict(extra="forbid")


class TinyModelConfig(_Section):
    """Shape and pre-training budget of the locally built default policy."""

    # The architecture: llama (the default), qwen2 (grouped-query attention, q/k/v biases, tied
    # embeddings) or gemma (GeGLU, scaled embeddings, tied), so the loop is tried on more than one.
    family: Literal["llama", "qwen2", "gemma"] = "llama"
    vocab_size: int = 512
    hidden_size: int = 128
    num_layers: int = 2
    num_heads: int = 2  # head_dim = hidden_size / num_heads; vLLM's CPU kernels need >= 32
    num_kv_heads: int | None = None  # None: num_heads (qwen2: 1, grouped-query attention)
    intermediate_size: int = 512
    max_position_embeddings: int = 512
    corpus_examples: int = 6000
    pretrain_steps: int = 250
    batch_size: int = 32
    seq_len: int = 128
    learning_rate: float = 3e-3
    seed: int = 0


class EngineConfig(_Section):
    """How vLLM runs the policy."""

    dtype: str = "auto"  # "auto" = float32 on CPU, bfloat16 on GPU
    max_model_len: int = 512
    max_num_seqs: int = 64
    # None: eager on CPU (which has no CUDA graphs), CUDA graphs on a GPU (decoding is launch-bound
    # without them; capturing costs start-up time, so a tiny model on a GPU may set true).
    enforce_eager: bool | None = None
    # GPUs one engine spans (vLLM's tensor parallelism, within a node); every engine of a gateway
    # (serving, canary, blue/green's next) takes this many.
    tensor_parallel_size: int = Field(default=1, ge=1)
    cpu_kv_cache_gib: int = 1
    # Share of GPU memory each engine may take. None: 0.85 with in-place swaps; 0.42 with blue/green,
    # which runs two engines at once while it switches (lower it likewise to run a canary in place mode).
    gpu_memory_utilization: float | None = None
    seed: int = 0
    # How a new version replaces the served one: see inference/engine.py.
    swap_mode: Literal["in_place", "blue_green"] = "in_place"
    # An engine taken out of service finishes its requests for at most this long, then aborts them.
    drain_timeout_s: float = Field(default=120.0, gt=0)
    # The longest an admin call (or the CURRENT watcher) waits behind another switch: then 503.
    swap_wait_s: float = Field(default=30.0, gt=0)
    # LoRA adapter versions (registry/store.py) are served by the engine holding their base. None:
    # an engine starts with LoRA support when it is started for an adapter version or the registry
    # holds adapters of its version; true: always (the first adapter then needs no engine start);
    # false: never (adapter versions are refused).
    enable_lora: bool | None = None
    # Adapters one engine holds at once (the serving version and a canary need 2).
    max_loras: int = Field(default=2, ge=1)
    # The least rank an engine with LoRA accepts; raised to the largest adapter rank in the registry
    # on that base at start. A later adapter of a higher rank is refused (restart to serve it).
    max_lora_rank: int = Field(default=16, ge=1)

    def gpu_memory_share(self) -> float:
        """The GPU memory fraction one engine is given (see gpu_memory_utilization)."""
        if self.gpu_memory_utilization is not None:
            return self.gpu_memory_utilization
        return 0.42 if self.swap_mode == "blue_green" else 0.85


# Marks of the placeholders shipped in deploy/ (k8s/secret.yaml, compose/alignloop.env.example) and
# of example values: a deployment that kept one would be open to anyone who read this repository.
_PLACEHOLDER_MARKS = (
    "change-me",
    "changeme",
    "replace-me",
    "placeholder",
    "your-key",
    "your-secret",
    "example",
)


def refuse_placeholder(value: str, what: str) -> str:
    """`value`, unless it is a shipped placeholder or an example value (ValueError naming `what`)."""
    lowered = value.lower()
    if any(mark in lowered for mark in _PLACEHOLDER_MARKS):
        raise ValueError(
            f"{what} is a placeholder or example value; put a real secret there (e.g. `openssl rand "
            f"-hex 32`) before starting"
        )
    return value


class ApiKeyConfig(_Section):
    """One client credential and its limits."""

    key: str = Field(repr=False)  # never shown in a repr or a log
    name: str
    # user: may generate (and later rate its own completions); rater: may also rate others';
    # admin: may change the deployed policy. Admin is a separate credential, not a superset.
    role: Literal["user", "rater", "admin"] = "user"
    requests_per_minute: int = Field(default=6000, ge=1)
    max_tokens: int = Field(default=512, ge=1)
    max_n: int = Field(default=MAX_K, ge=1, le=MAX_K)
    # Fairness: generations this key may run at once, and tokens it may have generated per minute
    # (n x max_tokens is reserved when a generation starts; what it did not use is given back).
    max_concurrent_requests: int = Field(default=16, ge=1)
    generated_tokens_per_minute: int = Field(default=200_000, ge=1)
    # False: this key's prompts are never sampled into the labelling queue (raters never see them).
    label_sampling: bool = True

    @field_validator("key")
    @classmethod
    def _not_a_placeholder(cls, key: str) -> str:
        return refuse_placeholder(key, "an API key")


class LabellingConfig(_Section):
    """The raters' queue: prompts sampled from production chat traffic, K fresh answers each."""

    sample_rate: float = Field(default=0.02, ge=0.0, le=1.0)  # share of served single-turn chats taken
    k: int = Field(default=4, ge=2, le=MAX_K)  # candidates generated per item
    overlap: int = Field(default=2, ge=1)  # raters per item (agreement needs >= 2)
    lease_s: float = Field(default=900.0, gt=0)  # an item held longer returns to the queue
    # Share of leases that draw an item uniformly at random instead of the most informative one
    # (reward model least sure, versions most different): only these (and mixed user requests) are
    # verdicts between versions, so the canary's evidence stays a random sample of the traffic.
    random_share: float = Field(default=0.25, ge=0.0, le=1.0)
    max_tokens: int = Field(default=64, ge=1)  # per candidate
    temperature: float = Field(default=1.0, ge=0.0)
    max_waiting: int = Field(default=500, ge=1)  # items waiting for candidates; past it, none taken
    # Tokens the queue may generate per hour (all items' candidates together): nobody's request pays
    # for them, so they come from a budget of their own; past it, items wait for the next hour.
    tokens_per_hour: int = Field(default=100_000, ge=1)
    retention_days: float = Field(
        default=30.0, gt=0
    )  # items (and their rankings) older than this are dropped


class GatewayConfig(_Section):
    """The HTTP front door."""

    host: str = "127.0.0.1"
    port: int = 8000
    served_model_name: str = "alignloop-policy"
    # Empty: keys are generated once into <state_dir>/api_keys.json (mode 0600) and logged.
    api_keys: list[ApiKeyConfig] = []
    max_body_bytes: int = 256 * 1024
    max_prompt_tokens: int = 384
    default_max_tokens: int = 16
    log_level: str = "info"
    # How long an idle client connection is kept open. Longer than any client's or load balancer's
    # own idle timeout, so the client always closes first: a server that closes an idle connection
    # while the client is sending its next request on it fails that request ("server disconnected"),
    # and a stalled event loop makes the server's timer fire late, exactly then.
    keep_alive_s: float = Field(default=75.0, gt=0)
    failed_auth_per_minute: int = Field(default=60, ge=1)  # per client address; then 429
    # Peers whose X-Forwarded-For names the client (comma-separated addresses or networks, "*" for
    # any): the load balancer's, so the failed-auth limit counts per client, not per balancer.
    trusted_proxies: str = "127.0.0.1"
    labelling: LabellingConfig = LabellingConfig()
    # Signs the request and choice ids handed out, so any replica can check who may rate what with
    # no shared database. Replicas share these; the first signs, all verify (rotate by putting a new
    # one first, and drop the old one once feedback.index_retention_days have passed). Empty: one
    # is generated into <state_dir>/gateway/ownership_secret (one gateway).
    ownership_secrets: list[SecretStr] = []
    # How often the gateway looks at the registry's CURRENT pointer (the trainer promotes by
    # moving it); 0 turns watching off.
    registry_poll_s: float = 1.0

    @field_validator("ownership_secrets")
    @classmethod
    def _long_enough(cls, secrets: list[SecretStr]) -> list[SecretStr]:
        if any(len(s.get_secret_value()) < 16 for s in secrets):
            raise ValueError(
                "each ownership secret needs at least 16 characters (e.g. `openssl rand -hex 32`)"
            )
        for s in secrets:
            refuse_placeholder(s.get_secret_value(), "gateway.ownership_secrets")
        return secrets

    @field_validator("api_keys")
    @classmethod
    def _one_owner_per_name(cls, keys: list[ApiKeyConfig]) -> list[ApiKeyConfig]:
        # A key's name owns its completions: two keys with one name would share what they may rate.
        names = [k.name for k in keys]
        if len(set(names)) != len(names):
            raise ValueError(
                f"API key names must be unique; repeated: {sorted({n for n in names if names.count(n) > 1})}"
            )
        if len({k.key for k in keys}) != len(keys):
            raise ValueError("two API keys have the same secret")
        return keys


class FeedbackConfig(_Section):
    """Where prompts, completions and preferences go."""

    # "host:port[,host:port]"; empty runs on the embedded durable log alone (single machine).
    kafka_bootstrap: str | None = None
    # Record every served completion (prompt, candidates, version): what feedback refers to.
    record_completions: bool = True
    partitions: int = 3
    replication_factor: int = 1
    # Events accepted but not yet in Kafka (or, embedded, all events); past this the feedback API
    # answers 503 rather than accept what it could lose.
    max_spool_bytes: int = 512 * 1024 * 1024
    kafka_timeout_s: float = 10.0
    # A record larger than this never goes to Kafka (the broker would refuse it for ever and block
    # everything behind it): it is kept in the spool's dead-letter table and counted.
    max_record_bytes: int = Field(default=1_000_000, ge=1024)
    # How long the served-choice and idempotency index remembers a completion (ownership checks
    # and idempotent resubmission work within this window); its size counts against max_spool_bytes.
    index_retention_days: float = Field(default=30.0, gt=0)
    # Idempotency keys one caller may hold in the index; past it their oldest are forgotten (a retry
    # of one is still the same event to every reader, its id being derived from the key), so one
    # key cannot fill the spool that everyone's feedback shares (~0.4 KB a key: 4 MB per caller).
    max_idempotency_keys_per_caller: int = Field(default=10_000, ge=1)
    # The longest a feedback request waits for the disk before it is answered 503 + Retry-After.
    write_timeout_s: float = Field(default=10.0, gt=0)
    # Kafka connection security, passed to producer, admin client and consumer alike.
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None

    @field_validator("sasl_password")
    @classmethod
    def _real_password(cls, password: SecretStr | None) -> SecretStr | None:
        if password is not None:
            refuse_placeholder(password.get_secret_value(), "feedback.sasl_password")
        return password

    ssl_cafile: Path | None = None
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None


class SFTConfig(_Section):
    """Supervised fine-tuning on demonstrations (loss on response tokens only)."""

    epochs: int = 1
    batch_size: int = 16
    learning_rate: float = 1e-4
    max_len: int = 256
    seed: int = 0
    save_every: int = 100  # steps between resumable checkpoints


class RMConfig(_Section):
    """Reward model training on K-wise rankings (one ranking = one batch element)."""

    epochs: int = 1  # the paper trains its RM for one epoch
    batch_size: int = 8  # rankings per step
    learning_rate: float = 5e-5
    max_len: int = 256
    # Sequences forwarded at once: a step's rankings go through in micro-batches of whole rankings
    # (at least one), their gradients summed, so a step's activation memory is one micro-batch's
    # whatever K and batch_size are (8 rankings of K = 9 are 72 sequences). None: the whole step at
    # once, the faster where it fits (a 7B model does not: set 8-16 there).
    micro_batch_sequences: int | None = Field(default=None, ge=1)
    eval_fraction: float = 0.1  # held out for pairwise accuracy
    seed: int = 0
    save_every: int = 100
    # After training, fit a temperature on the round's judge set (rankings it never trained on) and
    # divide its rewards by it (trainer/calibration.py): same orderings, rewards as sure as the RM is
    # right. Off: the raw Bradley-Terry scale.
    calibrate: bool = False


class PPOConfig(_Section):
    """PPO-ptx (defaults: the paper's where they fit a tiny model; see README "Training")."""

    iterations: int = 20
    rollout_batch: int = 32  # prompts per iteration (paper: 512)
    minibatch: int = 8  # (paper: 64)
    epochs: int = 1  # PPO epochs per batch (paper: 1)
    max_new_tokens: int = 32
    temperature: float = 1.0  # (paper: 1)
    learning_rate: float = 1e-5
    kl_coef: float = 0.02  # β (paper: 0.02)
    target_kl: float | None = None  # set to adapt β towards this per-sequence KL
    clip: float = 0.2  # (paper: 0.2)
    value_clip: float = 0.2
    vf_coef: float = 0.1
    gamma: float = 1.0  # no discount (paper)
    lam: float = 0.95
    ptx_coef: float = 1.0  # γ; 0 gives plain PPO (paper: 27.8 at its scale)
    ptx_batch: int = 16  # pretraining sequences per update
    rollout_engine: Literal["vllm", "transformers"] = "vllm"
    # Share of GPU memory the vLLM rollout engine may take beside the training models (GPU only);
    # the engine sleeps (frees its KV cache) while the trainer updates.
    rollout_gpu_memory: float = 0.3
    # With LoRA and vLLM rollouts: "adapter" hands the engine only the new adapter each iteration
    # (its base stays loaded); "merged" hands it the whole merged weights (as weight_sync says).
    rollout_weights: Literal["adapter", "merged"] = "adapter"
    # How whole (or merged) weights reach the vLLM rollout engine each iteration: "memory" loads them
    # into the running engine in place through a shared-memory block (one more copy of the policy in
    # host memory); "checkpoint" writes a checkpoint that the engine reloads from disk (the slower
    # way, kept to compare and for a host short of memory).
    weight_sync: Literal["memory", "checkpoint"] = "memory"
    seed: int = 0
    save_every: int = 5


class LoopConfig(_Section):
    """The trainer service: when to retrain, and the gate a candidate must pass."""

    min_new_comparisons: int = 50  # a round starts after this many new comparisons ...
    max_interval_s: float = 600.0  # ... or after this long, if there is any new one
    poll_s: float = 1.0
    consume_batch: int = 500  # events per poll per topic: one dataset transaction
    group: str = "alignloop-trainer"
    sft_version: str = "v0001"  # the KL anchor and PPO reference
    eval_fraction: float = 0.2  # of the collected prompts, held out for the gate
    # Raters whose comparisons are held out too (once there are min_raters_to_hold_out of them):
    # the gate checks the reward model on people and prompts it was not trained on.
    eval_user_fraction: float = 0.2
    min_raters_to_hold_out: int = 5
    # The reward model must order the held-out comparisons this well before its scores judge a candidate.
    min_judge_accuracy: float = 0.55
    gate_margin: float = 0.1  # candidate reward must exceed serving reward by this (> 0: no coin flips)
    # ... and not by luck: the paired reward gain's lower confidence bound (mean - z x standard
    # error) must clear the margin. 1.64: one-sided 95%. 0: the plain mean decides.
    gate_confidence_z: float = Field(default=1.64, ge=0.0)
    # One user's weight in a round: at most this many of their rankings (their latest) and requests
    # count, so that nobody steers the reward model, the PPO prompts or when rounds happen alone.
    per_user_cap: int = Field(default=500, ge=1)
    kl_budget: float = 10.0  # mean per-answer KL from SFT on held-out prompts
    ptx_regression: float = 0.25  # allowed relative rise of the pretraining LM loss over SFT's
    gate_samples_per_prompt: int = Field(default=8, ge=1)  # answers sampled per held-out prompt by the gate
    # With few held-out prompts, more answers each: the gate judges at least this many per policy.
    gate_min_answers: int = Field(default=64, ge=1)
    gate_max_prompts: int = Field(default=64, ge=1)  # held-out prompts the gate uses (a stable subset)
    eval_batch: int = 16  # prompts (or texts) per forward in evaluation: memory stays bounded
    metrics_port: int = 9400  # 0: no Prometheus endpoint
    metrics_host: str = "127.0.0.1"  # 0.0.0.0 in a container, so Prometheus can reach it
    # Caps a round's RM training; it still draws from all comparisons so far, warm-starting from
    # the last RM, so learning accumulates across rounds. None: full epochs every round.
    rm_max_steps: int | None = None
    # The reward model trains on the newest this-many rankings only (warm-starting from the last RM
    # still), so that old rankings of old policies' answers fall away. None: every ranking so far.
    # A window weakens per_user_cap: one key's latest rankings (up to the cap) can fill it alone.
    rm_window: int | None = Field(default=None, ge=1)
    # Pretraining text for PPO-ptx's LM term and the gate's alignment-tax check: JSON lines of
    # {"text": ...}, a .txt file (paragraphs), or a folder of either. A real model's user gives text
    # like its pretraining mix (e.g. a slice of a web or book corpus). None:
    # <state_dir>/data/pretraining.jsonl, which the tiny model's build writes.
    pretraining_data: Path | None = None
    pretraining_max_texts: int = Field(default=50_000, ge=1)  # read at most this many documents
    # After each round the new reward model scores the candidates of the newest labelling items still
    # waiting for raters, and the gateways' queues lease the ones it is least sure of first. 0: none.
    labelling_items_scored: int = Field(default=512, ge=0)


class LoRAConfig(_Section):
    """Low-rank adapters (peft) instead of full fine-tuning, for SFT, the reward model and PPO.

    With LoRA, PPO's frozen reference is the policy's own base with the adapter switched off, and
    the value model is an adapter (plus its head) on the reward model's frozen backbone: one copy of
    each base instead of four full models."""

    enabled: bool = False
    r: int = 16
    alpha: int = 32
    dropout: float = 0.0
    # Module names the adapters wrap. None: derived from the model's architecture (every linear
    # projection inside its attention blocks: q/k/v/o on Llama, Qwen2, Mistral and Gemma).
    target_modules: list[str] | None = None
    # How the trainer publishes a policy trained with LoRA: merged into full weights, or as the
    # adapter alone, a version on its base that the gateway serves without starting an engine.
    publish: Literal["merged", "adapter"] = "merged"


class TrainConfig(_Section):
    # Where and how every stage computes (the trainer service's included).
    device: str = "auto"  # auto: the GPU (this rank's) when there is one, else the CPU; or cpu, cuda, cuda:N
    # auto: bf16 mixed precision on a GPU, fp32 on a CPU. bf16: trainable weights stay fp32 (the
    # optimiser's copy), compute runs in bfloat16 (autocast), frozen models are held in bfloat16.
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    # dtype of saved checkpoints; auto: the base checkpoint's own (a bf16 model stays bf16, the
    # tiny model stays fp32). bf16 halves the size, but rounds away updates below its resolution.
    save_dtype: Literal["auto", "fp32", "bf16"] = "auto"
    # Recompute activations in backward: less memory, ~30% more compute. None: on a GPU (where
    # memory bounds the batch), off on a CPU.
    gradient_checkpointing: bool | None = None
    length_bucketing: bool = True  # batch items of similar length together: less padding
    sharding: Literal["ddp", "fsdp"] = "ddp"  # under torchrun: a full copy per rank, or FSDP2 shards
    # torch's threads when computing on the CPU (None: torch's default, one per core). Beside a CPU
    # vLLM engine on the same cores, set 1: both sides' OpenMP threads spin waiting for cores the
    # other holds, and every step slows by far more than the cores' fair share.
    cpu_threads: int | None = Field(default=None, ge=1)
    # What a round may use on its device, checked against its memory plan before it loads anything
    # (trainer/memory_plan.py). None: the GPU's memory, or the host's available memory on a CPU.
    memory_limit_gib: float | None = Field(default=None, gt=0)
    lora: LoRAConfig = LoRAConfig()
    sft: SFTConfig = SFTConfig()
    rm: RMConfig = RMConfig()
    ppo: PPOConfig = PPOConfig()
    loop: LoopConfig = LoopConfig()


class PromotionConfig(_Section):
    """How a candidate that passed the trainer's offline gate comes to serve everyone.

    canary: the gateway serves it to `canary_fraction` of users (sticky per user) and lets people's
    blinded comparisons against the serving version decide, by a sequential test (promotion/sequential.py)
    that may be looked at after every comparison: promote when it is preferred, roll back when it is
    not, or when it fails guardrails, or when `max_samples` or `max_canary_s` pass undecided.
    direct: the trainer moves CURRENT itself once the offline gate passes (no people in the decision).
    """

    mode: Literal["canary", "direct"] = "canary"
    canary_fraction: float = Field(default=0.5, gt=0.0, lt=1.0)  # of users (sticky), not of requests
    alpha: float = Field(default=0.05, gt=0.0, lt=0.5)  # false promotion rate (candidate preferred <= 50%)
    beta: float = Field(
        default=0.1, gt=0.0, lt=0.5
    )  # false roll-back rate (candidate preferred >= 50% + delta)
    delta: float = Field(default=0.2, gt=0.0, lt=0.5)  # the preference worth detecting: 0.5 + delta
    min_samples: int = Field(default=20, ge=1)  # no decision on fewer comparisons (ties excluded)
    max_samples: int = Field(default=400, ge=1)  # undecided after this many: roll back
    max_canary_s: float = Field(
        default=3600.0, gt=0
    )  # undecided after this long (from the proposal): roll back
    # No rater (API key) may supply more than this share of a test's counted verdicts (of min_samples
    # while fewer are counted): a decision needs at least 1 / max_rater_share people.
    max_rater_share: float = Field(default=0.25, gt=0.0, le=1.0)
    # Guardrails, checked once both versions served `guardrail_min_requests` (in each gateway's
    # window of 500): roll back at once if the candidate's engine fails a larger share of requests
    # than the serving version's by this much, or its median prefill time or time per token is over
    # this multiple of the serving version's (promotion/version_health.py).
    guardrail_min_requests: int = Field(default=50, ge=1)
    max_error_rate_increase: float = Field(default=0.05, ge=0.0)
    max_latency_ratio: float = Field(default=3.0, gt=1.0)
    poll_s: float = Field(default=1.0, gt=0)  # how often the gateway's controller looks


class Settings(_Section):
    """The whole configuration tree."""

    state_dir: Path = Path(".alignloop")
    # The policy registry, when several gateways and the trainer share one (a shared filesystem or
    # volume mounted at the same path everywhere); None: <state_dir>/registry.
    registry_dir: Path | None = None
    # The base policy (v0001): a Hugging Face checkpoint folder or a model id on the hub (fetched once,
    # safetensors only, into <state_dir>/hub); empty builds the tiny model instead.
    base_model: str | None = None
    tiny_model: TinyModelConfig = TinyModelConfig()
    engine: EngineConfig = EngineConfig()
    gateway: GatewayConfig = GatewayConfig()
    feedback: FeedbackConfig = FeedbackConfig()
    train: TrainConfig = TrainConfig()
    promotion: PromotionConfig = PromotionConfig()

    @model_validator(mode="after")
    def _serve_published_adapters(self) -> Settings:
        # A trainer that publishes adapters: every engine holds LoRA from its start, so the first
        # adapter needs no second engine (which on a GPU at the in-place memory share does not fit).
        lora = self.train.lora
        if self.engine.enable_lora is None and lora.enabled and lora.publish == "adapter":
            self.engine = self.engine.model_copy(
                update={"enable_lora": True, "max_lora_rank": max(self.engine.max_lora_rank, lora.r)}
            )
        return self

    @property
    def paths(self) -> StatePaths:
        """The layout of the state directory (core/paths.py)."""
        return StatePaths(self.state_dir, self.registry_dir)


def _deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _parse_scalar(text: str) -> Any:
    # JSON first so lists, numbers and booleans come through; anything else is a string.
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _nest(dotted: list[str], value: Any) -> dict[str, Any]:
    out: dict[str, Any] = value
    for part in reversed(dotted):
        out = {part: out}
    return out


def _from_env(environ: dict[str, str]) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX) or name == FAILPOINT_ENV:
            continue
        path = name[len(ENV_PREFIX) :].lower().split("__")
        merged = _deep_merge(merged, _nest(path, _parse_scalar(raw)))
    return merged


def parse_override(item: str) -> dict[str, Any]:
    """Turn ``section.field=value`` into a nested dict."""
    if "=" not in item:
        raise ValueError(f"override {item!r} must look like section.field=value")
    key, raw = item.split("=", 1)
    return _nest(key.strip().split("."), _parse_scalar(raw))


def load_settings(
    config_file: Path | None = None,
    overrides: list[str] | None = None,
    environ: dict[str, str] | None = None,
) -> Settings:
    """Build Settings from defaults, a TOML file, the environment and CLI overrides."""
    merged: dict[str, Any] = {}
    if config_file is not None:
        with open(config_file, "rb") as f:
            merged = tomllib.load(f)
    merged = _deep_merge(merged, _from_env(dict(os.environ if environ is None else environ)))
    for item in overrides or []:
        merged = _deep_merge(merged, parse_override(item))
    return Settings.model_validate(merged)

"""Build the default base policy: a byte-level BPE tokenizer and a small Llama (or Qwen2- or
Gemma-style) model, trained locally.

No weights can be downloaded on the project's machines, so the default policy is made here from
generated text (inference/corpus.py). The result is an ordinary Hugging Face checkpoint
(safetensors) that vLLM and transformers both load; a real checkpoint directory takes its place
in production.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    AutoModelForCausalLM,
    GemmaConfig,
    GenerationConfig,
    LlamaConfig,
    PretrainedConfig,
    PreTrainedTokenizerFast,
    Qwen2Config,
)

from core.config import TinyModelConfig
from synthetic.corpus import dialogues, pretraining_texts

log = logging.getLogger(__name__)

BOS, EOS, PAD = "<|bos|>", "<|end|>", "<|pad|>"
ROLE_TOKENS = ["<|system|>", "<|user|>", "<|assistant|>"]
# One turn is <|role|>content<|end|>; <|end|> doubles as EOS so generation stops after a reply.
CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>{{ message['content'] }}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def chat_text(prompt: str, response: str) -> str:
    """A single-turn dialogue rendered exactly as CHAT_TEMPLATE renders it."""
    return f"<|user|>{prompt}<|end|><|assistant|>{response}<|end|>"


def build_tokenizer(texts: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer on texts (deterministic for the same texts)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[PAD, BOS, EOS, *ROLE_TOKENS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        chat_template=CHAT_TEMPLATE,
        model_max_length=4096,
    )


def _batches(ids: torch.Tensor, cfg: TinyModelConfig, gen: torch.Generator):
    while True:
        starts = torch.randint(0, ids.numel() - cfg.seq_len - 1, (cfg.batch_size,), generator=gen)
        yield torch.stack([ids[s : s + cfg.seq_len] for s in starts.tolist()])


def model_config(cfg: TinyModelConfig, tokenizer: PreTrainedTokenizerFast) -> PretrainedConfig:
    """The transformers config of the tiny model's family, shaped by cfg."""
    head_dim = cfg.hidden_size // cfg.num_heads
    shape: dict = {
        "vocab_size": len(tokenizer),
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_heads,
        "num_key_value_heads": cfg.num_kv_heads or (1 if cfg.family == "qwen2" else cfg.num_heads),
        "max_position_embeddings": cfg.max_position_embeddings,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
        "torch_dtype": "float32",
    }
    if cfg.family == "qwen2":
        return Qwen2Config(**shape, tie_word_embeddings=True)
    if cfg.family == "gemma":
        return GemmaConfig(
            **shape, head_dim=head_dim, hidden_activation="gelu_pytorch_tanh", tie_word_embeddings=True
        )
    return LlamaConfig(**shape, tie_word_embeddings=False)


def build_tiny_model(out_dir: Path, cfg: TinyModelConfig) -> Path:
    """Generate the corpus, train tokenizer and model, and save both to out_dir."""
    if cfg.hidden_size // cfg.num_heads < 32:
        raise ValueError("head_dim (hidden_size / num_heads) must be >= 32 for vLLM's CPU kernels")
    torch.manual_seed(cfg.seed)
    texts = [chat_text(d.prompt, d.response) for d in dialogues(cfg.corpus_examples, cfg.seed)]
    texts += pretraining_texts(cfg.corpus_examples // 3, cfg.seed)
    tokenizer = build_tokenizer(texts, cfg.vocab_size)

    model = AutoModelForCausalLM.from_config(model_config(cfg, tokenizer))

    # One token stream, documents separated by EOS; random windows of it are the batches.
    stream: list[int] = []
    for text in texts:
        stream.extend(tokenizer(text, add_special_tokens=False)["input_ids"])
        stream.append(tokenizer.eos_token_id)
    ids = torch.tensor(stream)
    gen = torch.Generator().manual_seed(cfg.seed)
    optim = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate, weight_decay=0.01)
    model.train()
    started = time.monotonic()
    batches = _batches(ids, cfg, gen)
    for step in range(1, cfg.pretrain_steps + 1):
        # Cosine decay to 10% gives a noticeably better tiny model than a flat rate.
        lr = cfg.learning_rate * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / cfg.pretrain_steps)))
        for group in optim.param_groups:
            group["lr"] = lr
        batch = next(batches)
        loss = model(input_ids=batch, labels=batch).loss
        optim.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optim.step()
        if step % 50 == 0 or step == cfg.pretrain_steps:
            rate = step / (time.monotonic() - started)
            log.info(
                "init-model: step %d/%d loss %.3f (%.1f steps/s)", step, cfg.pretrain_steps, loss.item(), rate
            )

    model.eval()
    out_dir.mkdir(parents=True, exist_ok=True)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    log.info(
        "init-model: saved %s (%d parameters, vocab %d)", out_dir, model.num_parameters(), len(tokenizer)
    )
    return out_dir

"""The tiny base model: deterministic for a seed, loadable by transformers, answering its corpus."""

import re

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from core.config import TinyModelConfig
from synthetic.tiny_model import build_tiny_model

FAST = TinyModelConfig(pretrain_steps=3, corpus_examples=300)


def test_same_seed_same_model(tmp_path):
    a = load_file(build_tiny_model(tmp_path / "a", FAST) / "model.safetensors")
    b = load_file(build_tiny_model(tmp_path / "b", FAST) / "model.safetensors")
    c = load_file(build_tiny_model(tmp_path / "c", FAST.model_copy(update={"seed": 1})) / "model.safetensors")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)
    assert (tmp_path / "a" / "tokenizer.json").read_bytes() == (
        tmp_path / "b" / "tokenizer.json"
    ).read_bytes()


def test_head_dim_below_32_is_refused(tmp_path):
    with pytest.raises(ValueError, match="head_dim"):
        build_tiny_model(tmp_path / "m", FAST.model_copy(update={"num_heads": 8}))


def test_is_a_hf_checkpoint_with_chat_template(tiny_model_dir):
    assert not list(tiny_model_dir.glob("*.bin"))
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, use_safetensors=True)
    assert model.config.hidden_size // model.config.num_attention_heads >= 32
    text = tok.apply_chat_template(
        [{"role": "user", "content": "Hi"}], add_generation_prompt=True, tokenize=False
    )
    assert text == "<|user|>Hi<|end|><|assistant|>"
    # The model learned its corpus: it answers in the trained form and stops at <|end|>.
    ids = tok(text.replace("Hi", "Say hello to Ada."), add_special_tokens=False, return_tensors="pt")[
        "input_ids"
    ]
    out = model.generate(ids, max_new_tokens=12, do_sample=False)
    assert out[0, -1].item() == tok.eos_token_id
    assert re.fullmatch(r"Hello, \w+!", tok.decode(out[0, ids.shape[1] :], skip_special_tokens=True))

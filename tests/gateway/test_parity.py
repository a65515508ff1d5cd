"""The gateway serves exactly what the weights say: vLLM greedy == transformers greedy."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from tests.conftest import MODEL

PROMPTS = [
    "What is 5 plus 2?",
    "Say hello to Ivy.",
    "Reverse the list: book, lamp, boat.",
    "Is 7 even or odd?",
]


def transformers_greedy(path, prompt_ids: list[int], max_new_tokens: int) -> str:
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, use_safetensors=True).eval()
    with torch.no_grad():
        out = model.generate(torch.tensor([prompt_ids]), max_new_tokens=max_new_tokens, do_sample=False)
    return tok.decode(out[0, len(prompt_ids) :], skip_special_tokens=True)


@pytest.mark.parametrize("question", PROMPTS)
def test_greedy_matches_transformers(gateway, question):
    with gateway.client() as c:
        r = c.post(
            "/v1/chat/completions",
            json={
                "model": MODEL,
                "temperature": 0,
                "max_tokens": 24,
                "messages": [{"role": "user", "content": question}],
            },
        )
    assert r.status_code == 200, r.text
    body = r.json()
    path = gateway.registry.path(body["policy_version"])
    tok = AutoTokenizer.from_pretrained(path)
    prompt = tok.apply_chat_template(
        [{"role": "user", "content": question}], add_generation_prompt=True, tokenize=False
    )
    ids = tok(prompt, add_special_tokens=False)["input_ids"]
    assert body["usage"]["prompt_tokens"] == len(ids)
    assert body["choices"][0]["message"]["content"] == transformers_greedy(path, ids, 24)


def _sse_text(response) -> tuple[dict[int, str], list[str]]:
    texts: dict[int, str] = {}
    raw = [line for line in response.iter_lines() if line.startswith("data: ")]
    for line in raw[:-1]:
        event = json.loads(line[len("data: ") :])
        for choice in event["choices"]:
            texts[choice["index"]] = texts.get(choice["index"], "") + choice["text"]
    return texts, raw


def test_stream_and_non_stream_agree_for_a_seed(gateway):
    request = {
        "model": MODEL,
        "prompt": "<|user|>Describe a bear.<|end|><|assistant|>",
        "max_tokens": 32,
        "temperature": 1.0,
        "seed": 1234,
        "n": 3,
    }
    with gateway.client() as c:
        whole = c.post("/v1/completions", json=request)
        with c.stream("POST", "/v1/completions", json={**request, "stream": True}) as streamed:
            assert streamed.status_code == 200
            assert streamed.headers["content-type"].startswith("text/event-stream")
            texts, raw = _sse_text(streamed)
    assert whole.status_code == 200, whole.text
    assert raw[-1] == "data: [DONE]"
    assert texts == {c["index"]: c["text"] for c in whole.json()["choices"]}

"""The official OpenAI SDK, pointed at the gateway, just works."""

import re

import openai
import pytest

from tests.conftest import MODEL, USER_KEY


@pytest.fixture(scope="module")
def sdk(gateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=USER_KEY, max_retries=0)


def test_completion(sdk):
    r = sdk.completions.create(
        model=MODEL, prompt="<|user|>Count to 4.<|end|><|assistant|>", max_tokens=20, temperature=0
    )
    assert r.choices[0].text == "1 2 3 4."
    assert r.choices[0].finish_reason == "stop"
    assert r.choices[0].model_extra["id"].startswith(f"{r.id}-0.")  # signed: gateway/ownership.py
    assert r.model_extra["policy_version"].startswith("v")
    assert (
        r.usage.completion_tokens > 0
        and r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    )


def test_chat_completion(sdk):
    r = sdk.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "What is 3 plus 4?"}], max_tokens=20, temperature=0
    )
    assert r.object == "chat.completion"
    assert r.choices[0].message.role == "assistant"
    # The test model is trained briefly: it has learned the answer's form, not always the sum.
    assert re.fullmatch(r"\d+ plus \d+ is \d+\.", r.choices[0].message.content)


def test_four_candidates_have_distinct_stable_ids(sdk):
    r = sdk.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Describe a fox."}],
        n=4,
        max_tokens=24,
        temperature=1.0,
        seed=11,
    )
    assert [c.index for c in r.choices] == [0, 1, 2, 3]
    ids = [c.model_extra["id"] for c in r.choices]
    assert len(set(ids)) == 4 and all(i.startswith(r.id) for i in ids)
    assert all(c.message.content for c in r.choices)
    assert r.usage.completion_tokens >= 4


def test_streamed_chat(sdk):
    stream = sdk.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Count to 5."}],
        max_tokens=20,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    parts, usage = [], None
    for chunk in stream:
        if chunk.choices:
            parts.append(chunk.choices[0].delta.content or "")
        else:
            usage = chunk.usage
    assert "".join(parts) == "1 2 3 4 5."
    assert usage is not None and usage.completion_tokens >= 5
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


def test_models_list(sdk):
    models = sdk.models.list()
    assert [m.id for m in models.data] == [MODEL]
    assert sdk.models.retrieve(MODEL).id == MODEL  # GET /v1/models/{id}, as vLLM's server answers
    with pytest.raises(openai.NotFoundError):
        sdk.models.retrieve("no-such-model")


COUNT = "<|user|>Count to 4.<|end|><|assistant|>"


def test_vllm_sampling_extras_keep_their_meaning(sdk, gateway):
    """What clients written for `vllm serve` send in extra_body is accepted and does what vLLM does."""
    greedy = sdk.completions.create(model=MODEL, prompt=COUNT, max_tokens=20, temperature=0)
    assert greedy.choices[0].text == "1 2 3 4."
    # top_k=1 keeps only the likeliest token: sampling at temperature 1 becomes the greedy answer.
    top1 = sdk.completions.create(
        model=MODEL, prompt=COUNT, max_tokens=20, temperature=1.0, seed=5, extra_body={"top_k": 1}
    )
    assert top1.choices[0].text == greedy.choices[0].text
    # A vLLM benchmark client's request: repetition_penalty 1.0 (off), min_p 0, ignore_eos.
    bench = sdk.completions.create(
        model=MODEL,
        prompt=COUNT,
        max_tokens=12,
        temperature=0,
        extra_body={"repetition_penalty": 1.0, "min_p": 0.0, "ignore_eos": True},
    )
    assert bench.usage.completion_tokens == 12 and bench.choices[0].text.startswith("1 2 3 4.")
    # stop_token_ids: the generation stops at the token " 3" (the answer's third).
    with gateway.client() as c:
        three = c.post("/tokenize", json={"prompt": " 3", "add_special_tokens": False}).json()["tokens"]
    assert len(three) == 1
    stopped = sdk.completions.create(
        model=MODEL, prompt=COUNT, max_tokens=20, temperature=0, extra_body={"stop_token_ids": three}
    )
    assert stopped.choices[0].finish_reason == "stop" and stopped.usage.completion_tokens == 3
    assert stopped.choices[0].text.startswith("1 2") and "4" not in stopped.choices[0].text
    # min_tokens: the end-of-answer token cannot come before 12 tokens.
    longer = sdk.completions.create(
        model=MODEL, prompt=COUNT, max_tokens=20, temperature=0, extra_body={"min_tokens": 12}
    )
    assert longer.usage.completion_tokens >= 12 and longer.choices[0].text.startswith("1 2 3 4.")


def test_tokenize_and_detokenize_as_vllm_serves_them(sdk, gateway):
    with gateway.client() as c:
        prompt = c.post("/tokenize", json={"model": MODEL, "prompt": COUNT, "return_token_strs": True}).json()
        chat = c.post("/tokenize", json={"messages": [{"role": "user", "content": "Count to 4."}]}).json()
        back = c.post("/detokenize", json={"model": MODEL, "tokens": prompt["tokens"]}).json()
    served = sdk.completions.create(model=MODEL, prompt=COUNT, max_tokens=1, temperature=0)
    assert prompt["count"] == len(prompt["tokens"]) == served.usage.prompt_tokens
    assert len(prompt["token_strs"]) == prompt["count"] and prompt["max_model_len"] > prompt["count"]
    assert back["prompt"].endswith(COUNT)
    # The chat form is the prompt the chat route gives the model: the same ids as the completions form.
    assert chat["tokens"] == prompt["tokens"][-len(chat["tokens"]) :]

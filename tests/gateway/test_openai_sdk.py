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

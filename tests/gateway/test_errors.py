"""Bad input of every kind gets an OpenAI-style JSON error with the documented 4xx status."""

import pytest

from tests.conftest import ADMIN_KEY, MODEL, SLOW_KEY, USER2_KEY

OK = {"model": MODEL, "prompt": "hello", "max_tokens": 4}


def assert_error(r, status: int, param: str | None = None, code: str | None = None) -> dict:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    if param is not None:
        assert err["param"] == param
    if code is not None:
        assert err["code"] == code
    return err


@pytest.mark.parametrize(
    "change, param",
    [
        ({"n": 0}, "n"),
        ({"n": 100}, "n"),
        ({"max_tokens": -5}, "max_tokens"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": "ten"}, "max_tokens"),
        ({"temperature": "hot"}, "temperature"),
        ({"temperature": 9}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"prompt": 42}, "prompt"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"logprobs": 50}, "logprobs"),
        ({"not_a_parameter": 1}, "not_a_parameter"),
        ({"top_k": -2}, "top_k"),
        ({"min_p": 1.5}, "min_p"),
        ({"repetition_penalty": 0}, "repetition_penalty"),
        ({"min_tokens": 5}, "min_tokens"),  # above max_tokens (4)
        ({"stop_token_ids": [10**9]}, "stop_token_ids"),
        ({"stop_token_ids": [-1]}, "stop_token_ids"),
    ],
)
def test_invalid_parameters_are_400(gateway, change, param):
    with gateway.client() as c:
        err = assert_error(c.post("/v1/completions", json={**OK, **change}), 400)
    assert err["type"] == "invalid_request_error"
    assert err["param"] is not None and err["param"].startswith(param)


def test_unknown_parameter_is_named(gateway):
    with gateway.client() as c:
        err = assert_error(c.post("/v1/completions", json={**OK, "top_kk": 3}), 400, param="top_kk")
    assert "Unknown parameter 'top_kk'" in err["message"]


@pytest.mark.parametrize(
    "path, body, param",
    [
        ("/tokenize", {"prompt": "a", "messages": [{"role": "user", "content": "b"}]}, None),
        ("/tokenize", {}, None),
        ("/tokenize", {"prompt": "a", "model": "other"}, "model"),
        ("/detokenize", {"tokens": [10**9]}, "tokens"),
        ("/detokenize", {"tokens": "abc"}, "tokens"),
    ],
)
def test_bad_tokenizer_requests_are_4xx(gateway, path, body, param):
    with gateway.client() as c:
        r = c.post(path, json=body)
        assert (
            c.post(path, json={"prompt": "a"} if path == "/tokenize" else {"tokens": [1]}).status_code == 200
        )
    assert r.status_code in (400, 404), r.text
    err = r.json()["error"]
    assert param is None or (err["param"] or "").startswith(param)


def test_missing_required_fields(gateway):
    with gateway.client() as c:
        assert_error(c.post("/v1/completions", json={"prompt": "x"}), 400, param="model")
        assert_error(
            c.post("/v1/chat/completions", json={"model": MODEL, "messages": []}), 400, param="messages"
        )
        assert_error(
            c.post(
                "/v1/chat/completions", json={"model": MODEL, "messages": [{"role": "robot", "content": "x"}]}
            ),
            400,
        )


def test_malformed_json(gateway):
    with gateway.client() as c:
        r = c.post(
            "/v1/completions",
            content=b'{"model": "x", "prompt":',
            headers={"content-type": "application/json"},
        )
        assert "JSON" in assert_error(r, 400)["message"]
        assert_error(
            c.post("/v1/completions", content=b"[1, 2]", headers={"content-type": "application/json"}), 400
        )


def test_huge_max_tokens_is_refused_by_key_limit(gateway):
    with gateway.client() as c:
        assert_error(
            c.post("/v1/completions", json={**OK, "max_tokens": 10**9}),
            400,
            "max_tokens",
            "max_tokens_too_large",
        )


def test_context_length_exceeded(gateway):
    with gateway.client() as c:
        # 150 prompt tokens is under the prompt cap (200) but 150 + 200 > max_model_len (256).
        r = c.post("/v1/completions", json={**OK, "prompt": [5] * 150, "max_tokens": 200})
        assert_error(r, 400, "max_tokens", "context_length_exceeded")


def test_oversized_prompt(gateway):
    with gateway.client() as c:
        assert_error(
            c.post("/v1/completions", json={**OK, "prompt": "cat " * 400}), 400, "prompt", "prompt_too_long"
        )
        assert_error(c.post("/v1/completions", json={**OK, "prompt": [99999]}), 400, "prompt")


def test_oversized_body_is_413(gateway):
    with gateway.client() as c:
        assert_error(
            c.post("/v1/completions", json={**OK, "prompt": "x" * 100_000}), 413, code="body_too_large"
        )
        # A body streamed without a Content-Length is cut off all the same.
        chunks = (b"x" * 8192 for _ in range(20))
        assert_error(
            c.post("/v1/completions", content=chunks, headers={"content-type": "application/json"}), 413
        )


def test_per_key_n_limit(gateway):
    with gateway.client(USER2_KEY) as c:
        assert_error(c.post("/v1/completions", json={**OK, "n": 3}), 400, "n", "n_too_large")
        assert c.post("/v1/completions", json={**OK, "n": 2}).status_code == 200


def test_unknown_model_is_404(gateway):
    with gateway.client() as c:
        assert_error(
            c.post("/v1/completions", json={**OK, "model": "gpt-9"}), 404, "model", "model_not_found"
        )


def test_unknown_route_is_404_json(gateway):
    with gateway.client() as c:
        assert_error(c.get("/v1/nothing-here"), 404)
        assert_error(c.get("/v1/completions"), 405)


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong-key"}, {"Authorization": "Basic abc"}, {"Authorization": "Bearer"}],
)
def test_missing_or_wrong_key_is_401(gateway, headers):
    import httpx

    r = httpx.post(f"{gateway.url}/v1/completions", json=OK, headers=headers)
    assert_error(r, 401)
    assert_error(httpx.get(f"{gateway.url}/v1/models", headers=headers), 401)


def test_roles_are_separate(gateway):
    with gateway.client(ADMIN_KEY) as c:
        assert_error(c.post("/v1/completions", json=OK), 403, code="wrong_key_role")
    with gateway.client() as c:
        assert_error(c.get("/admin/versions"), 403, code="admin_required")
        assert_error(c.post("/admin/policy", json={"version": "v0002"}), 403, code="admin_required")


def test_rate_limit_is_429_with_retry_after(gateway):
    with gateway.client(SLOW_KEY) as c:
        statuses = [c.get("/v1/models").status_code for _ in range(3)]
        r = c.get("/v1/models")
    assert statuses[:2] == [200, 200]
    assert_error(r, 429, code="rate_limit_exceeded")
    assert int(r.headers["retry-after"]) >= 1

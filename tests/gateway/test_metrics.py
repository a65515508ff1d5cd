"""/metrics parses as Prometheus text and counts what was served."""

import json
import socket
import time

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import ADMIN_KEY, MODEL, ONE_AT_A_TIME_KEY, USER_KEY
from tests.gateway.helpers import BIG_STREAM, unread_stream


def scrape(gateway) -> dict[tuple[str, tuple], float]:
    text = httpx.get(f"{gateway.url}/metrics").text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples, name: str, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_count_what_was_served(gateway):
    before = scrape(gateway)
    with gateway.client() as c:
        for _ in range(3):
            r = c.post(
                "/v1/completions",
                json={"model": MODEL, "prompt": "The cat", "max_tokens": 5, "temperature": 0},
            )
            assert r.status_code == 200
        assert c.post("/v1/completions", json={"model": MODEL, "prompt": "x", "n": 0}).status_code == 400
    served = r.json()
    after = scrape(gateway)

    route = {"route": "/v1/completions", "method": "POST"}
    assert (
        value(after, "alignloop_http_requests_total", **route, status="200")
        - value(before, "alignloop_http_requests_total", **route, status="200")
        == 3
    )
    assert (
        value(after, "alignloop_http_requests_total", **route, status="400")
        - value(before, "alignloop_http_requests_total", **route, status="400")
        == 1
    )
    gen = value(after, "alignloop_generation_tokens_total") - value(
        before, "alignloop_generation_tokens_total"
    )
    assert gen == 3 * served["usage"]["completion_tokens"]
    version = served["policy_version"]  # answer length by the version that wrote it
    length = {
        k: value(after, f"alignloop_answer_tokens_{k}", version=version)
        - value(before, f"alignloop_answer_tokens_{k}", version=version)
        for k in ("count", "sum")
    }
    assert length == {"count": 3, "sum": gen}
    prompt = value(after, "alignloop_prompt_tokens_total") - value(before, "alignloop_prompt_tokens_total")
    assert prompt == 3 * served["usage"]["prompt_tokens"]
    ttft = value(after, "alignloop_time_to_first_token_seconds_count", route="completions") - value(
        before, "alignloop_time_to_first_token_seconds_count", route="completions"
    )
    assert ttft == 3
    assert value(after, "alignloop_http_request_duration_seconds_count", route="/v1/completions") >= 4
    assert value(after, "alignloop_engine_ready") == 1
    assert value(after, "alignloop_policy_version_info", version=served["policy_version"]) == 1
    # The scrape itself is in flight while it is rendered; nothing else is.
    assert value(after, "alignloop_http_requests_in_flight") == 1


def test_client_hangup_cancels_generation(gateway):
    # The client reads the head of a ~4 s stream and hangs up. Had the whole answer been generated
    # and handed to the kernel first (a machine stalled for seconds), nothing was cancelled: try again.
    body = {"model": MODEL, "prompt": "The", **BIG_STREAM}
    asked = BIG_STREAM["n"] * BIG_STREAM["max_tokens"]
    for _ in range(3):
        before = scrape(gateway)
        unread_stream(gateway.url, USER_KEY, body).close()  # the head, then hang up mid-stream
        deadline = time.monotonic() + 120  # a loaded machine can take tens of seconds to get there
        while time.monotonic() < deadline:
            after = scrape(gateway)
            cancelled = value(after, "alignloop_requests_cancelled_total", route="completions") - value(
                before, "alignloop_requests_cancelled_total", route="completions"
            )
            generated = value(after, "alignloop_generation_tokens_total") - value(
                before, "alignloop_generation_tokens_total"
            )
            if cancelled or generated >= asked:
                break
            time.sleep(0.2)
        if generated < asked:
            break
    assert cancelled == 1
    assert generated < asked  # far fewer tokens went out than the request asked for


def test_a_hang_up_during_a_non_streamed_request_aborts_its_generation(gateway):
    # A non-streamed request gets nothing from the engine until its candidates are finished, so
    # the gateway must notice the hang-up while it waits, and abort the engine's work. Had the
    # answer been finished before the hang-up was noticed (~2 s of work), nothing was cancelled:
    # try again.
    body = json.dumps({"model": MODEL, "prompt": "The", **{**BIG_STREAM, "stream": False}})
    host, port = gateway.url.removeprefix("http://").split(":")
    with gateway.client(ADMIN_KEY) as admin:

        def engine_requests() -> int:
            return sum(e["in_flight"] for e in admin.get("/admin/versions").json()["engines"])

        for _ in range(3):
            before = scrape(gateway)
            with socket.create_connection((host, int(port))) as s:
                s.sendall(
                    f"POST /v1/completions HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {USER_KEY}\r\n"
                    f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n{body}".encode()
                )
                deadline = time.monotonic() + 10
                while not engine_requests() and time.monotonic() < deadline:
                    time.sleep(0.01)  # hang up once the engine works on it (or it was too quick to see)
            deadline = time.monotonic() + 120  # a loaded machine can take tens of seconds to get there
            while engine_requests():
                assert time.monotonic() < deadline, "the engine kept working on a request nobody waits for"
                time.sleep(0.1)
            # The engine lets go of a request a moment before the gateway counts how it ended (its
            # cancellation, or its 200): wait for the count, not just for the engine.
            while True:
                after = scrape(gateway)
                cancelled = value(after, "alignloop_requests_cancelled_total", route="completions") - value(
                    before, "alignloop_requests_cancelled_total", route="completions"
                )
                answered = value(
                    after,
                    "alignloop_http_requests_total",
                    route="/v1/completions",
                    method="POST",
                    status="200",
                ) - value(
                    before,
                    "alignloop_http_requests_total",
                    route="/v1/completions",
                    method="POST",
                    status="200",
                )
                if cancelled or answered:
                    break
                assert time.monotonic() < deadline, (
                    "the request was neither answered nor counted as cancelled"
                )
                time.sleep(0.1)
            if not answered:
                break
    assert cancelled == 1
    assert not answered


def test_a_non_streamed_request_reports_its_first_tokens_time_not_its_last(gateway):
    # The engine hands a non-streamed request only its finished candidates; the time to the first
    # token is the engine's, not the time the whole answer took.
    before = scrape(gateway)
    with gateway.client() as c:
        started = time.monotonic()
        r = c.post(
            "/v1/completions",
            json={"model": MODEL, "prompt": "The", "max_tokens": 240, "n": 4, "ignore_eos": True},
        )
        took = time.monotonic() - started
    assert r.status_code == 200, r.text
    after = scrape(gateway)
    name = "alignloop_time_to_first_token_seconds"
    assert (
        value(after, f"{name}_count", route="completions")
        - value(before, f"{name}_count", route="completions")
        == 1
    )
    ttft = value(after, f"{name}_sum", route="completions") - value(
        before, f"{name}_sum", route="completions"
    )
    # 960 tokens come after the first one: the first came well inside the request's time.
    assert 0 < ttft < took / 2, (ttft, took)


def _holding_the_only_slot(gateway, host: str, port: int, body: str) -> socket.socket:
    """A raw connection whose streamed request holds ONE_AT_A_TIME_KEY's only slot: a probe with
    that key is refused (429) only while it does. The slot is free before the request is sent (an
    earlier test's aborted request may still hold it for a moment: the probe would then be refused
    for that one while this request was refused too). A probe admitted first refuses the request
    instead (its 429 is on the connection): then it is sent again."""
    deadline = time.monotonic() + 120
    with gateway.client(ONE_AT_A_TIME_KEY) as probe:
        while True:
            while (
                probe.post(
                    "/v1/completions", json={"model": MODEL, "prompt": "hi", "max_tokens": 1}
                ).status_code
                != 200
            ):
                assert time.monotonic() < deadline, "the key's slot never came free"
                time.sleep(0.2)
            s = socket.create_connection((host, port))
            s.sendall(
                f"POST /v1/completions HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {ONE_AT_A_TIME_KEY}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n{body}".encode()
            )
            while time.monotonic() < deadline:
                r = probe.post("/v1/completions", json={"model": MODEL, "prompt": "hi", "max_tokens": 1})
                if r.status_code == 429 and r.json()["error"]["code"] == "concurrency_limit":
                    return s
                s.settimeout(0.2)
                try:
                    head = s.recv(64, socket.MSG_PEEK)
                    if head.startswith(b"HTTP/1.1 429"):
                        break  # refused because the probe held the slot: send it again
                    assert head.startswith(b"HTTP/1.1 200"), head  # any other answer: the test is wrong
                except TimeoutError:
                    pass
            s.close()
            assert time.monotonic() < deadline, "the request never held its key's slot"


def test_a_hang_up_as_the_stream_starts_gives_the_reservation_back(gateway):
    # The client sends a streamed request and closes once the gateway has admitted it, around when
    # its response starts (if before, the response's event generator never runs). The key may run
    # one generation at a time; a reservation left behind would refuse it (429) for ever. Closing
    # before it is admitted would race the gateway's read of the body: a request whose body was
    # never read is refused before it reserves anything, and would test nothing.
    # Seconds of engine work: a stream the engine finishes before the hang-up is heard (loopback
    # buffers all of it for a client that does not read) ends finished, with nothing to cancel.
    body = json.dumps({"model": MODEL, "prompt": "The", **BIG_STREAM})
    host, port = gateway.url.removeprefix("http://").split(":")
    before = scrape(gateway)
    _holding_the_only_slot(gateway, host, int(port), body).close()
    deadline = time.monotonic() + 120  # a loaded machine can take tens of seconds to get there
    with gateway.client(ONE_AT_A_TIME_KEY) as c:
        while (
            r := c.post("/v1/completions", json={"model": MODEL, "prompt": "hi", "max_tokens": 2})
        ).status_code == 429:
            assert time.monotonic() < deadline, r.text
            time.sleep(0.5)
    assert r.status_code == 200, r.text
    after = scrape(gateway)
    assert (
        value(after, "alignloop_requests_cancelled_total", route="completions")
        == value(before, "alignloop_requests_cancelled_total", route="completions") + 1
    )
    assert (
        value(after, "alignloop_generation_tokens_total") - value(before, "alignloop_generation_tokens_total")
        < BIG_STREAM["n"] * BIG_STREAM["max_tokens"]
    )


def test_the_gateways_own_time_outside_the_engine_is_measured(gateway):
    before = scrape(gateway)
    with gateway.client() as c:
        started = time.monotonic()
        r = c.post(
            "/v1/chat/completions",
            json={
                "model": MODEL,
                "max_tokens": 8,
                "messages": [{"role": "user", "content": "Describe a fox."}],
            },
        )
        total_ms = (time.monotonic() - started) * 1000
    assert r.status_code == 200
    overhead_ms = float(r.headers["x-alignloop-overhead-ms"])
    # The engine's generation is not counted: what is left is part of the request's time.
    assert 0 <= overhead_ms < total_ms
    after = scrape(gateway)
    label = {"route": "/v1/chat/completions"}
    assert (
        value(after, "alignloop_gateway_overhead_seconds_count", **label)
        - value(before, "alignloop_gateway_overhead_seconds_count", **label)
        == 1
    )


def test_a_streams_own_time_is_measured_to_its_end(gateway):
    # While a stream is sent, the framework listens for the client's hang-up with receive(); that
    # wait once counted as "waiting for the body" and zeroed some streams' measured overhead.
    label = {"route": "/v1/completions"}
    streams = 8
    before = scrape(gateway)
    with gateway.client() as c:
        started = time.monotonic()
        for _ in range(streams):
            with c.stream(
                "POST",
                "/v1/completions",
                json={"model": MODEL, "prompt": "The", "max_tokens": 16, "ignore_eos": True, "stream": True},
            ) as r:
                assert r.status_code == 200
                assert r.read().endswith(b"data: [DONE]\n\n")
        total_s = time.monotonic() - started
    after = scrape(gateway)

    def added(name: str, **more) -> float:
        return value(after, name, **label, **more) - value(before, name, **label, **more)

    assert added("alignloop_gateway_overhead_seconds_count") == streams
    assert 0 < added("alignloop_gateway_overhead_seconds_sum") < total_s
    # Rendering a stream's pieces alone takes longer than 0.1 ms: none was measured as ~nothing.
    assert added("alignloop_gateway_overhead_seconds_bucket", le="0.0001") == 0


def test_the_engines_objects_are_kept_out_of_the_collectors_passes(gateway):
    # Unfrozen, every full pass walks torch's, vLLM's and the tokenizer's objects: 250-470 ms
    # stalls of every request in flight (gateway/heap.py). The collection made before freezing is
    # itself a timed full pass.
    samples = scrape(gateway)
    assert value(samples, "alignloop_gateway_heap_frozen_objects") > 50_000
    assert value(samples, "alignloop_gateway_gc_pause_seconds_count", generation="2") >= 1


def test_a_client_slow_to_send_its_body_does_not_count_as_the_gateways_time(gateway):
    # The head arrives, then the body 2 s later (a busy client): those 2 s are the client's.
    body = json.dumps({"model": MODEL, "prompt": "The", "max_tokens": 2})
    host, port = gateway.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=60) as s:
        s.sendall(
            f"POST /v1/completions HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {USER_KEY}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        )
        time.sleep(2)
        s.sendall(body.encode())
        head = b""
        while b"\r\n\r\n" not in head:
            head += s.recv(4096)
    lines = head.split(b"\r\n\r\n")[0].decode().split("\r\n")
    assert lines[0].startswith("HTTP/1.1 200"), lines
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    assert float(headers["x-alignloop-overhead-ms"]) < 1000, headers


def test_engine_metrics_are_vllms_own_labelled_by_version(gateway):
    """Each engine's vLLM statistics reach /metrics under vLLM's names, with the version it serves."""
    before = scrape(gateway)
    with gateway.client() as c:
        r = c.post(
            "/v1/completions",
            json={"model": MODEL, "prompt": "The cat", "max_tokens": 6, "temperature": 0, "ignore_eos": True},
        )
    assert r.status_code == 200
    body = r.json()
    after = scrape(gateway)
    engine = {"version": body["policy_version"], "role": "serving"}

    def grew(name: str, **labels) -> float:
        return value(after, name, **engine, **labels) - value(before, name, **engine, **labels)

    # The gateway's label filler may have used the engine meanwhile: at least this request's share.
    assert grew("vllm:generation_tokens_total") >= 6
    assert grew("vllm:prompt_tokens_total") >= body["usage"]["prompt_tokens"]
    assert grew("vllm:request_success_total", finished_reason="length") >= 1
    assert grew("vllm:time_to_first_token_seconds_count") >= 1
    assert grew("vllm:inter_token_latency_seconds_count") >= 5
    assert ("vllm:num_requests_running", tuple(sorted(engine.items()))) in after
    assert 0.0 <= value(after, "vllm:kv_cache_usage_perc", **engine) <= 1.0

"""Clients that misbehave on purpose, and what the gateway's tests ask of a running gateway."""

import json
import socket
import time

import httpx
import psutil

from tests.conftest import ADMIN_KEY, MODEL

# 9 x 240 tokens with their top-5 log-probabilities: ~1.3 MB of events, ~4 s of the tiny engine's work.
BIG_STREAM = {"max_tokens": 240, "n": 9, "logprobs": 5, "ignore_eos": True, "stream": True}


def unread_stream(url: str, key: str, body: dict) -> socket.socket:
    """A streaming request whose client reads the response head (the request was admitted and has
    started) and then nothing more. The kernel still buffers a few MB of the answer on loopback, so
    a stream that ends in time still ends: a test must allow for that."""
    host, port = url.removeprefix("http://").split(":")
    payload = json.dumps(body).encode()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(60)
    sock.connect((host, int(port)))
    sock.sendall(
        f"POST /v1/completions HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {key}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n".encode()
        + payload
    )
    head = b""
    while not head.endswith(b"\r\n\r\n"):
        head += sock.recv(1)
    assert head.startswith(b"HTTP/1.1 200"), head
    return sock


def decided(gw, version: str, timeout_s: float = 900) -> dict:
    """Wait until a proposed version is settled: its decision recorded and its proposal withdrawn (the
    controller writes the one, then the other)."""
    deadline = time.monotonic() + timeout_s
    while (decision := gw.registry.decision(version)) is None or gw.registry.candidate() == version:
        assert time.monotonic() < deadline, httpx.get(
            f"{gw.url}/admin/promotion", headers={"Authorization": f"Bearer {ADMIN_KEY}"}
        ).json()
        time.sleep(1)
    return decision


def canary_running(gw, version: str, timeout_s: float = 300) -> None:
    """Wait until a gateway runs a canary of `version`."""
    deadline = time.monotonic() + timeout_s
    with gw.client(ADMIN_KEY) as admin:
        while (state := admin.get("/admin/promotion").json())["candidate"] != version:
            assert time.monotonic() < deadline, state
            time.sleep(0.5)


def engine_processes(gw) -> set[int]:
    """The gateway's child processes (its vLLM engines run in processes of their own)."""
    return {p.pid for p in psutil.Process(gw.process.pid).children(recursive=True)}


def greedy(gw, prompt: str, max_tokens: int = 16) -> tuple[str, str]:
    """(the version that served it, the text) of a greedy completion of `prompt`."""
    with gw.client() as c:
        r = c.post(
            "/v1/completions",
            json={"model": MODEL, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0},
        )
    assert r.status_code == 200, r.text
    return r.headers["x-policy-version"], r.json()["choices"][0]["text"]

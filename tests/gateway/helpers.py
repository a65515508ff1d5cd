"""Clients that misbehave on purpose, for the gateway's tests."""

import json
import socket

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
    sock.sendall(f"POST /v1/completions HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {key}\r\n"
                 f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n".encode() + payload)
    head = b""
    while not head.endswith(b"\r\n\r\n"):
        head += sock.recv(1)
    assert head.startswith(b"HTTP/1.1 200"), head
    return sock

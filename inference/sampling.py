"""What goes into the engine and what comes out, in the engine's own terms (not vLLM's), so that
callers (the gateway) never import vLLM."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Sampling:
    """How to sample the candidates of one request."""

    n: int = 1
    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logprobs: int | None = None  # top alternatives to return per token (None: no log-probabilities)
    ignore_eos: bool = False  # generate exactly max_tokens
    # One chunk per candidate, when it is finished: for callers that show nothing before the end
    # (non-streaming requests), so that no per-token output crosses the event loop.
    final_only: bool = False

    def describe(self) -> dict:
        """The settings a served-completion event records."""
        return {
            "n": self.n,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "max_tokens": self.max_tokens,
            "seed": self.seed,
            "stop": list(self.stop) or None,
        }


@dataclass
class Chunk:
    """New output of one candidate (choice) of a request."""

    index: int
    text: str
    token_ids: list[int]
    logprobs: list[dict] | None  # per token: {token id: (logprob, decoded text)}
    finish_reason: str | None
    version: str
    first_token_at: float | None = None  # wall-clock time the engine made the request's first token, if known
    # The engine's own timings, on the chunks of a request's last output (None elsewhere or unknown):
    # scheduled to first token, and the time per decoding step after it.
    prefill_s: float | None = None
    step_s: float | None = None

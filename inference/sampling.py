"""What goes into the engine and what comes out, in the engine's own terms (not vLLM's), so that
callers (the gateway) never import vLLM."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


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
    # vLLM's own (its SamplingParams' meaning): off at these defaults.
    top_k: int = 0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    min_tokens: int = 0
    stop_token_ids: tuple[int, ...] = ()
    include_stop_str_in_output: bool = False
    skip_special_tokens: bool = True
    spaces_between_special_tokens: bool = True

    def describe(self) -> dict[str, Any]:
        """The settings a served-completion event records (vLLM's extras only where they are set)."""
        extras = {
            "top_k": self.top_k if self.top_k > 0 else None,
            "min_p": self.min_p or None,
            "repetition_penalty": self.repetition_penalty if self.repetition_penalty != 1.0 else None,
            "min_tokens": self.min_tokens or None,
            "stop_token_ids": list(self.stop_token_ids) or None,
        }
        return {
            "n": self.n,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "max_tokens": self.max_tokens,
            "seed": self.seed,
            "stop": list(self.stop) or None,
        } | {k: v for k, v in extras.items() if v is not None}


@dataclass
class Chunk:
    """New output of one candidate (choice) of a request."""

    index: int
    text: str
    token_ids: list[int]
    logprobs: list[dict[int, tuple[float, str]]] | None  # per token: {token id: (logprob, decoded text)}
    finish_reason: str | None
    version: str
    first_token_at: float | None = None  # wall-clock time the engine made the request's first token, if known
    # The engine's own timings, on the chunks of a request's last output (None elsewhere or unknown):
    # scheduled to first token, and the time per decoding step after it.
    prefill_s: float | None = None
    step_s: float | None = None

"""One validated completion request on its way through the gateway: what the engine needs, what
the response and the recorded event need, and which versions wrote its candidates."""

from __future__ import annotations

from dataclasses import dataclass, field

from inference.sampling import Sampling

MIXED = "mixed"  # the policy_version of a response whose candidates come from two versions (blind)


@dataclass
class Job:
    """One validated request, ready for the engine."""

    route: str
    response_id: str
    prompt_ids: list[int]
    sampling: Sampling
    stream: bool
    include_usage: bool
    started: float
    caller: str
    served: dict  # what the completion event records of the request: prompt or messages, prompt_text
    label_sampling: bool = False  # the caller lets its prompts be sampled into the labelling queue
    sticky_key: str = ""  # who the request is for (key, and the request's `user` if given): canary routing
    compare: bool = False  # the caller asked for candidates of both versions while a canary runs
    choice_ids: list[str] = field(default_factory=list)  # signed, once the serving version is known
    versions: list[str] = field(default_factory=list)  # the version of each candidate
    version: str = ""  # the response's policy_version: the one version, or "mixed"
    # The engine's timings of this request (inference Chunk.prefill_s / step_s), for the version's health.
    prefill_s: float | None = None
    step_s: float | None = None

    def saw(self, chunk) -> None:
        """Note the engine's timings a chunk carries (the last output's chunks do)."""
        if chunk.prefill_s is not None or chunk.step_s is not None:
            self.prefill_s, self.step_s = chunk.prefill_s, chunk.step_s

    def usage(self, generated: int) -> dict:
        """The usage block for `generated` completion tokens."""
        return {
            "prompt_tokens": len(self.prompt_ids),
            "completion_tokens": generated,
            "total_tokens": len(self.prompt_ids) + generated,
        }

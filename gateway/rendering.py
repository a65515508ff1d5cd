"""Engine output as OpenAI responses: one renderer per route kind (completions, chat), each with a
whole-response form and a streamed-chunk form, and one accumulator of what the candidates said."""

from __future__ import annotations

from dataclasses import dataclass, field

from gateway import protocol as p
from inference.sampling import Chunk


@dataclass
class Candidate:
    """Everything one candidate (choice) has produced so far."""

    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[dict] = field(default_factory=list)
    finish_reason: str | None = None
    version: str | None = None  # the policy version that wrote it


class Accumulator:
    """The candidates of one request, built from the engine's chunks."""

    def __init__(self, n: int):
        self.candidates = [Candidate() for _ in range(n)]

    def add(self, chunk: Chunk) -> Candidate:
        """Append a chunk to its candidate; returns the candidate."""
        c = self.candidates[chunk.index]
        c.text += chunk.text
        c.token_ids += chunk.token_ids
        c.logprobs += chunk.logprobs or []
        c.finish_reason = chunk.finish_reason or c.finish_reason
        c.version = chunk.version
        return c

    @property
    def generated(self) -> int:
        """Tokens generated over all candidates."""
        return sum(len(c.token_ids) for c in self.candidates)


class CompletionRenderer:
    """/v1/completions: text choices, OpenAI's legacy logprobs."""

    object = "text_completion"
    chunk_object = "text_completion"
    response_model = p.CompletionResponse

    def __init__(self, logprobs: int | None):
        self.logprobs = logprobs

    def _logprobs(
        self, token_ids: list[int], steps: list[dict], text_offset: int
    ) -> p.CompletionLogprobs | None:
        if self.logprobs is None:
            return None
        out = p.CompletionLogprobs()
        for tid, step in zip(token_ids, steps):
            logprob, text = step[tid]
            out.tokens.append(text)
            out.token_logprobs.append(logprob)
            out.top_logprobs.append({t: lp for lp, t in sorted(step.values(), reverse=True)})
            out.text_offset.append(text_offset)
            text_offset += len(text)
        return out

    def choice(self, choice_id: str, index: int, c: Candidate) -> dict:
        """A finished candidate in the whole response."""
        return p.CompletionChoice(
            index=index,
            id=choice_id,
            text=c.text,
            logprobs=self._logprobs(c.token_ids, c.logprobs, 0),
            finish_reason=c.finish_reason,
        ).model_dump()

    def delta(self, choice_id: str, chunk: Chunk, offset: int, first: bool) -> dict:
        """One streamed piece of a candidate; offset is how much text it had before."""
        return p.CompletionChoice(
            index=chunk.index,
            id=choice_id,
            text=chunk.text,
            logprobs=self._logprobs(chunk.token_ids, chunk.logprobs or [], offset),
            finish_reason=chunk.finish_reason,
        ).model_dump(exclude_none=True)


class ChatRenderer:
    """/v1/chat/completions: assistant messages, per-token logprobs with top alternatives."""

    object = "chat.completion"
    chunk_object = "chat.completion.chunk"
    response_model = p.ChatCompletionResponse

    def __init__(self, logprobs: bool, top: int):
        self.logprobs, self.top = logprobs, top

    def _logprobs(self, token_ids: list[int], steps: list[dict]) -> p.ChatLogprobs | None:
        if not self.logprobs:
            return None

        def entry(text: str, logprob: float) -> dict:
            return {"token": text, "logprob": logprob, "bytes": list(text.encode())}

        content = []
        for tid, step in zip(token_ids, steps):
            logprob, text = step[tid]
            ranked = sorted(step.values(), reverse=True)[: self.top]
            content.append(
                p.TokenLogprob(
                    **entry(text, logprob), top_logprobs=[p.TopLogprob(**entry(t, lp)) for lp, t in ranked]
                )
            )
        return p.ChatLogprobs(content=content)

    def choice(self, choice_id: str, index: int, c: Candidate) -> dict:
        """A finished candidate in the whole response."""
        return p.ChatChoice(
            index=index,
            id=choice_id,
            message=p.ChatResponseMessage(content=c.text),
            logprobs=self._logprobs(c.token_ids, c.logprobs),
            finish_reason=c.finish_reason,
        ).model_dump()

    def delta(self, choice_id: str, chunk: Chunk, offset: int, first: bool) -> dict:
        """One streamed piece of a candidate; the first piece carries the role."""
        delta = p.ChatDelta(role="assistant" if first else None, content=chunk.text)
        return p.ChatChunkChoice(
            index=chunk.index,
            id=choice_id,
            delta=delta,
            logprobs=self._logprobs(chunk.token_ids, chunk.logprobs or []),
            finish_reason=chunk.finish_reason,
        ).model_dump(exclude_none=True)


Renderer = CompletionRenderer | ChatRenderer

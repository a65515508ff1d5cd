"""Turning an OpenAI request into engine work and the engine's output into an OpenAI response.

Completions and chat completions share one path: both become (prompt token ids, sampling
parameters); only the rendering of the prompt and the shape of the response differ.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from fastapi import Request
from fastapi.responses import JSONResponse, StreamingResponse

from alignloop.config import GatewayConfig
from gateway import protocol as p
from gateway.auth import Caller
from gateway.errors import APIError, error_body
from gateway.metrics import GatewayMetrics
from feedback.events import CompletionServed, ServedChoice
from feedback.recorder import FeedbackRecorder
from inference.engine import PolicyEngine
from inference.replica import Chunk


@dataclass
class _Choice:
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[dict] = field(default_factory=list)
    finish_reason: str | None = None


@dataclass
class _Job:
    """One validated request, ready for the engine."""

    route: str
    response_id: str
    prompt_ids: list[int]
    params: object  # vllm.SamplingParams
    n: int
    stream: bool
    include_usage: bool
    started: float
    caller: str
    served: dict  # what the completion event records of the request: prompt or messages, prompt_text


def _completion_logprobs(token_ids: list[int], steps: list[dict], text_offset: int) -> p.CompletionLogprobs:
    out = p.CompletionLogprobs()
    for tid, step in zip(token_ids, steps):
        logprob, text = step[tid]
        out.tokens.append(text)
        out.token_logprobs.append(logprob)
        out.top_logprobs.append({t: lp for lp, t in sorted(step.values(), reverse=True)})
        out.text_offset.append(text_offset)
        text_offset += len(text)
    return out


def _chat_logprobs(token_ids: list[int], steps: list[dict], top: int) -> p.ChatLogprobs:
    def entry(text: str, logprob: float) -> dict:
        return {"token": text, "logprob": logprob, "bytes": list(text.encode())}

    content = []
    for tid, step in zip(token_ids, steps):
        logprob, text = step[tid]
        ranked = sorted(step.values(), reverse=True)[:top]
        content.append(p.TokenLogprob(**entry(text, logprob), top_logprobs=[p.TopLogprob(**entry(t, lp)) for lp, t in ranked]))
    return p.ChatLogprobs(content=content)


class _ClosingStreamingResponse(StreamingResponse):
    """Closes its event generator however the response ends. When a client hangs up, Starlette
    cancels the send; a generator suspended at a `yield` would otherwise keep its engine request
    running until the garbage collector finalises it."""

    async def __call__(self, scope, receive, send):
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self.body_iterator.aclose()


def _sse(payload: dict | str) -> str:
    return f"data: {payload if isinstance(payload, str) else json.dumps(payload)}\n\n"


class Serving:
    """Validates requests against the caller's limits and runs them on the engine."""

    def __init__(self, engine: PolicyEngine, config: GatewayConfig, metrics: GatewayMetrics,
                 recorder: FeedbackRecorder | None = None):
        self.engine, self.config, self.metrics, self.recorder = engine, config, metrics, recorder

    # ---- validation -------------------------------------------------------------------------

    def _check_ready_and_model(self, model: str) -> None:
        if not self.engine.ready:
            raise APIError(503, "The engine is still warming up; retry shortly.", code="not_ready",
                           headers={"Retry-After": "5"})
        if model != self.config.served_model_name:
            raise APIError(404, f"The model '{model}' does not exist; this gateway serves "
                                f"'{self.config.served_model_name}'.", param="model", code="model_not_found")

    def _job(self, route: str, prefix: str, req, caller: Caller, prompt_ids: list[int],
             max_tokens: int | None, logprobs: int | None, served: dict) -> _Job:
        from vllm import SamplingParams

        limits = caller.limits
        if req.n > limits.max_n:
            raise APIError(400, f"n={req.n} exceeds this key's limit of {limits.max_n}.", param="n", code="n_too_large")
        if len(prompt_ids) > self.config.max_prompt_tokens:
            raise APIError(400, f"The prompt has {len(prompt_ids)} tokens; the limit is "
                                f"{self.config.max_prompt_tokens}.", param="prompt", code="prompt_too_long")
        room = self.engine.max_model_len - len(prompt_ids)
        if max_tokens is None:
            max_tokens = min(limits.max_tokens, room) if route == "chat" else self.config.default_max_tokens
        if max_tokens > limits.max_tokens:
            raise APIError(400, f"max_tokens={max_tokens} exceeds this key's limit of {limits.max_tokens}.",
                           param="max_tokens", code="max_tokens_too_large")
        if max_tokens > room:
            raise APIError(400, f"This model's context is {self.engine.max_model_len} tokens; the prompt "
                                f"({len(prompt_ids)}) plus max_tokens ({max_tokens}) exceeds it.",
                           param="max_tokens", code="context_length_exceeded")
        params = SamplingParams(
            n=req.n, temperature=req.temperature, top_p=req.top_p, max_tokens=max_tokens,
            stop=req.stop, seed=req.seed, presence_penalty=req.presence_penalty,
            frequency_penalty=req.frequency_penalty, logprobs=logprobs, ignore_eos=req.ignore_eos,
        )
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        return _Job(route, f"{prefix}-{uuid.uuid4().hex}", prompt_ids, params, req.n, req.stream,
                    include_usage, time.monotonic(), caller.name, served)

    def _tokenize(self, text: str, *, special: bool) -> list[int]:
        return self.engine.tokenizer(text, add_special_tokens=special)["input_ids"]

    # ---- entry points -----------------------------------------------------------------------

    async def completion(self, req: p.CompletionRequest, caller: Caller, request: Request):
        """POST /v1/completions."""
        self._check_ready_and_model(req.model)
        if isinstance(req.prompt, str):
            prompt_ids = self._tokenize(req.prompt, special=True)
        else:
            vocab = len(self.engine.tokenizer)
            if not req.prompt or any(t < 0 or t >= vocab for t in req.prompt):
                raise APIError(400, f"Token-id prompts must be non-empty ids in [0, {vocab}).", param="prompt")
            prompt_ids = list(req.prompt)
        if not prompt_ids:
            raise APIError(400, "The prompt is empty.", param="prompt", code="empty_prompt")
        prompt_text = req.prompt if isinstance(req.prompt, str) else self.engine.tokenizer.decode(prompt_ids)
        job = self._job("completions", "cmpl", req, caller, prompt_ids, req.max_tokens, req.logprobs,
                        {"prompt": prompt_text, "prompt_text": prompt_text})

        def render(rid: str, idx: int, text: str, ch: _Choice | Chunk, offset: int, final: bool, first: bool = False) -> dict:
            logprobs = None
            if req.logprobs is not None:
                logprobs = _completion_logprobs(ch.token_ids, ch.logprobs or [], offset)
            return p.CompletionChoice(index=idx, id=f"{rid}-{idx}", text=text, logprobs=logprobs,
                                      finish_reason=ch.finish_reason).model_dump(exclude_none=not final)

        return await self._run(job, request, "text_completion", req.model, render, p.CompletionResponse)

    async def chat(self, req: p.ChatCompletionRequest, caller: Caller, request: Request):
        """POST /v1/chat/completions."""
        self._check_ready_and_model(req.model)
        tok = self.engine.tokenizer
        if not tok.chat_template:
            raise APIError(400, "This model has no chat template; use /v1/completions.", code="no_chat_template")
        messages = [{"role": m.role, "content": m.content} for m in req.messages]
        text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        prompt_ids = self._tokenize(text, special=False)  # the template already placed any BOS
        max_tokens = req.max_completion_tokens or req.max_tokens
        top = req.top_logprobs or 0
        job = self._job("chat", "chatcmpl", req, caller, prompt_ids, max_tokens, top if req.logprobs else None,
                        {"messages": messages, "prompt_text": text})

        def render(rid: str, idx: int, text: str, ch: _Choice | Chunk, offset: int, final: bool, first: bool = False) -> dict:
            logprobs = _chat_logprobs(ch.token_ids, ch.logprobs or [], top) if req.logprobs else None
            if final:
                return p.ChatChoice(index=idx, id=f"{rid}-{idx}", message=p.ChatResponseMessage(content=text),
                                    logprobs=logprobs, finish_reason=ch.finish_reason).model_dump()
            delta = p.ChatDelta(role="assistant" if first else None, content=text)
            return p.ChatChunkChoice(index=idx, id=f"{rid}-{idx}", delta=delta, logprobs=logprobs,
                                     finish_reason=ch.finish_reason).model_dump(exclude_none=True)

        return await self._run(job, request, "chat.completion", req.model, render, p.ChatCompletionResponse)

    # ---- running ----------------------------------------------------------------------------

    def _usage(self, job: _Job, generated: int) -> dict:
        return {"prompt_tokens": len(job.prompt_ids), "completion_tokens": generated,
                "total_tokens": len(job.prompt_ids) + generated}

    def _count(self, job: _Job, generated: int) -> None:
        self.metrics.prompt_tokens.inc(len(job.prompt_ids))
        self.metrics.generation_tokens.inc(generated)

    def _record(self, job: _Job, version: str, choices: list[_Choice]) -> None:
        """Hand the served completion to the feedback recorder (never waits)."""
        if self.recorder is None:
            return
        p_ = job.params
        self.recorder.record_completion(CompletionServed(
            request_id=job.response_id, route=job.route, prompt_tokens=len(job.prompt_ids),
            choices=[ServedChoice(choice_id=f"{job.response_id}-{i}", text=c.text, completion_tokens=len(c.token_ids),
                                  finish_reason=c.finish_reason) for i, c in enumerate(choices)],
            sampling={"n": p_.n, "temperature": p_.temperature, "top_p": p_.top_p, "max_tokens": p_.max_tokens,
                      "seed": p_.seed, "stop": p_.stop},
            policy_version=version, caller=job.caller, **job.served))

    async def _run(self, job: _Job, request: Request, obj: str, model: str, render: Callable, response_model):
        gen = self.engine.generate(job.prompt_ids, job.params, job.response_id)
        try:
            first = await anext(gen)
        except StopAsyncIteration:
            first = None
        self.metrics.ttft.labels(job.route).observe(time.monotonic() - job.started)
        version = first.version if first else self.engine.version
        self.metrics.served_by.labels(version).inc()
        headers = {"X-Policy-Version": version, "X-Request-Id": job.response_id}
        created = int(time.time())
        if job.stream:
            events = self._stream(job, gen, first, obj, model, created, version, render)
            return _ClosingStreamingResponse(events, media_type="text/event-stream", headers=headers)
        choices = await self._collect(gen, first, request, job)
        generated = sum(len(c.token_ids) for c in choices)
        self._count(job, generated)
        self._record(job, version, choices)
        body = {
            "id": job.response_id, "object": obj, "created": created, "model": model,
            "choices": [render(job.response_id, i, c.text, c, 0, True) for i, c in enumerate(choices)],
            "usage": self._usage(job, generated), "policy_version": version,
        }
        return JSONResponse(response_model.model_validate(body).model_dump(), headers=headers)

    async def _collect(self, gen: AsyncIterator[Chunk], first: Chunk | None, request: Request, job: _Job) -> list[_Choice]:
        choices = [_Choice() for _ in range(job.n)]

        def add(c: Chunk) -> None:
            ch = choices[c.index]
            ch.text += c.text
            ch.token_ids += c.token_ids
            ch.logprobs += c.logprobs or []
            ch.finish_reason = c.finish_reason or ch.finish_reason

        async def drain() -> None:
            if first:
                add(first)
            async for c in gen:
                add(c)

        # A client that hangs up should not keep the engine busy: watch for it while generating.
        task = asyncio.ensure_future(drain())
        while not task.done():
            await asyncio.wait({task}, timeout=0.5)
            if not task.done() and await request.is_disconnected():
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
                await gen.aclose()
                self.metrics.cancelled.labels(job.route).inc()
                raise APIError(499, "Client closed the request.")
        task.result()
        return choices

    async def _stream(self, job: _Job, gen, first, obj: str, model: str, created: int, version: str,
                      render: Callable) -> AsyncIterator[str]:
        chunk_obj = "chat.completion.chunk" if obj == "chat.completion" else obj
        offsets = [0] * job.n
        opened: set[int] = set()
        generated = 0
        finished = False
        served = [_Choice() for _ in range(job.n)]
        try:
            pending = [first] if first else []
            while True:
                if pending:
                    c = pending.pop()
                else:
                    # When the engine is ahead of the client, chunks are already queued and neither
                    # taking one nor sending it suspends: without this yield one stream could hold
                    # the event loop until it ends, so other requests would stall and a client's
                    # hang-up would go unnoticed until the whole answer had been generated.
                    await asyncio.sleep(0)
                    try:
                        c = await anext(gen)
                    except StopAsyncIteration:
                        break
                generated += len(c.token_ids)
                kept = served[c.index]
                kept.text += c.text
                kept.token_ids += c.token_ids
                kept.finish_reason = c.finish_reason or kept.finish_reason
                choice = render(job.response_id, c.index, c.text, c, offsets[c.index], False, c.index not in opened)
                opened.add(c.index)
                offsets[c.index] += len(c.text)
                yield _sse({"id": job.response_id, "object": chunk_obj, "created": created, "model": model,
                            "choices": [choice], "policy_version": version})
            if job.include_usage:
                yield _sse({"id": job.response_id, "object": chunk_obj, "created": created, "model": model,
                            "choices": [], "usage": self._usage(job, generated), "policy_version": version})
            yield _sse("[DONE]")
            finished = True
            self._record(job, version, served)
        except Exception as exc:  # the status line is gone; tell the client in-band, as OpenAI does
            yield _sse(error_body(500, f"Generation failed: {exc}", code="generation_failed"))
            yield _sse("[DONE]")
            finished = True
        finally:
            # Reaching here unfinished means the client hung up: closing gen aborts the engine request.
            if not finished:
                self.metrics.cancelled.labels(job.route).inc()
            self._count(job, generated)
            await gen.aclose()

"""Turning an OpenAI request into engine work and the engine's output into an OpenAI response.

Completions and chat completions share one path: both become (prompt token ids, Sampling); only
the rendering of the prompt and the shape of the response differ (gateway/rendering.py).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator

from fastapi import Request
from fastapi.responses import JSONResponse

from core.config import GatewayConfig
from feedback.events import CompletionServed, ServedChoice
from feedback.recorder import FeedbackRecorder
from gateway import protocol as p
from gateway.auth import Caller, GenerationLease, KeyStore
from gateway.errors import APIError, error_body
from gateway.hang_up import HungUp, unless_hung_up
from gateway.job import MIXED, Job
from gateway.metrics import GatewayMetrics
from gateway.overhead import EngineClock, clock_of
from gateway.ownership import Ownership
from gateway.rendering import Accumulator, ChatRenderer, CompletionRenderer, Renderer
from gateway.streaming import ClosingStreamingResponse, StreamEnd, sse
from inference.engine import PolicyEngine
from inference.prompts import ChatTemplateError, chat_ids
from inference.sampling import Chunk
from promotion.labelling import LabelQueue
from promotion.version_health import VersionHealth

log = logging.getLogger(__name__)


class Serving:
    """Validates requests against the caller's limits and runs them on the engine."""

    def __init__(
        self,
        engine: PolicyEngine,
        config: GatewayConfig,
        metrics: GatewayMetrics,
        keys: KeyStore,
        ownership: Ownership,
        recorder: FeedbackRecorder | None = None,
        labels: LabelQueue | None = None,
        health: VersionHealth | None = None,
    ):
        self.engine, self.config, self.metrics, self.keys, self.recorder = (
            engine,
            config,
            metrics,
            keys,
            recorder,
        )
        self.ownership, self.labels, self.health = ownership, labels, health

    # ---- validation -------------------------------------------------------------------------

    def _check_ready_and_model(self, model: str) -> None:
        if not self.engine.ready:
            raise APIError(
                503,
                "The engine is still warming up; retry shortly.",
                code="not_ready",
                headers={"Retry-After": "5"},
            )
        if model != self.config.served_model_name:
            raise APIError(
                404,
                f"The model '{model}' does not exist; this gateway serves '{self.config.served_model_name}'.",
                param="model",
                code="model_not_found",
            )

    def _job(
        self,
        route: str,
        prefix: str,
        req,
        caller: Caller,
        prompt_ids: list[int],
        max_tokens: int | None,
        logprobs: int | None,
        served: dict,
    ) -> Job:
        limits = caller.limits
        if req.n > limits.max_n:
            raise APIError(
                400, f"n={req.n} exceeds this key's limit of {limits.max_n}.", param="n", code="n_too_large"
            )
        if len(prompt_ids) > self.config.max_prompt_tokens:
            raise APIError(
                400,
                f"The prompt has {len(prompt_ids)} tokens; the limit is {self.config.max_prompt_tokens}.",
                param="prompt",
                code="prompt_too_long",
            )
        room = self.engine.max_model_len - len(prompt_ids)
        if max_tokens is None:
            max_tokens = min(limits.max_tokens, room) if route == "chat" else self.config.default_max_tokens
        if max_tokens > limits.max_tokens:
            raise APIError(
                400,
                f"max_tokens={max_tokens} exceeds this key's limit of {limits.max_tokens}.",
                param="max_tokens",
                code="max_tokens_too_large",
            )
        if max_tokens > room:
            raise APIError(
                400,
                f"This model's context is {self.engine.max_model_len} tokens; the prompt "
                f"({len(prompt_ids)}) plus max_tokens ({max_tokens}) exceeds it.",
                param="max_tokens",
                code="context_length_exceeded",
            )
        if req.min_tokens > max_tokens:
            raise APIError(
                400, f"min_tokens={req.min_tokens} is above max_tokens={max_tokens}.", param="min_tokens"
            )
        vocab = len(self.engine.tokenizer)
        if any(t < 0 or t >= vocab for t in req.stop_token_ids or ()):
            raise APIError(400, f"stop_token_ids must be token ids in [0, {vocab}).", param="stop_token_ids")
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        return Job(
            route,
            self.ownership.request_id(prefix, caller.name),
            prompt_ids,
            req.to_sampling(max_tokens, logprobs),
            req.stream,
            include_usage,
            time.monotonic(),
            caller.name,
            served,
            caller.limits.label_sampling,
            f"{caller.name}:{req.user or ''}",
            req.compare_versions,
        )

    def _max_chars(self) -> int:
        # No prompt can have fewer tokens than characters / the longest token's bytes, so past this
        # many characters a prompt is over max_prompt_tokens for sure: refuse it without tokenising.
        tok = self.engine.tokenizer
        if getattr(self, "_longest_for", None) is not tok:
            self._longest = max(len(t.encode("utf-8", "replace")) for t in tok.get_vocab())
            self._longest_for = tok
        return self.config.max_prompt_tokens * self._longest

    def _check_size(self, chars: int, param: str) -> None:
        if chars > self._max_chars():
            raise APIError(
                400,
                f"The prompt has {chars} characters; no more than {self._max_chars()} can fit the "
                f"{self.config.max_prompt_tokens}-token limit.",
                param=param,
                code="prompt_too_long",
            )

    async def _off_loop(self, fn, *args):
        # Tokenising a long text takes long enough to stall every other request: do it in a thread.
        return await asyncio.to_thread(fn, *args) if sum(len(str(a)) for a in args) > 2000 else fn(*args)

    # ---- entry points -----------------------------------------------------------------------

    async def completion(self, req: p.CompletionRequest, caller: Caller, request: Request):
        """POST /v1/completions."""
        self._check_ready_and_model(req.model)
        tok = self.engine.tokenizer
        if isinstance(req.prompt, str):
            self._check_size(len(req.prompt), "prompt")
            # A completions prompt is the model's raw input: control tokens in it are meant.
            prompt_ids = await self._off_loop(
                lambda t: tok(t, add_special_tokens=True)["input_ids"], req.prompt
            )
        else:
            if len(req.prompt) > self.config.max_prompt_tokens:  # before looking at any id
                raise APIError(
                    400,
                    f"The prompt has {len(req.prompt)} tokens; the limit is {self.config.max_prompt_tokens}.",
                    param="prompt",
                    code="prompt_too_long",
                )
            vocab = len(tok)
            if not req.prompt or any(t < 0 or t >= vocab for t in req.prompt):
                raise APIError(
                    400, f"Token-id prompts must be non-empty ids in [0, {vocab}).", param="prompt"
                )
            prompt_ids = list(req.prompt)
        if not prompt_ids:
            raise APIError(400, "The prompt is empty.", param="prompt", code="empty_prompt")
        prompt_text = req.prompt if isinstance(req.prompt, str) else tok.decode(prompt_ids)
        job = self._job(
            "completions",
            "cmpl",
            req,
            caller,
            prompt_ids,
            req.max_tokens,
            req.logprobs,
            {"prompt": prompt_text, "prompt_text": prompt_text},
        )
        return await self._run(job, request, req.model, CompletionRenderer(req.logprobs), caller)

    async def tokenize(self, req: p.TokenizeRequest) -> p.TokenizeResponse:
        """POST /tokenize: the ids the served model is given for a prompt or a chat."""
        self._check_ready_and_model(req.model or self.config.served_model_name)
        tok = self.engine.tokenizer
        if req.messages is not None:
            messages = [{"role": m.role, "content": m.content} for m in req.messages]
            self._check_size(sum(len(m["content"]) for m in messages), "messages")
            try:
                _, ids = await self._off_loop(chat_ids, tok, messages)
            except ChatTemplateError as exc:
                raise APIError(400, str(exc), param="messages", code="chat_template_error") from None
        else:
            prompt, special = req.prompt or "", req.add_special_tokens is not False
            self._check_size(len(prompt), "prompt")
            ids = await self._off_loop(lambda t: tok(t, add_special_tokens=special)["input_ids"], prompt)
        strs = tok.convert_ids_to_tokens(ids) if req.return_token_strs else None
        return p.TokenizeResponse(
            count=len(ids), max_model_len=self.engine.max_model_len, tokens=ids, token_strs=strs
        )

    async def detokenize(self, req: p.DetokenizeRequest) -> p.DetokenizeResponse:
        """POST /detokenize: the text of token ids."""
        self._check_ready_and_model(req.model or self.config.served_model_name)
        tok = self.engine.tokenizer
        if any(t < 0 or t >= len(tok) for t in req.tokens):
            raise APIError(400, f"tokens must be token ids in [0, {len(tok)}).", param="tokens")
        return p.DetokenizeResponse(prompt=await self._off_loop(tok.decode, req.tokens))

    async def chat(self, req: p.ChatCompletionRequest, caller: Caller, request: Request):
        """POST /v1/chat/completions."""
        self._check_ready_and_model(req.model)
        tok = self.engine.tokenizer
        if not tok.chat_template:
            raise APIError(
                400, "This model has no chat template; use /v1/completions.", code="no_chat_template"
            )
        messages = [{"role": m.role, "content": m.content} for m in req.messages]
        self._check_size(sum(len(m["content"]) for m in messages), "messages")
        try:
            # Message content is text: a user's "<|end|><|system|>" never becomes control tokens.
            text, prompt_ids = await self._off_loop(chat_ids, tok, messages)
        except ChatTemplateError as exc:
            raise APIError(400, str(exc), param="messages", code="chat_template_error") from None
        top = req.top_logprobs or 0
        job = self._job(
            "chat",
            "chatcmpl",
            req,
            caller,
            prompt_ids,
            req.max_completion_tokens or req.max_tokens,
            top if req.logprobs else None,
            {"messages": messages, "prompt_text": text},
        )
        return await self._run(job, request, req.model, ChatRenderer(req.logprobs, top), caller)

    # ---- running ----------------------------------------------------------------------------

    def _count(self, job: Job, generated: int) -> None:
        self.metrics.prompt_tokens.inc(len(job.prompt_ids))
        self.metrics.generation_tokens.inc(generated)

    def _record(self, job: Job, version: str, result: Accumulator) -> None:
        """Hand the served completion to the feedback recorder (never waits); maybe sample its prompt
        into the labelling queue."""
        for i, c in enumerate(result.candidates):
            self.metrics.answer_tokens.labels(job.versions[i]).observe(len(c.token_ids))
        messages = job.served.get("messages")
        if (
            self.labels is not None
            and job.label_sampling
            and messages
            and len(messages) == 1
            and messages[0]["role"] == "user"
        ):
            # A sampled offer is a durable SQLite write (an fsync): never on the event loop.
            asyncio.get_running_loop().run_in_executor(None, self.labels.offer, messages[0]["content"])
        if self.recorder is None:
            return
        mixed = version == MIXED
        self.recorder.record_completion(
            CompletionServed(
                request_id=job.response_id,
                route=job.route,
                prompt_tokens=len(job.prompt_ids),
                choices=[
                    ServedChoice(
                        choice_id=job.choice_ids[i],
                        text=c.text,
                        completion_tokens=len(c.token_ids),
                        finish_reason=c.finish_reason,
                        policy_version=job.versions[i] if mixed else None,
                    )
                    for i, c in enumerate(result.candidates)
                ],
                sampling=job.sampling.describe(),
                policy_version=self.engine.version if mixed else version,
                caller=job.caller,
                **job.served,
            )
        )

    def _observe(self, job: Job, ok: bool) -> None:
        """Count a finished request in its version's health (the canary's guardrails); a mixed one
        belongs to neither version alone."""
        if self.health is not None and job.version and job.version != MIXED:
            self.health.observe(job.version, ok, job.prefill_s, job.step_s)

    async def _run(self, job: Job, request: Request, model: str, renderer: Renderer, caller: Caller):
        lease = self.keys.admit(caller, job.sampling.n * job.sampling.max_tokens)
        try:
            return await self._generate(job, request, model, renderer, lease)
        except BaseException:
            lease.release(0)  # a stream that started releases it itself, when it ends
            raise

    async def _generate(
        self, job: Job, request: Request, model: str, renderer: Renderer, lease: GenerationLease
    ):
        # Routed here, with no await before the engines count the request (see PolicyEngine.generate).
        plan = self.engine.plan(job.sampling.n, job.sticky_key, job.compare)
        job.version = MIXED if plan.mixed else plan.versions[0]
        clock = clock_of(request.scope)
        chunks = clock.timed(self.engine.run(plan, job.prompt_ids, job.sampling, job.response_id))
        try:
            if job.stream:
                first = await self._unless_hung_up(job, request, chunks, anext(chunks, None))
            else:
                # Non-streamed candidates come from the engine only when finished (Sampling.final_only).
                first, result = await self._unless_hung_up(job, request, chunks, self._collect(job, chunks))
        except APIError:
            raise  # the client hung up: no fault of the version's
        except Exception:
            self._observe(job, False)  # the version's engine failed it: the canary's guardrail counts this
            raise
        ttft = time.monotonic() - job.started
        if first is not None and first.first_token_at is not None:
            # The first token's time is the engine's (a non-streamed request's first chunk is its
            # final output, long after it): less however long ago the engine made it.
            ttft -= max(0.0, time.time() - first.first_token_at)
        self.metrics.ttft.labels(job.route).observe(max(0.0, ttft))
        if plan.mixed:
            job.version, job.versions = MIXED, list(plan.versions)
        else:  # the chunk's: an in-place reload may have run between routing and generating
            job.version = first.version if first else plan.versions[0]
            job.versions = [job.version] * job.sampling.n
        version = job.version
        job.choice_ids = [self.ownership.choice_id(job.response_id, i, v) for i, v in enumerate(job.versions)]
        for v in set(job.versions):
            self.metrics.served_by.labels(v).inc()
        headers = {"X-Policy-Version": version, "X-Request-Id": job.response_id}
        head = {"id": job.response_id, "created": int(time.time()), "model": model, "policy_version": version}
        if job.stream:
            end = StreamEnd(
                chunks,
                Accumulator(job.sampling.n),
                lambda generated, finished: self._ended(job, lease, generated, finished),
            )
            events = self._stream(job, chunks, first, head, renderer, end, clock)
            return ClosingStreamingResponse(events, end, media_type="text/event-stream", headers=headers)
        self._observe(job, True)
        lease.release(result.generated)
        self._count(job, result.generated)
        self._record(job, version, result)
        body = {
            **head,
            "object": renderer.object,
            "usage": job.usage(result.generated),
            "choices": [renderer.choice(job.choice_ids[i], i, c) for i, c in enumerate(result.candidates)],
        }
        return JSONResponse(renderer.response_model.model_validate(body).model_dump(), headers=headers)

    @staticmethod
    async def _collect(job: Job, chunks: AsyncIterator[Chunk]) -> tuple[Chunk | None, Accumulator]:
        """Every chunk of a request: its first one, and all of them put together."""
        result = Accumulator(job.sampling.n)
        first = None
        async for c in chunks:
            first = first or c
            job.saw(c)
            result.add(c)
        return first, result

    async def _unless_hung_up(self, job: Job, request: Request, chunks: AsyncIterator[Chunk], work):
        """Await the engine work, but if the client hangs up meanwhile, abort it and refuse (499):
        nobody should keep the engine busy for an answer no one will read."""
        try:
            return await unless_hung_up(request, work)
        except HungUp:
            self.metrics.cancelled.labels(job.route).inc()
            await chunks.aclose()
            raise APIError(499, "Client closed the request.") from None

    def _ended(self, job: Job, lease: GenerationLease, generated: int, finished: bool) -> None:
        if not finished:  # the client hung up
            self.metrics.cancelled.labels(job.route).inc()
        lease.release(generated)
        self._count(job, generated)

    async def _stream(
        self,
        job: Job,
        chunks: AsyncIterator[Chunk],
        first: Chunk | None,
        head: dict,
        renderer: Renderer,
        end: StreamEnd,
        clock: EngineClock,
    ) -> AsyncIterator[str]:
        chunk_head = {**head, "object": renderer.chunk_object}
        result = end.result
        opened: set[int] = set()  # candidates that have sent their first piece (it carries the role)
        finished = False
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
                    await clock.let_others_run()
                    try:
                        c = await anext(chunks)
                    except StopAsyncIteration:
                        break
                job.saw(c)
                offset = len(result.candidates[c.index].text)
                result.add(c)
                yield sse(
                    {
                        **chunk_head,
                        "choices": [
                            renderer.delta(job.choice_ids[c.index], c, offset, c.index not in opened)
                        ],
                    }
                )
                opened.add(c.index)
            if job.include_usage:
                yield sse({**chunk_head, "choices": [], "usage": job.usage(result.generated)})
            yield sse("[DONE]")
            finished = True
            self._observe(job, True)
            self._record(job, head["policy_version"], result)
        except Exception:  # the status line is gone; tell the client in-band, as OpenAI does
            # The reason stays in the log: internal error text is not the client's business.
            log.exception("stream %s failed", job.response_id)
            self._observe(job, False)
            yield sse(
                error_body(
                    500,
                    "Generation failed; the request was not completed. Retry it.",
                    code="generation_failed",
                )
            )
            yield sse("[DONE]")
            finished = True
        finally:
            # Reaching here unfinished means the client hung up: closing the chunks aborts the engine request.
            await end(finished)

"""Generates the candidates of the labelling queue's items, in the gateway's own event loop.

Each sampled prompt gets K fresh answers from the serving policy (half of them from the canary
version while one is under evaluation: the queue shuffles them, so raters rank blind), recorded as an ordinary served
completion (caller `labelling-queue`), so a rater's ranking of them is an ordinary ranking: the
trainer needs nothing new to learn from it. Runs supervised (core/supervision.py): a failure is
counted in alignloop_background_failures_total{task="label-filler"} and the loop restarts.
"""

from __future__ import annotations

import asyncio
import logging
import time

from core.config import LabellingConfig
from feedback.events import LABELLING_CALLER, CompletionServed, ServedChoice
from feedback.recorder import FeedbackRecorder
from gateway.metrics import GatewayMetrics
from gateway.ownership import Ownership
from gateway.rendering import Accumulator, Candidate
from inference.engine import PolicyEngine
from inference.prompts import ChatTemplateError, chat_ids
from inference.sampling import Sampling
from promotion.evidence import EvidenceStore
from promotion.labelling import LabelQueue, disagreement

log = logging.getLogger(__name__)

_IDLE_S = 1.0
_COUNT_EVERY_S = 10.0
_AGREEMENT_EVERY_S = 30.0  # agreement reads every ranking: not on every idle tick


async def _candidates(
    engine: PolicyEngine, prompt_ids: list[int], config: LabellingConfig, max_tokens: int, request_id: str
) -> list[tuple[str, Candidate]]:
    """K (version, candidate) pairs: all from the serving version, or, while a canary is under
    evaluation, half from it, so a rater's ranking compares the two versions directly."""
    plan = engine.plan(config.k, compare=True)
    result = Accumulator(config.k)
    async for chunk in engine.run(
        plan,
        prompt_ids,
        Sampling(n=config.k, max_tokens=max_tokens, temperature=config.temperature, final_only=True),
        request_id,
    ):
        result.add(chunk)
    return [(c.version or plan.versions[i], c) for i, c in enumerate(result.candidates)]


class TokenBudget:
    """Tokens per hour for the queue's generations, spent as they are generated."""

    def __init__(self, per_hour: int):
        self.per_hour, self._hour, self.spent = per_hour, -1, 0

    def left(self) -> int:
        """Tokens left this hour."""
        hour = int(time.time() // 3600)
        if hour != self._hour:
            self._hour, self.spent = hour, 0
        return self.per_hour - self.spent


async def fill_once(
    queue: LabelQueue,
    engine: PolicyEngine,
    recorder: FeedbackRecorder,
    ownership: Ownership,
    config: LabellingConfig,
    budget: TokenBudget,
    metrics: GatewayMetrics | None = None,
) -> int:
    """Generate candidates for the items waiting for them, within the hour's token budget; returns
    how many were filled."""
    filled = 0
    for item_id, prompt in await asyncio.to_thread(queue.unfilled):
        if not engine.ready or budget.left() < config.k * config.max_tokens:
            break
        messages = [{"role": "user", "content": prompt}]
        try:
            _, prompt_ids = chat_ids(engine.tokenizer, messages)
        except ChatTemplateError as exc:
            log.warning("labelling item %s dropped: %s", item_id, exc)
            await asyncio.to_thread(queue.drop, item_id)
            continue
        room = engine.max_model_len - len(prompt_ids)
        if room < 1:
            await asyncio.to_thread(queue.drop, item_id)
            continue
        max_tokens = min(config.max_tokens, room)
        request_id = ownership.request_id("chatcmpl", LABELLING_CALLER)
        written = await _candidates(engine, prompt_ids, config, max_tokens, request_id)
        generated = sum(len(c.token_ids) for _, c in written)
        budget.spent += generated
        if metrics is not None:
            metrics.labelling_tokens.inc(generated)
        mixed = len({v for v, _ in written}) > 1
        choices = [
            ServedChoice(
                choice_id=ownership.choice_id(request_id, i, v),
                text=c.text,
                completion_tokens=len(c.token_ids),
                finish_reason=c.finish_reason,
                policy_version=v if mixed else None,
            )
            for i, (v, c) in enumerate(written)
        ]
        recorder.record_completion(
            CompletionServed(
                request_id=request_id,
                route="chat",
                prompt_tokens=len(prompt_ids),
                choices=choices,
                sampling=Sampling(
                    n=config.k, max_tokens=max_tokens, temperature=config.temperature
                ).describe(),
                policy_version=engine.version if mixed else written[0][0],
                caller=LABELLING_CALLER,
                messages=messages,
                prompt_text=prompt,
            )
        )
        await asyncio.to_thread(
            queue.fill,
            item_id,
            request_id,
            [{"id": c.choice_id, "text": c.text} for c in choices],
            disagreement([(v, c.text) for v, c in written]),
        )
        filled += 1
    return filled


def versions_board(evidence: EvidenceStore, engine: PolicyEngine, bootstrap_rounds: int = 200) -> dict:
    """The leaderboard of people's cross-version rankings (labelling items and mixed requests)
    against SFT (the registry's first version) and the serving version (blocking: reads SQLite)."""
    names = engine.registry.names()
    return evidence.leaderboard(names[0] if names else None, engine.version, bootstrap_rounds)


def _take_uncertainty(queue: LabelQueue, engine: PolicyEngine, taken: dict[str, float]) -> dict[str, float]:
    """Put the trainer's newest reward-model uncertainty (published through the registry) on the
    items it scored, so the next leases prefer the ones it is least sure of; returns what is now
    taken (blocking)."""
    scores = engine.registry.uncertainty()
    if scores and scores != taken:
        log.info("labelling: reward-model uncertainty on %d items", queue.score(scores))
    return scores


async def fill_forever(
    queue: LabelQueue,
    engine: PolicyEngine,
    recorder: FeedbackRecorder,
    ownership: Ownership,
    config: LabellingConfig,
    metrics: GatewayMetrics,
    evidence: EvidenceStore,
) -> None:
    """fill_once in a loop, idling when nothing waits; keeps the queue's gauges current."""
    measured = counted = 0.0
    uncertainty: dict[str, float] = {}
    budget = TokenBudget(config.tokens_per_hour)
    while True:
        filled = await fill_once(queue, engine, recorder, ownership, config, budget, metrics)
        if (
            filled or time.monotonic() - counted > _COUNT_EVERY_S
        ):  # a count over all items: not every idle tick
            counted = time.monotonic()
            metrics.labelling_waiting.set(await asyncio.to_thread(queue.waiting))
            uncertainty = await asyncio.to_thread(_take_uncertainty, queue, engine, uncertainty)
        if time.monotonic() - measured > _AGREEMENT_EVERY_S:
            measured = time.monotonic()
            agreement = (await asyncio.to_thread(queue.raters))["agreement"]
            if agreement is not None:
                metrics.rater_agreement.set(agreement)
            metrics.set_leaderboard(await asyncio.to_thread(versions_board, evidence, engine))
            await asyncio.to_thread(queue.prune)
        if not filled:
            await asyncio.sleep(_IDLE_S)

"""The feedback API: pairwise choices, K-wise rankings, ratings and demonstrations.

Only what was served can be rated, and only by the caller it was served to, or by a key with the
rater role on a labelling item leased to it: the ids carry a signature (gateway/ownership.py), so
any replica checks them with no lookup. All candidates of one ranking must come from the same
request. Feedback is answered 202 once it is durable on local disk, never before. A ranking of
answers from several versions carries their versions into the log, where every gateway reads it
back as a verdict (promotion/evidence_feed.py); nothing here counts it. A labelling item a rater
was given for being informative, not at random, carries none (promotion/labelling.py says why).
"""

from __future__ import annotations

import asyncio
from dataclasses import replace

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from feedback.events import Comparison, Demonstration, RankingError, Rating, check_ranking, keyed_event_id
from feedback.submission import IdempotencyConflict, SpoolFull, SpoolUnavailable, Submission
from gateway import feedback_protocol as fp
from gateway.auth import Caller
from gateway.dependencies import ClientDep, Services, ServicesDep
from gateway.errors import APIError
from gateway.ownership import NeverServed, NotServedToCaller, Owned, Ownership
from promotion.labelling import INFORMATIVE, LabelQueue

router = APIRouter(prefix="/v1/feedback", tags=["feedback"])
_PARAM = {"pairwise": "chosen", "ranking": "ranking", "rating": "choice_id", "demonstration": "request_id"}


def _owned_choice(ownership: Ownership, choice_id: str, caller: Caller, param: str) -> Owned:
    try:
        return ownership.check_choice(choice_id, caller.name, may_rate_others=caller.role == "rater")
    except NeverServed as exc:
        raise APIError(
            404,
            f"No completion choice '{choice_id[:80]}' was served by this service ({exc}).",
            param=param,
            code="unknown_choice",
        ) from None
    except NotServedToCaller:
        raise APIError(
            403,
            f"Choice '{choice_id[:80]}' was served to another caller.",
            param=param,
            code="not_your_completion",
        ) from None


def _owned_request(ownership: Ownership, request_id: str, caller: Caller, param: str) -> Owned:
    try:
        return ownership.check_request(request_id, caller.name, may_rate_others=caller.role == "rater")
    except NeverServed as exc:
        raise APIError(
            404,
            f"No request '{request_id[:80]}' was served by this service ({exc}).",
            param=param,
            code="unknown_request",
        ) from None
    except NotServedToCaller:
        raise APIError(
            403, "That request was made by another caller.", param=param, code="not_your_completion"
        ) from None


def _comparison(ownership: Ownership, ranking: list[list[str]], caller: Caller, param: str) -> Comparison:
    try:
        check_ranking(ranking)  # before any check of the ids: a malformed ranking is a 400 whatever its ids
    except RankingError as exc:
        raise APIError(400, f"{str(exc).capitalize()}.", param=param, code=exc.code) from None
    ids = [c for group in ranking for c in group]
    owned = [_owned_choice(ownership, c, caller, param) for c in ids]
    if len({o.request_id for o in owned}) != 1:
        raise APIError(
            400, "All ranked choices must come from the same request.", param=param, code="mixed_requests"
        )
    versions = {c: o.policy_version for c, o in zip(ids, owned)}
    return Comparison(
        request_id=owned[0].request_id,
        ranking=ranking,
        rater=caller.name,
        policy_version=owned[0].policy_version,
        choice_versions=versions if len(set(versions.values())) > 1 else None,
    )


def _submission(item, caller: Caller, ownership: Ownership, at: str) -> Submission:
    """The event for one item; `at` prefixes error params ("items.3." inside a batch)."""
    if isinstance(item, fp.PairwiseFeedback):
        ranking = [[item.chosen, item.rejected]] if item.tie else [[item.chosen], [item.rejected]]
        event = _comparison(ownership, ranking, caller, f"{at}chosen")
    elif isinstance(item, fp.RankingFeedback):
        event = _comparison(
            ownership, [[g] if isinstance(g, str) else g for g in item.ranking], caller, f"{at}ranking"
        )
    elif isinstance(item, fp.RatingFeedback):
        served = _owned_choice(ownership, item.choice_id, caller, f"{at}choice_id")
        event = Rating(
            request_id=served.request_id,
            choice_id=item.choice_id,
            rating=item.rating,
            rater=caller.name,
            policy_version=served.policy_version,
        )
    else:
        _owned_request(ownership, item.request_id, caller, f"{at}request_id")
        event = Demonstration(request_id=item.request_id, response=item.response, author=caller.name)
    # Idempotency keys are per caller: two clients may pick the same key without colliding.
    scoped = f"{caller.name}:{item.idempotency_key}" if item.idempotency_key else None
    if scoped:  # the same event id on every replica: a retry sent elsewhere is stored once
        event = event.model_copy(update={"event_id": keyed_event_id(scoped)})
    return Submission(event, scoped)


async def _check_leases(
    services: Services, submissions: list[Submission], caller: Caller, at: list[str]
) -> None:
    """A rater's feedback on a request not served to it must be on a labelling item leased to it."""
    if caller.role != "rater":
        return
    for s, param in zip(submissions, at):
        rid = s.event.request_id
        if not services.ownership.served_to(rid, caller.name) and not await asyncio.to_thread(
            services.labels.leased_to, rid, caller.name
        ):
            raise APIError(
                403,
                "That request is not a labelling item leased to you: take items from GET /v1/labelling/next.",
                param=param,
                code="not_leased",
            )


async def _informative_items_are_no_verdicts(
    labels: LabelQueue, submissions: list[Submission], caller: Caller
) -> list[Submission]:
    """A rater's ranking of a labelling item leased for being informative trains the reward model
    but is no verdict between versions (its versions are left out): the canary's test and the
    leaderboard need prompts sampled as people send them, not chosen where versions differ most
    (promotion/labelling.py)."""
    if caller.role != "rater":
        return submissions
    kept = []
    for s in submissions:
        event = s.event
        if (
            isinstance(event, Comparison)
            and event.choice_versions
            and await asyncio.to_thread(labels.picked, event.request_id, caller.name) == INFORMATIVE
        ):
            s = replace(s, event=event.model_copy(update={"choice_versions": None}))
        kept.append(s)
    return kept


async def _count_labelling(
    labels: LabelQueue, submissions: list[Submission], caller: Caller, metrics
) -> None:
    """A rater's accepted ranking of a labelling-queue item completes their assignment."""
    if caller.role != "rater":
        return
    for s in submissions:
        if isinstance(s.event, Comparison) and await asyncio.to_thread(
            labels.done, s.event.request_id, caller.name, s.event.ranking
        ):
            metrics.labelled.inc()


async def _accept(
    services: Services, items: list, caller: Caller, batch: bool
) -> tuple[int, list[fp.FeedbackAccepted]]:
    recorder, labels, metrics = services.recorder, services.labels, services.metrics
    kinds = [i.kind for i in items]
    try:
        at = [f"items.{i}." if batch else "" for i in range(len(items))]
        submissions = [
            _submission(item, caller, services.ownership, prefix) for item, prefix in zip(items, at)
        ]
        await _check_leases(
            services, submissions, caller, [f"{prefix}{_PARAM[i.kind]}" for i, prefix in zip(items, at)]
        )
        submissions = await _informative_items_are_no_verdicts(labels, submissions, caller)
        accepted = await recorder.submit(submissions)
    except APIError:
        for kind in kinds:
            recorder.metrics.events.labels(kind, "refused").inc()
        raise
    except SpoolFull as exc:
        for kind in kinds:
            recorder.metrics.events.labels(kind, "refused_spool_full").inc()
        raise APIError(
            503,
            f"Feedback storage is full ({exc}); retry later.",
            code="spool_full",
            headers={"Retry-After": "10"},
        ) from exc
    except SpoolUnavailable as exc:
        for kind in kinds:
            recorder.metrics.events.labels(kind, "refused_storage_unavailable").inc()
        raise APIError(
            503,
            f"Feedback storage is unavailable ({exc}); nothing was accepted, retry later.",
            code="storage_unavailable",
            headers={"Retry-After": "10"},
        ) from exc
    except IdempotencyConflict as exc:
        raise APIError(409, str(exc), param="idempotency_key", code="idempotency_conflict") from exc
    for kind, a in zip(kinds, accepted):
        recorder.metrics.events.labels(kind, "duplicate" if a.duplicate else "accepted").inc()
    fresh = [s for s, a in zip(submissions, accepted) if not a.duplicate]
    await _count_labelling(labels, fresh, caller, metrics)
    status = 200 if all(a.duplicate for a in accepted) else 202
    return status, [fp.FeedbackAccepted(event_id=a.event_id, duplicate=a.duplicate) for a in accepted]


async def single(services: Services, item, caller: Caller) -> JSONResponse:
    """Accept one feedback event (the single-event routes, and gateway/feedback_fast_path.py)."""
    status, accepted = await _accept(services, [item], caller, False)
    return JSONResponse(accepted[0].model_dump(), status_code=status)


@router.post("/pairwise", status_code=202, response_model=fp.FeedbackAccepted)
async def pairwise(body: fp.PairwiseFeedback, caller: ClientDep, services: ServicesDep):
    """Prefer one choice over another (or record a tie)."""
    return await single(services, body, caller)


@router.post("/rankings", status_code=202, response_model=fp.FeedbackAccepted)
async def rankings(body: fp.RankingFeedback, caller: ClientDep, services: ServicesDep):
    """Rank K = 2..9 choices of one request, best first."""
    return await single(services, body, caller)


@router.post("/ratings", status_code=202, response_model=fp.FeedbackAccepted)
async def ratings(body: fp.RatingFeedback, caller: ClientDep, services: ServicesDep):
    """Thumbs up or down on one choice."""
    return await single(services, body, caller)


@router.post("/demonstrations", status_code=202, response_model=fp.FeedbackAccepted)
async def demonstrations(body: fp.DemonstrationFeedback, caller: ClientDep, services: ServicesDep):
    """A better response to one of your requests."""
    return await single(services, body, caller)


# The body model of each single-event route: gateway/feedback_fast_path.py serves these without FastAPI's
# routing and dependency solving (same handler, same checks).
SINGLE_EVENT_ROUTES = {
    pairwise: fp.PairwiseFeedback,
    rankings: fp.RankingFeedback,
    ratings: fp.RatingFeedback,
    demonstrations: fp.DemonstrationFeedback,
}


@router.post("/batch", status_code=202, response_model=fp.BatchAccepted)
async def batch(body: fp.BatchFeedback, caller: ClientDep, services: ServicesDep):
    """Many feedback items, all accepted or none; each item counts against the key's request rate."""
    services.keys.charge_caller(caller, len(body.items) - 1)  # the request itself paid for one
    status, accepted = await _accept(services, body.items, caller, True)
    return JSONResponse(fp.BatchAccepted(accepted=accepted).model_dump(), status_code=status)

"""The feedback API: pairwise choices, K-wise rankings, ratings and demonstrations.

Only what this gateway served can be rated, and only by the caller it was served to (or by a key
with the rater role); all candidates of one ranking must come from the same request. Feedback is
answered 202 once it is durable on local disk, never before.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from feedback.events import MAX_K, Comparison, Demonstration, Rating
from feedback.recorder import IdempotencyConflict, Served, SpoolFull, Submission
from gateway import protocol as p
from gateway.auth import Caller, client
from gateway.errors import APIError

router = APIRouter(prefix="/v1/feedback", tags=["feedback"])


def _owned(recorder, choice_id: str, caller: Caller, param: str) -> Served:
    served = recorder.served(choice_id)
    if served is None:
        raise APIError(404, f"No completion choice '{choice_id}' was served by this gateway.", param=param,
                       code="unknown_choice")
    if served.caller != caller.name and caller.role != "rater":
        raise APIError(403, f"Choice '{choice_id}' was served to another caller.", param=param, code="not_your_completion")
    return served


def _comparison(recorder, ranking: list[list[str]], caller: Caller, param: str) -> Comparison:
    ids = [c for group in ranking for c in group]
    if len(set(ids)) != len(ids):
        raise APIError(400, "A ranking names each choice id once.", param=param, code="duplicate_choice")
    if not 2 <= len(ids) <= MAX_K:
        raise APIError(400, f"A ranking compares 2 to {MAX_K} choices, not {len(ids)}.", param=param, code="bad_k")
    served = [_owned(recorder, c, caller, param) for c in ids]
    if len({s.request_id for s in served}) != 1:
        raise APIError(400, "All ranked choices must come from the same request.", param=param, code="mixed_requests")
    try:
        return Comparison(request_id=served[0].request_id, ranking=ranking, rater=caller.name,
                          policy_version=served[0].policy_version)
    except ValidationError as exc:
        raise APIError(400, exc.errors()[0]["msg"], param=param, code="bad_ranking") from exc


def _submission(item, caller: Caller, recorder, at: str) -> Submission:
    """The event for one item; `at` prefixes error params ("items.3." inside a batch)."""
    if isinstance(item, p.PairwiseFeedback):
        ranking = [[item.chosen, item.rejected]] if item.tie else [[item.chosen], [item.rejected]]
        event = _comparison(recorder, ranking, caller, f"{at}chosen")
    elif isinstance(item, p.RankingFeedback):
        event = _comparison(recorder, [[g] if isinstance(g, str) else g for g in item.ranking], caller, f"{at}ranking")
    elif isinstance(item, p.RatingFeedback):
        served = _owned(recorder, item.choice_id, caller, f"{at}choice_id")
        event = Rating(request_id=served.request_id, choice_id=item.choice_id, rating=item.rating, rater=caller.name,
                       policy_version=served.policy_version)
    else:
        owner = recorder.request_owner(item.request_id)
        if owner is None:
            raise APIError(404, f"No request '{item.request_id}' was served by this gateway.",
                           param=f"{at}request_id", code="unknown_request")
        if owner.caller != caller.name and caller.role != "rater":
            raise APIError(403, "That request was made by another caller.", param=f"{at}request_id",
                           code="not_your_completion")
        event = Demonstration(request_id=item.request_id, response=item.response, author=caller.name,
                              policy_version=owner.policy_version)
    # Idempotency keys are per caller: two clients may pick the same key without colliding.
    scoped = f"{caller.name}:{item.idempotency_key}" if item.idempotency_key else None
    return Submission(event, scoped)


async def _accept(request: Request, items: list, caller: Caller, batch: bool) -> tuple[int, list[p.FeedbackAccepted]]:
    recorder = request.app.state.recorder
    kinds = [i.kind for i in items]
    try:
        submissions = [_submission(item, caller, recorder, f"items.{i}." if batch else "")
                       for i, item in enumerate(items)]
        accepted = await recorder.submit(submissions)
    except APIError:
        for kind in kinds:
            recorder.metrics.events.labels(kind, "refused").inc()
        raise
    except SpoolFull as exc:
        for kind in kinds:
            recorder.metrics.events.labels(kind, "refused_spool_full").inc()
        raise APIError(503, f"Feedback storage is full ({exc}); retry later.", code="spool_full",
                       headers={"Retry-After": "10"}) from exc
    except IdempotencyConflict as exc:
        raise APIError(409, str(exc), param="idempotency_key", code="idempotency_conflict") from exc
    for kind, a in zip(kinds, accepted):
        recorder.metrics.events.labels(kind, "duplicate" if a.duplicate else "accepted").inc()
    status = 200 if all(a.duplicate for a in accepted) else 202
    return status, [p.FeedbackAccepted(event_id=a.event_id, duplicate=a.duplicate) for a in accepted]


async def _single(request: Request, item, caller: Caller) -> JSONResponse:
    status, accepted = await _accept(request, [item], caller, batch=False)
    return JSONResponse(accepted[0].model_dump(), status_code=status)


@router.post("/pairwise", status_code=202, response_model=p.FeedbackAccepted)
async def pairwise(body: p.PairwiseFeedback, request: Request, caller: Caller = Depends(client)):
    """Prefer one choice over another (or record a tie)."""
    return await _single(request, body, caller)


@router.post("/rankings", status_code=202, response_model=p.FeedbackAccepted)
async def rankings(body: p.RankingFeedback, request: Request, caller: Caller = Depends(client)):
    """Rank K = 2..9 choices of one request, best first."""
    return await _single(request, body, caller)


@router.post("/ratings", status_code=202, response_model=p.FeedbackAccepted)
async def ratings(body: p.RatingFeedback, request: Request, caller: Caller = Depends(client)):
    """Thumbs up or down on one choice."""
    return await _single(request, body, caller)


@router.post("/demonstrations", status_code=202, response_model=p.FeedbackAccepted)
async def demonstrations(body: p.DemonstrationFeedback, request: Request, caller: Caller = Depends(client)):
    """A better response to one of your requests."""
    return await _single(request, body, caller)


@router.post("/batch", status_code=202, response_model=p.BatchAccepted)
async def batch(body: p.BatchFeedback, request: Request, caller: Caller = Depends(client)):
    """Many feedback items, all accepted or none."""
    status, accepted = await _accept(request, body.items, caller, batch=True)
    return JSONResponse(p.BatchAccepted(accepted=accepted).model_dump(), status_code=status)

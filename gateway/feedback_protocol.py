"""The feedback API's wire format (alignloop's own, not OpenAI's): pairwise choices, K-wise rankings,
ratings and demonstrations on served choices, alone or in a batch. Kept apart from the OpenAI and
vLLM wire format (gateway/protocol.py), whose conventions it shares."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, Field

from core.limits import MAX_BATCH_ITEMS, MAX_ID_CHARS, MAX_K, MAX_TEXT_CHARS, MIN_K
from gateway.protocol import StrictRequest, Text

_ID = Field(min_length=1, max_length=MAX_ID_CHARS)
_IDEMPOTENCY = Field(default=None, min_length=1, max_length=MAX_ID_CHARS)


class PairwiseFeedback(StrictRequest):
    """One choice preferred over another of the same request (or a tie)."""

    kind: Literal["pairwise"] = "pairwise"
    chosen: Text = _ID
    rejected: Text = _ID
    tie: bool = False
    idempotency_key: Text | None = _IDEMPOTENCY


class RankingFeedback(StrictRequest):
    """K = 2..9 choices of one request, best first; a nested list is a group of ties."""

    kind: Literal["ranking"] = "ranking"
    ranking: list[
        Annotated[Text, Field(max_length=MAX_ID_CHARS)]
        | list[Annotated[Text, Field(max_length=MAX_ID_CHARS)]]
    ] = Field(min_length=MIN_K, max_length=MAX_K)
    idempotency_key: Text | None = _IDEMPOTENCY


class RatingFeedback(StrictRequest):
    """Thumbs up (1) or down (-1) on one choice."""

    kind: Literal["rating"] = "rating"
    choice_id: Text = _ID
    rating: Literal[-1, 1]
    idempotency_key: Text | None = _IDEMPOTENCY


class DemonstrationFeedback(StrictRequest):
    """A better response, written by the user, to a request they made."""

    kind: Literal["demonstration"] = "demonstration"
    request_id: Text = _ID
    response: Text = Field(min_length=1, max_length=MAX_TEXT_CHARS)
    idempotency_key: Text | None = _IDEMPOTENCY


FeedbackItem = Annotated[
    PairwiseFeedback | RankingFeedback | RatingFeedback | DemonstrationFeedback, Field(discriminator="kind")
]


class BatchFeedback(StrictRequest):
    """Several feedback items, accepted all together or not at all."""

    items: list[FeedbackItem] = Field(min_length=1, max_length=MAX_BATCH_ITEMS)


class FeedbackAccepted(BaseModel):
    event_id: str
    duplicate: bool = False


class BatchAccepted(BaseModel):
    accepted: list[FeedbackAccepted]

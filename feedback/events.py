"""Every event the loop exchanges, in one place: versioned JSON schemas with unique event ids.

The gateway writes them, the trainer reads them; neither defines its own. A reader accepts any
schema_version it knows and refuses the rest, so old and new producers can share a topic.
"""

from __future__ import annotations

import json
import random
import time
import uuid
from collections.abc import Sequence
from typing import Annotated, Any, Final, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, field_validator

from core.limits import MAX_K, MAX_TEXT_CHARS, MIN_K

SCHEMA_VERSION: Final = 1
T = TypeVar("T")


class RankingError(ValueError):
    """A ranking that is not one: `code` says how (bad_k, duplicate_choice, empty_group)."""

    def __init__(self, message: str, code: str):
        super().__init__(message)
        self.code = code


def ranking_pairs(ranking: Sequence[Sequence[T]]) -> list[tuple[T, T]]:
    """(better, worse) for every pair a best-first ranking orders; the members of a tie form no pair.

    The one expansion of a ranking into preference pairs (the trainer's loss and accuracy, the
    benchmarks); on choice ids or on candidate indices alike."""
    return [
        (better, worse)
        for i, group in enumerate(ranking)
        for lower in ranking[i + 1 :]
        for better in group
        for worse in lower
    ]


def check_ranking(ranking: list[list[str]]) -> None:
    """The rule every ranking obeys: K = MIN_K..MAX_K candidates, each named once, no empty tie group."""
    ids = [c for group in ranking for c in group]
    if len(set(ids)) != len(ids):
        raise RankingError("a ranking names each choice once", "duplicate_choice")
    if not MIN_K <= len(ids) <= MAX_K:
        raise RankingError(f"a ranking compares {MIN_K} to {MAX_K} choices, not {len(ids)}", "bad_k")
    if any(not group for group in ranking):
        raise RankingError("a ranking has no empty tie groups", "empty_group")


def new_event_id() -> str:
    """A fresh, globally unique event id (random, version 4)."""
    # Not uuid4(): its os.urandom call releases the GIL, and on a busy gateway the request then
    # waits for the spool's threads to hand it back (measured at ~6% of the event loop's time).
    # Event ids need to be unique, not unguessable; `random` is seeded from the OS (re-seeded in
    # forked children) and does not give up the GIL.
    return uuid.UUID(int=random.getrandbits(128), version=4).hex


_KEYED = uuid.UUID("5b0d6c1e-2f7a-4c57-9a51-a11a1001d0e5")


def keyed_event_id(scoped_key: str) -> str:
    """The event id of feedback sent with an idempotency key ("caller:key"): the same on every
    replica, so a retry that lands elsewhere is the same event and is stored once."""
    return uuid.uuid5(_KEYED, scoped_key).hex


class _Event(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: Literal[1] = SCHEMA_VERSION
    event_id: str = Field(default_factory=new_event_id)
    timestamp: float = Field(default_factory=time.time)
    # The served request the event belongs to; also the Kafka key, so one prompt's events share
    # a partition and are read in order.
    request_id: str

    def key(self) -> bytes:
        """The Kafka message key."""
        return self.request_id.encode()

    def to_bytes(self) -> bytes:
        """The wire form."""
        return self.model_dump_json().encode()


class ServedChoice(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    choice_id: str
    text: str
    completion_tokens: int
    finish_reason: str | None = None
    # The version that wrote this candidate when it differs from the request's (a labelling item
    # that mixes the serving and a canary version's answers, blinded); None: the request's version.
    policy_version: str | None = None


# The caller of the completions the gateway generates for its labelling queue (raters rank them;
# the trainer scores the ones still waiting, trainer/acquisition.py).
LABELLING_CALLER = "labelling-queue"


class CompletionServed(_Event):
    """A request the gateway answered, with every candidate it returned."""

    type: Literal["completion"] = "completion"
    route: Literal["completions", "chat"]
    prompt: str | None = None  # /v1/completions (text prompts)
    messages: list[dict[str, str]] | None = None  # /v1/chat/completions
    prompt_text: str  # the exact text the policy saw (template applied)
    prompt_tokens: int
    choices: list[ServedChoice]
    sampling: dict[str, Any]
    policy_version: str
    caller: str


class Comparison(_Event):
    """A ranking of K = 2..9 candidates of one request, best first; an inner group is a tie."""

    type: Literal["comparison"] = "comparison"
    ranking: list[list[str]]
    rater: str
    policy_version: str | None = None  # the version that served the ranked choices (one request, one version)
    # Choice id -> the version that wrote it, when the ranked choices came from several versions (a
    # blinded mixed request, a labelling item during a canary): people's verdict between versions,
    # read back from the log by every gateway (promotion/evidence_feed.py). Clients never see it.
    choice_versions: dict[str, str] | None = None

    @field_validator("ranking")
    @classmethod
    def _is_ranking(cls, ranking: list[list[str]]) -> list[list[str]]:
        check_ranking(ranking)
        return ranking


class Rating(_Event):
    """Thumbs up (+1) or down (-1) on one candidate."""

    type: Literal["rating"] = "rating"
    choice_id: str
    rating: Literal[-1, 1]
    rater: str
    policy_version: str | None = None  # the version that served the rated choice (canaries included)


class Demonstration(_Event):
    """A user-written better response to a served prompt (SFT data)."""

    type: Literal["demonstration"] = "demonstration"
    response: str = Field(min_length=1, max_length=MAX_TEXT_CHARS)
    author: str
    policy_version: str | None = None  # unset since ids are signed: the completion event of request_id has it


Event = CompletionServed | Comparison | Rating | Demonstration
FeedbackEvent = Annotated[Comparison | Rating | Demonstration, Field(discriminator="type")]
AnyEvent = Annotated[CompletionServed | Comparison | Rating | Demonstration, Field(discriminator="type")]
_ANY = TypeAdapter(AnyEvent)


def parse_event(raw: bytes | str) -> Event:
    """Parse and validate one event from its wire form (ValueError if it is not one)."""
    try:
        data = json.loads(raw)
    except RecursionError as exc:
        raise ValueError("the record nests too deeply to be an event") from exc
    if not isinstance(data, dict):
        raise ValueError(f"an event is a JSON object, not {type(data).__name__}")
    if data.get("schema_version") != SCHEMA_VERSION:
        raise ValueError(f"unknown schema_version {data.get('schema_version')!r}")
    return _ANY.validate_python(data)

"""People in the loop: who a key is (for the ranking page), the raters' labelling queue, and the
admin view of rater quality. Rankings themselves go through the ordinary feedback API."""

from __future__ import annotations

import asyncio
from dataclasses import asdict

from fastapi import APIRouter, Depends

from gateway.dependencies import ClientDep, LabelsDep, ServicesDep, admin
from gateway.errors import APIError
from gateway.label_filler import versions_board

router = APIRouter(tags=["people"])


@router.get("/v1/me")
async def me(caller: ClientDep) -> dict:
    """The name and role of the calling key (the page shows what the key may do)."""
    return {"name": caller.name, "role": caller.role}


@router.get("/v1/labelling/next")
async def next_item(caller: ClientDep, labels: LabelsDep) -> dict:
    """The rater's current item (the same one until it is ranked or its lease expires), with how
    many they ranked today and how many items wait."""
    if caller.role != "rater":
        raise APIError(403, "The labelling queue is for keys with the rater role.", code="rater_required")
    # A lease is a durable SQLite write (an fsync), and the counts read every item: off the event loop.
    item = await asyncio.to_thread(labels.lease, caller.name)
    done_today, waiting = await asyncio.to_thread(lambda: (labels.done_today(caller.name), labels.waiting()))
    return {"item": asdict(item) if item else None, "done_today": done_today, "waiting": waiting}


@router.get("/admin/raters", dependencies=[Depends(admin)])
async def raters(labels: LabelsDep) -> dict:
    """Per rater: items ranked and agreement with the other raters of the same items; overall agreement."""
    return labels.raters()


@router.get("/admin/labelling", dependencies=[Depends(admin)])
async def items(labels: LabelsDep, limit: int = 100) -> dict:
    """The newest labelling items: prompt, request, whether candidates exist, rankings given."""
    return {"items": labels.items(max(1, min(limit, 1000))), "waiting": labels.waiting()}


@router.get("/v1/leaderboard")
async def public_leaderboard(caller: ClientDep, services: ServicesDep) -> dict:
    """The versions' leaderboard for the page's chart (any client key): the same figures as the
    admin route."""
    return await asyncio.to_thread(versions_board, services.evidence, services.deployment.engine)


@router.get("/admin/leaderboard", dependencies=[Depends(admin)])
async def leaderboard(services: ServicesDep) -> dict:
    """Policy versions ranked by raters' blinded cross-version comparisons (the labelling queue's
    items mix the canary's answers with the serving version's): Bradley-Terry scores with bootstrap
    95% intervals, win rates against SFT (the registry's first version) and the serving version."""
    board = await asyncio.to_thread(versions_board, services.evidence, services.deployment.engine)
    services.metrics.set_leaderboard(board)
    return board

"""The ranking page in a real browser (Debian's Chromium driven by Playwright) against the real
gateway, vLLM and Kafka: every submission is read back from Kafka. Each screen is photographed
into a temporary folder, or into the folder ALIGNLOOP_UI_SHOTS names (`ALIGNLOOP_UI_SHOTS=docs/ui`
refreshes the README's screenshots)."""

from __future__ import annotations

import functools
import os
import tempfile
import time
import uuid
from pathlib import Path

import httpx

from core.config import FeedbackConfig
from feedback.events import Comparison, CompletionServed, Demonstration
from feedback.source import open_source
from tests.conftest import ADMIN_KEY, MODEL, PRIVATE_KEY, RATER_KEY, REPO, USER_KEY


@functools.cache
def shots() -> Path:
    """Where screenshots go: a test run leaves the working tree as it was unless asked to refresh
    the committed ones."""
    if folder := os.environ.get("ALIGNLOOP_UI_SHOTS"):
        return REPO / folder
    return Path(tempfile.mkdtemp(prefix="alignloop-ui-"))


def open_page(browser, gateway, key: str, width: int = 1280, height: int = 900):
    page = browser.new_context(viewport={"width": width, "height": height}).new_page()
    page.goto(f"{gateway.url}/ui/")
    page.fill("#key", key)
    page.press("#key", "Enter")  # the keyboard signs in too
    page.wait_for_selector("#who:not([hidden])")
    return page


def ask(page, prompt: str, k: int) -> list[str]:
    """Ask for k answers; wait until all have streamed in; returns the choice ids in page order."""
    page.fill("#prompt", prompt)
    page.select_option("#k", str(k))
    page.click("#ask-button")
    page.wait_for_function(
        f"document.querySelectorAll('#cards .card[data-id^=chatcmpl]').length === {k} && "
        "!document.getElementById('ask-button').disabled"
    )
    return order(page)


def order(page) -> list[str]:
    return page.eval_on_selector_all("#cards .card", "cards => cards.map(c => c.dataset.id)")


def shoot(page, name: str) -> None:
    shots().mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(shots() / f"{name}.png"), full_page=True)


def events_of(gateway, kafka: str, request_id: str, until=lambda events: True, timeout: float = 60) -> list:
    """Every event of request_id read back from Kafka (as the trainer reads), once `until(events)` holds."""
    source = open_source(
        FeedbackConfig(kafka_bootstrap=kafka), gateway.state_dir, f"ui-test-{uuid.uuid4().hex}"
    )
    events: list = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            events += [
                d.event
                for d in source.poll(timeout_s=0.5)
                if d.event is not None and d.event.request_id == request_id
            ]
            if until(events):
                return events
    finally:
        source.close()
    raise AssertionError(f"the events of {request_id} in Kafka never satisfied the test: {events}")


def _has(*kinds):
    return lambda events: all(any(isinstance(e, k) for e in events) for k in kinds)


def submitted_ranking(gateway, kafka: str, request_id: str, rater: str) -> Comparison:
    """The ranking of request_id by rater, read back from Kafka (with the rest of the request's events)."""

    def ranked(events: list) -> bool:
        return any(isinstance(e, Comparison) and e.rater == rater for e in events)

    return next(
        e
        for e in events_of(gateway, kafka, request_id, ranked)
        if isinstance(e, Comparison) and e.rater == rater
    )


def test_sign_in_errors_are_shown_in_words(browser, gateway):
    page = browser.new_context().new_page()
    page.goto(f"{gateway.url}/ui/")
    shoot(page, "sign-in")
    page.fill("#key", "sk-not-a-key")
    page.click("#sign-in-button")
    page.wait_for_selector("#error:not([hidden])")
    assert "Incorrect API key" in page.inner_text("#error")
    page.fill("#key", ADMIN_KEY)
    page.click("#sign-in-button")
    page.wait_for_function("document.getElementById('error').textContent.includes('admin key')")


def test_ask_rank_by_keyboard_with_a_tie_and_submit(browser, gateway, kafka_broker):
    page = open_page(browser, gateway, USER_KEY)
    assert page.is_hidden("#tab-label"), "a user key has no labelling queue"
    ids = ask(page, "Describe a fox.", 4)
    page.locator("#cards .card").nth(3).focus()  # Tab's job, done directly
    for _ in range(3):
        page.keyboard.press("ArrowLeft")  # the last answer becomes the best
    page.locator("#cards .card").nth(2).focus()
    page.keyboard.press("t")  # ... and the third ties with the second
    ranked = order(page)
    assert ranked[0] == ids[3] and sorted(ranked) == sorted(ids)
    shoot(page, "ask-ranked")
    page.click("#submit")
    page.wait_for_function("document.getElementById('status').textContent.includes('recorded')")
    request_id = ids[0].rsplit("-", 1)[0]
    event = submitted_ranking(gateway, kafka_broker.bootstrap, request_id, "alice")
    assert event.ranking == [[ranked[0]], [ranked[1], ranked[2]], [ranked[3]]]
    served = next(
        e
        for e in events_of(gateway, kafka_broker.bootstrap, request_id, _has(CompletionServed))
        if isinstance(e, CompletionServed)
    )
    assert event.policy_version == served.policy_version and [c.choice_id for c in served.choices] == ids


def test_rank_by_dragging_and_write_a_better_answer(browser, gateway, kafka_broker):
    page = open_page(browser, gateway, USER_KEY)
    ids = ask(page, "Describe a bear.", 3)
    page.drag_and_drop("#cards .card >> nth=2", "#cards .card >> nth=0", target_position={"x": 5, "y": 5})
    ranked = order(page)
    assert ranked[0] == ids[2], ranked
    page.fill("#better", "The bear is blue and it lives near the river.")
    page.click("#submit")
    page.wait_for_function("document.getElementById('status').textContent.includes('recorded')")
    request_id = ids[0].rsplit("-", 1)[0]
    assert submitted_ranking(gateway, kafka_broker.bootstrap, request_id, "alice").ranking == [
        [i] for i in ranked
    ]
    demos = [
        e
        for e in events_of(gateway, kafka_broker.bootstrap, request_id, _has(Demonstration))
        if isinstance(e, Demonstration)
    ]
    assert [d.response for d in demos] == ["The bear is blue and it lives near the river."]


def test_a_submission_survives_a_reload_and_counts_once(browser, gateway, kafka_broker):
    page = open_page(browser, gateway, USER_KEY)
    ids = ask(page, "Describe a cow.", 2)
    page.route("**/v1/feedback/batch", lambda route: route.abort())  # the network drops the first try
    page.click("#submit")
    page.wait_for_selector("#error:not([hidden])")
    assert "reach the gateway" in page.inner_text("#error")
    page.unroute("**/v1/feedback/batch")
    page.reload()  # the tab keeps the key and the unsent submission, and sends it again
    page.wait_for_function("document.getElementById('status').textContent.includes('before the reload')")
    request_id = ids[0].rsplit("-", 1)[0]
    submitted_ranking(gateway, kafka_broker.bootstrap, request_id, "alice")
    rankings = [
        e
        for e in events_of(gateway, kafka_broker.bootstrap, request_id, _has(Comparison, CompletionServed))
        if isinstance(e, Comparison)
    ]
    assert len(rankings) == 1


def test_the_page_works_on_a_phone_screen(browser, gateway):
    page = open_page(browser, gateway, USER_KEY, width=390, height=844)
    ask(page, "Count to 3.", 3)
    boxes = [page.locator("#cards .card").nth(i).bounding_box() for i in range(3)]
    assert len({round(b["x"]) for b in boxes}) == 1 and all(b["x"] + b["width"] <= 390 for b in boxes), boxes
    shoot(page, "phone")


def test_a_rater_takes_an_item_from_the_queue_ranks_and_submits(browser, gateway, kafka_broker):
    with gateway.client() as c:  # production traffic the queue samples from
        marker = f"Describe a fox {uuid.uuid4().hex[:6]}."
        assert (
            c.post(
                "/v1/chat/completions",
                json={"model": MODEL, "max_tokens": 8, "messages": [{"role": "user", "content": marker}]},
            ).status_code
            == 200
        )
    with gateway.client(USER_KEY) as c:
        r = c.get("/v1/labelling/next")
        assert r.status_code == 403 and r.json()["error"]["code"] == "rater_required"
    page = open_page(browser, gateway, RATER_KEY)
    page.click("#tab-label")
    deadline = time.monotonic() + 120
    while page.inner_text("#label-prompt") in ("", "Nothing to label right now."):
        assert time.monotonic() < deadline, "no item reached the labelling queue"
        time.sleep(2)
        page.click("#next-item")
    assert "ranked" in page.inner_text("#label-stats") and "waiting" in page.inner_text("#label-stats")
    shoot(page, "label")
    ids = order(page)
    page.locator("#cards .card").nth(1).focus()
    page.keyboard.press("ArrowUp")
    ranked = order(page)
    assert ranked[0] == ids[1]
    prompt = page.inner_text("#label-prompt")
    page.click("#submit")
    page.wait_for_function("document.getElementById('status').textContent.includes('recorded')")
    request_id = ranked[0].rsplit("-", 1)[0]
    event = submitted_ranking(gateway, kafka_broker.bootstrap, request_id, "rita")
    assert event.ranking == [[i] for i in ranked]
    served = next(
        e
        for e in events_of(gateway, kafka_broker.bootstrap, request_id, _has(CompletionServed))
        if isinstance(e, CompletionServed)
    )
    assert served.messages == [{"role": "user", "content": prompt}] and sorted(
        c.choice_id for c in served.choices
    ) == sorted(ids)
    with gateway.client(ADMIN_KEY) as admin:
        raters = admin.get("/admin/raters").json()
    assert raters["raters"]["rita"]["ranked"] >= 1


def test_an_opted_out_keys_prompts_never_reach_the_queue(gateway):
    mine, private = f"Say hello to Ada {uuid.uuid4().hex[:6]}.", f"Say hello to Bo {uuid.uuid4().hex[:6]}."
    for key, prompt in ((USER_KEY, mine), (PRIVATE_KEY, private)):
        with gateway.client(key) as c:
            assert (
                c.post(
                    "/v1/chat/completions",
                    json={"model": MODEL, "max_tokens": 4, "messages": [{"role": "user", "content": prompt}]},
                ).status_code
                == 200
            )
    with gateway.client(ADMIN_KEY) as admin:
        deadline = time.monotonic() + 30
        while mine not in (prompts := [i["prompt"] for i in admin.get("/admin/labelling").json()["items"]]):
            assert time.monotonic() < deadline, "the sampled prompt never reached the queue"
            time.sleep(0.5)
    assert private not in prompts
    assert httpx.get(f"{gateway.url}/ui/").status_code == 200


def test_the_versions_tab_charts_peoples_blinded_cross_version_rankings(browser, gateway, kafka_broker):
    """A ranking of a mixed answer set (compare_versions while a canary runs) puts the versions on
    the leaderboard, and the page draws each version's win rate against SFT with its interval."""
    with gateway.client(ADMIN_KEY) as admin:
        serving = admin.get("/admin/versions").json()["serving"]
        candidate = "v0002" if serving != "v0002" else "v0001"
        assert admin.post("/admin/canary", json={"version": candidate, "fraction": 0.01}).status_code == 200
    try:
        with gateway.client(USER_KEY) as user:
            r = user.post(
                "/v1/chat/completions",
                json={
                    "model": MODEL,
                    "n": 2,
                    "max_tokens": 4,
                    "compare_versions": True,
                    "messages": [{"role": "user", "content": "Describe a fox."}],
                },
            )
            assert r.status_code == 200 and r.json()["policy_version"] == "mixed", r.text
            ids = [c["id"] for c in r.json()["choices"]]
            assert user.post("/v1/feedback/rankings", json={"ranking": ids}).status_code == 202
    finally:
        with gateway.client(ADMIN_KEY) as admin:
            assert admin.delete("/admin/canary").status_code == 200
    # The verdict reaches the board through the feedback log; the page reads the board once.
    deadline = time.monotonic() + 60
    with gateway.client(USER_KEY) as user:
        while not any(
            row["version"] == "v0002" and row["vs_sft"]
            for row in user.get("/v1/leaderboard").json()["versions"]
        ):
            assert time.monotonic() < deadline, "the ranking never reached the leaderboard"
            time.sleep(1)
    page = open_page(browser, gateway, USER_KEY)
    page.click("#tab-versions")
    page.wait_for_selector('#chart g.bar[data-version="v0002"]')  # v0001 is SFT, the reference
    label = page.text_content('#chart g.bar[data-version="v0002"]')
    assert "%" in label and "n=" in label, label
    assert "pairwise outcomes" in page.text_content("#board-summary")
    shoot(page, "versions")

"""`alignloop report` from a real registry (lineage as the trainer writes it, a canary decision as
the gateway keeps it) and the gateway's real evidence store of rankings whose signed ids carry two
versions."""

from PIL import Image

from alignloop import report
from core.config import load_settings
from feedback.events import Comparison
from gateway.ownership import Ownership, load_or_create_secrets
from promotion.evidence import EvidenceStore
from registry.store import PolicyRegistry


def test_the_report_shows_people_judge_tax_rm_accuracy_and_reward_hacking_signals(tmp_path, tiny_model_dir):
    settings = load_settings(None, [f"state_dir={tmp_path / 'state'}"], environ={})
    registry = PolicyRegistry(settings.paths.registry)
    registry.publish(tiny_model_dir, source="tiny-model", make_current=True)
    for n, (accuracy, ptx) in enumerate([(0.7, 1.10), (0.85, 1.05)], start=1):
        registry.publish(
            tiny_model_dir,
            source="trainer",
            parent=registry.current(),
            make_current=n == 2,
            metrics={"rm_heldout_accuracy": accuracy},
            extra={
                "round": n,
                "gate": {
                    "decision": "proposed" if n == 2 else "rejected",
                    "candidate_ptx_loss": ptx,
                    "sft_ptx_loss": 1.0,
                    "kl_from_sft": 2.5 * n,
                    "candidate_answer_tokens": 10.0 * n,
                    "serving_answer_tokens": 9.0,
                    **({"rm_score_drift": 0.75} if n == 2 else {}),
                    # the gate's held-out judge set, when it had one
                    **({"judge_accuracy": 0.9} if n == 2 else {}),
                },
            },
        )
    assert registry.current() == "v0003"
    registry.record_decision(
        "v0003",
        {
            "decision": "promoted",
            "against": "v0001",
            "evidence": {"wins": 18, "n": 22, "interval_95": (0.61, 0.93)},
        },
    )

    # People ranked blinded pairs of v0003's and v0001's answers: v0003 first 8 times out of 10.
    ownership = Ownership(load_or_create_secrets([], settings.paths.ownership_secret), 86400)
    evidence = EvidenceStore(settings.paths.evidence)
    for i in range(10):
        request_id = ownership.request_id("chatcmpl", "labelling")
        new, old = ownership.choice_id(request_id, 0, "v0003"), ownership.choice_id(request_id, 1, "v0001")
        ranking = [[new], [old]] if i < 8 else [[old], [new]]
        assert evidence.record(
            Comparison(
                request_id=request_id,
                rater="rita",
                ranking=ranking,
                choice_versions={c: ownership.version_of(c) for c in (new, old)},
            )
        )
    again = Comparison(
        request_id=request_id,
        rater="rita",
        ranking=[[old], [new]],
        choice_versions={new: "v0003", old: "v0001"},
    )
    assert evidence.record(again) and len(evidence.verdicts("v0003", "v0001")) == 10, (
        "one verdict per rater and request"
    )

    judged = {"rate": 0.9, "interval_95": (0.8, 0.95), "pairs": 192}
    page = report.build(
        settings,
        tmp_path / "report",
        judge=lambda v: judged,
        judge_name="hidden rule",
        judged_versions=["v0003"],
    )
    text = page.read_text()
    rows: dict[str, str] = {}
    for line in text.splitlines():  # the versions table's rows (the leaderboard's come after them)
        if line.startswith("| v"):
            rows.setdefault(line.split("|")[1].strip(), line)
    assert "v0003 (serving)" in rows and "v0002" in rows and "v0001" in rows
    serving = rows["v0003 (serving)"]
    assert "proposed" in serving and "0.90" in serving and "1.050" in serving  # gate, RM accuracy, tax
    assert "promoted: 18/22 vs v0001 (61%-93%)" in serving  # the canary's decision and its evidence
    assert "80% (" in serving and "n=10" in serving  # people: 8 of 10, with its interval
    assert "90% (80%-95%, n=192)" in serving and "vs SFT, hidden rule" in text
    assert "rejected" in rows["v0002"] and "0.70" in rows["v0002"] and "1.100" in rows["v0002"]
    assert "n=" not in rows["v0002"]
    # Reward-hacking signals, in the table's order: KL from SFT, answer tokens, RM score drift.
    columns = [c.strip() for c in serving.split("|")]
    kl = columns.index("5.00")
    assert columns[kl : kl + 3] == ["5.00", "20.0", "+0.75"], columns
    first = [c.strip() for c in rows["v0002"].split("|")]
    assert first[kl : kl + 3] == ["2.50", "10.0", ""], first  # round 1 had no RM before it
    assert [c.strip() for c in rows["v0001"].split("|")][
        kl + 1
    ] == "9.0"  # measured as round 1's serving side
    assert "People's leaderboard (10 pairwise outcomes" in text
    for png in ("win_rate.png", "training.png"):
        assert f"]({png})" in text
        with Image.open(tmp_path / "report" / png) as im:
            assert im.format == "PNG" and im.size[0] > 500

"""`alignloop experiment`: the trainer's own rounds on simulated raters, from the command line, with
the table, the per-round records and the learning curve it promises."""

import json

import torch
from PIL import Image

from alignloop.cli import main
from synthetic.corpus import pretraining_texts
from synthetic.judge import TRAIN_PROMPTS
from trainer.data import write_jsonl


def test_the_experiment_runs_rounds_and_draws_a_learning_curve(tmp_path, tiny_model_dir):
    pretraining = tmp_path / "pretraining.jsonl"
    write_jsonl(pretraining, ({"text": t} for t in pretraining_texts(200, seed=5)))
    out = tmp_path / "out"
    small = [
        f"base_model={tiny_model_dir}",
        f"train.loop.pretraining_data={pretraining}",
        "train.ppo.iterations=2",
        "train.loop.rm_max_steps=5",
        "train.loop.rm_window=6",  # round 2's RM trains on the newest 6 rankings only
        "train.rm.calibrate=true",
        # The demo's settings set torch's threads to 1, and in this process that would hold for every
        # later test of the session (torch's thread count is process-wide): keep torch's default.
        "train.cpu_threads=null",
    ]
    # --pool 2: round 2 draws twice the candidate sets and ranks those round 1's RM is least sure of.
    args = [
        "experiment",
        "--state-dir",
        str(tmp_path / "state"),
        "--seeds",
        "3",
        "--rounds",
        "2",
        "--pool",
        "2",
    ]
    args += ["--rankings-per-prompt", "2", "--out", str(out), *[a for s in small for a in ("--set", s)]]
    threads = torch.get_num_threads()
    assert main(args) == 0
    assert torch.get_num_threads() == threads

    rows = [json.loads(line) for line in (out / "rounds.jsonl").read_text().splitlines()]
    assert [(r["seed"], r["round"]) for r in rows] == [(3, 1), (3, 2)]
    # Rankings accumulate across rounds; a set of K answers the rule finds all equal is not one; a
    # pool ranks no more sets than without one.
    assert 0 < rows[0]["rankings"] < rows[1]["rankings"] <= 2 * 2 * len(TRAIN_PROMPTS)
    promoted_yet = False
    for r in rows:
        assert 0.0 <= r["rm_accuracy"] <= 1.0 and r["kl_from_sft"] == r["kl_from_sft"]  # not NaN
        assert 0 < r["rm_trained_on"] <= 6 and 0.0 <= r["rm_calibration_error"] <= 1.0
        assert r["gate"] == "passed" or not r["promoted"]
        promoted_yet |= r["promoted"]
        if r["promoted"]:
            assert r["serving_win"] == r["candidate_win"]
        elif not promoted_yet:
            assert r["serving_win"] == 0.5  # still SFT: no change by definition
        assert 0.0 <= r["best_of_k_win"] <= 1.0 and r["serving_answer_chars"] > 0
        low, high = r["serving_interval_95"]
        assert low <= r["serving_win"] <= high
        assert (out / "seed3" / f"round{r['round']:02d}" / "policy" / "model.safetensors").exists()

    page = (out / "experiment.md").read_text()
    assert page.count("\n| 3 | ") == 2 and "win rate vs SFT" in page
    with Image.open(out / "learning_curve.png") as png:
        assert png.size[0] > 300

"""The reward model's calibration: how sure it is against how often it is right, and a temperature
folded into its saved head that makes the two agree without changing any ordering."""

import pytest
import torch
from transformers import AutoTokenizer

from trainer.calibration import calibrate, calibration_error, fit_temperature
from trainer.data import Ranking
from trainer.evaluate import score
from trainer.reward_model import RewardModel
from trainer.runtime import Runtime


def _overconfident(right: float = 0.7, n: int = 1000) -> torch.Tensor:
    """Margins of a model that is ~100% sure of every pair and right on `right` of them."""
    return torch.tensor([6.0 if i < right * n else -6.0 for i in range(n)])


def test_an_overconfident_model_gets_a_temperature_that_removes_its_calibration_error():
    margins = _overconfident(0.7)
    assert calibration_error(margins) == pytest.approx(0.3, abs=0.01)  # sure of all, right on 70%
    temperature = fit_temperature(margins)
    # σ(6 / T) = 0.7 is the likelihood's optimum: T = 6 / logit(0.7) ≈ 7.1.
    assert temperature == pytest.approx(6.0 / torch.logit(torch.tensor(0.7)).item(), rel=0.03)
    assert calibration_error(margins / temperature) < 0.01
    # An underconfident one (right on all, sure of little) is sharpened: T < 1.
    assert fit_temperature(torch.full((100,), 0.5)) < 1.0
    assert calibration_error(torch.tensor([])) != calibration_error(torch.tensor([]))  # NaN: no pairs


def test_calibrating_a_saved_reward_model_divides_every_reward_by_the_temperature(tmp_path, tiny_model_dir):
    runtime = Runtime(device="cpu")
    torch.manual_seed(0)
    rm_dir = tmp_path / "rm"
    RewardModel.from_pretrained(tiny_model_dir, runtime).save_pretrained(rm_dir)
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    tok.save_pretrained(rm_dir)
    answers = ["A blue frog.", "Red.", "The cat sat on a green mat.", "A green cat."]
    rankings = [Ranking(p, answers, [[0], [1], [2], [3]]) for p in ("Describe a frog.", "Describe a cat.")]

    def rewards() -> torch.Tensor:
        rm = RewardModel.from_pretrained(rm_dir, runtime, frozen=True)
        return score(rm, tok, ["Describe a frog."] * len(answers), answers, runtime=runtime)

    before = rewards()
    fitted = calibrate(rm_dir, rankings, runtime, max_len=64)
    after = rewards()
    assert fitted["temperature"] != 1.0  # a random head is not calibrated on arbitrary rankings
    torch.testing.assert_close(after, before / fitted["temperature"], rtol=1e-4, atol=1e-5)
    assert fitted["calibration_error"] <= fitted["calibration_error_before"]
    # A second calibration (a resumed round's) finds it calibrated and keeps the first's scale.
    again = calibrate(rm_dir, rankings, runtime, max_len=64)
    assert again["temperature"] == pytest.approx(1.0, rel=0.03)
    torch.testing.assert_close(rewards(), after / again["temperature"], rtol=1e-4, atol=1e-5)

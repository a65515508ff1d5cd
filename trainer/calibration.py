"""How sure the reward model is against how often it is right, and the temperature that fixes it.

The RM says a pair's better answer wins with probability σ(r_better − r_worse). Dividing every
reward by a temperature T changes no ordering (held-out accuracy, best-of-K picks) but does change
how sure the model is, and with it the size of the rewards PPO weighs against its KL penalty and
the uncertainty the labelling queue ranks items by (trainer/acquisition.py).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import AutoTokenizer

from trainer.data import Ranking
from trainer.reward_model import RewardModel
from trainer.reward_training import pair_margins
from trainer.runtime import Runtime

log = logging.getLogger(__name__)

_BINS = 5  # confidence bins over [0.5, 1]
_TEMPERATURES = torch.logspace(-1, 1, 201)  # the search range, 0.1 to 10


def calibration_error(margins: torch.Tensor) -> float:
    """Expected calibration error over pairs: per confidence bin (confidence max(p, 1 - p)), the gap
    between how often the model is right and how sure it is, weighted by the bin's share of pairs."""
    if not len(margins):
        return float("nan")
    p = torch.sigmoid(margins)
    confidence = torch.maximum(p, 1 - p)
    right = (margins > 0).float()
    bins = ((confidence - 0.5) * 2 * _BINS).long().clamp(max=_BINS - 1)
    error = torch.zeros(())
    for b in bins.unique():
        inside = bins == b
        error += inside.float().mean() * (right[inside].mean() - confidence[inside].mean()).abs()
    return float(error)


def fit_temperature(margins: torch.Tensor) -> float:
    """The T (0.1 to 10) that minimises the pairs' negative log-likelihood, mean of -log σ(margin / T)."""
    nll = -F.logsigmoid(margins[None, :] / _TEMPERATURES[:, None]).mean(dim=1)
    return float(_TEMPERATURES[int(nll.argmin())])


def calibrate(rm_dir: Path, rankings: list[Ranking], runtime: Runtime, max_len: int) -> dict[str, float]:
    """Fit T on rankings the RM never trained on and fold 1/T into its saved head, so that everything
    that loads it later (PPO, the gate, the labelling scores, the next round) reads calibrated rewards.
    Returns the temperature and the calibration error before and after."""
    model = RewardModel.from_pretrained(rm_dir, runtime, frozen=True)
    margins = pair_margins(model, AutoTokenizer.from_pretrained(rm_dir), rankings, max_len, runtime)
    temperature = fit_temperature(margins) if len(margins) else 1.0
    if runtime.world.main:
        RewardModel.scale_saved(rm_dir, 1.0 / temperature)
    runtime.world.barrier()  # every rank's next stage reads the rescaled head
    fitted = {
        "temperature": temperature,
        "calibration_error_before": calibration_error(margins),
        "calibration_error": calibration_error(margins / temperature),
    }
    log.info(
        "rm: calibrated on %d held-out pairs: temperature %.2f, calibration error %.3f -> %.3f",
        len(margins),
        temperature,
        fitted["calibration_error_before"],
        fitted["calibration_error"],
    )
    return fitted

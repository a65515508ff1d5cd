"""The one training loop SFT and the reward model share: how many steps it takes, of which items."""

import threading

import torch

from trainer import supervised_loop as loop
from trainer.runtime import Runtime


def _train(tmp_path, n_items: int, batch_size: int, epochs: int = 2) -> tuple[int, list[list[int]]]:
    weight = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([weight], lr=0.1)
    steps: list[list[int]] = []

    def step(indices: list[int]) -> dict[str, float]:
        steps.append(sorted(indices))
        return {"loss": 0.0}

    state, _ = loop.run(
        name="test",
        n_items=n_items,
        batch_size=batch_size,
        epochs=epochs,
        seed=0,
        optimizer=optimizer,
        step=step,
        save=lambda d: d.mkdir(parents=True, exist_ok=True),
        out_dir=tmp_path / "out",
        runtime=Runtime(),
        save_every=0,
    )
    return state.step, steps


def test_fewer_items_than_a_batch_train_one_smaller_step_per_epoch(tmp_path):
    # A round with 6 rankings and a batch of 8 used to loop forever, taking no step: run it aside.
    result: list = []
    worker = threading.Thread(
        target=lambda: result.append(_train(tmp_path, n_items=6, batch_size=8)), daemon=True
    )
    worker.start()
    worker.join(timeout=60)
    assert result, "the loop never finished"
    steps, batches = result[0]
    assert steps == 2 and batches == [list(range(6))] * 2
    assert _train(tmp_path / "none", n_items=0, batch_size=8)[0] == 0  # nothing to train on: no step
    steps, batches = _train(tmp_path / "full", n_items=20, batch_size=8)
    assert steps == 4 and all(len(b) == 8 for b in batches)  # 2 batches an epoch, the rest left over

"""Training state that resumes exactly: optimizer moments, step, RNG streams and data position.

Saved as safetensors (tensors) plus JSON (everything else), never pickle, so a checkpoint from
anywhere can be loaded without running code from it.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from trainer.runtime import Runtime


# In a folder of its own: vLLM's loader (and the registry's copy) take every top-level
# *.safetensors of a checkpoint as model weights.
STATE_DIR = "training_state"
STATE_TENSORS = "optimizer_and_rng.safetensors"
STATE_JSON = "state.json"


@dataclass
class TrainState:
    """Where a run is: step, epoch and position in that epoch's data order."""

    step: int = 0
    epoch: int = 0
    position: int = 0
    extra: dict = field(default_factory=dict)


def save_training_state(path: Path, optimizer: torch.optim.Optimizer, state: TrainState) -> None:
    """Write optimizer state, RNG states and the position in the data to path."""
    path = Path(path) / STATE_DIR
    path.mkdir(parents=True, exist_ok=True)
    opt = optimizer.state_dict()
    tensors = {f"opt.{pid}.{name}": value.detach().clone().contiguous()
               for pid, slots in opt["state"].items() for name, value in slots.items() if torch.is_tensor(value)}
    tensors["rng.torch"] = torch.get_rng_state()
    save_file(tensors, path / STATE_TENSORS)
    py_state = random.getstate()
    (path / STATE_JSON).write_text(json.dumps({
        "train_state": asdict(state),
        "param_groups": opt["param_groups"],
        "python_random": [py_state[0], list(py_state[1]), py_state[2]],
    }))


def load_training_state(path: Path, optimizer: torch.optim.Optimizer) -> TrainState:
    """Restore what save_training_state wrote; returns the TrainState."""
    path = Path(path) / STATE_DIR
    tensors = load_file(path / STATE_TENSORS)
    meta = json.loads((path / STATE_JSON).read_text())
    slots: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("opt."):
            _, pid, name = key.split(".", 2)
            slots.setdefault(int(pid), {})[name] = value
    optimizer.load_state_dict({"state": slots, "param_groups": meta["param_groups"]})
    torch.set_rng_state(tensors["rng.torch"])
    version, internal, gauss = meta["python_random"]
    random.setstate((version, tuple(internal), gauss))
    return TrainState(**meta["train_state"])


def has_training_state(path: Path) -> bool:
    """Whether path holds a resumable training state."""
    return (Path(path) / STATE_DIR / STATE_JSON).exists()


def save_checkpoint(out_dir: Path, optimizer: torch.optim.Optimizer, state: TrainState,
                    save_model: Callable[[Path], None], runtime: Runtime) -> None:
    """The model(s) and the training state. save_model runs on every rank (gathering sharded
    weights is a collective) and writes on the main one. Under FSDP the optimiser moments are
    sharded and not saved: such a run restarts its stage rather than resuming it exactly."""
    save_model(out_dir)
    world = runtime.world
    if world.main and not (world.size > 1 and runtime.sharding == "fsdp"):
        save_training_state(out_dir, optimizer, state)
    if world.size > 1:
        torch.distributed.barrier()

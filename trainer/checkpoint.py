"""Training state that resumes exactly: optimizer moments, step, RNG streams and data position.

Saved as safetensors (tensors) plus JSON (everything else), never pickle, so a checkpoint from
anywhere can be loaded without running code from it.

A checkpoint is written beside its folder and then swapped in by two renames, so a process killed
mid-save leaves the previous checkpoint whole: rewritten in place, a kill had left an empty
config.json beside the last training state, and the restarted round crashed on it.
`resumable()` finishes or undoes a swap that a kill interrupted before anything reads the folder.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from core.durable_files import fsync_dir, fsync_tree
from core.failpoints import failpoint
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
    tensors = {
        f"opt.{pid}.{name}": value.detach().clone().contiguous()
        for pid, slots in opt["state"].items()
        for name, value in slots.items()
        if torch.is_tensor(value)
    }
    tensors["rng.torch"] = torch.get_rng_state()
    if torch.cuda.is_available():  # dropout and sampling on the GPU draw from its own generator
        tensors["rng.cuda"] = torch.cuda.get_rng_state()
    save_file(tensors, path / STATE_TENSORS)
    py_state = random.getstate()
    (path / STATE_JSON).write_text(
        json.dumps(
            {
                "train_state": asdict(state),
                "param_groups": opt["param_groups"],
                "python_random": [py_state[0], list(py_state[1]), py_state[2]],
            }
        )
    )


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
    if "rng.cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["rng.cuda"])
    version, internal, gauss = meta["python_random"]
    random.setstate((version, tuple(internal), gauss))
    return TrainState(**meta["train_state"])


def has_training_state(path: Path) -> bool:
    """Whether path holds a resumable training state (see resumable() for a folder a kill may have left)."""
    return (Path(path) / STATE_DIR / STATE_JSON).exists()


def resumable(out_dir: Path, runtime: Runtime) -> bool:
    """Settle a save that a killed process left halfway (on the main rank; the others wait), then
    whether out_dir holds a resumable training state."""
    if runtime.world.main:
        _settle(Path(out_dir))
    if runtime.world.size > 1:
        torch.distributed.barrier()
    return has_training_state(out_dir)


def save_checkpoint(
    out_dir: Path,
    optimizer: torch.optim.Optimizer,
    state: TrainState,
    save_model: Callable[[Path], None],
    runtime: Runtime,
) -> None:
    """The model(s) and the training state, swapped in whole (see the module docstring).
    save_model runs on every rank (gathering sharded weights is a collective) and writes on the main
    one. Under FSDP the optimiser moments are sharded and not saved: such a run restarts its stage
    rather than resuming it exactly. Needs room for two checkpoints while it runs."""
    out_dir = Path(out_dir)
    staging, _ = _beside(out_dir)
    world = runtime.world
    if world.main:
        shutil.rmtree(staging, ignore_errors=True)
    save_model(staging)
    if world.main:
        if not (world.size > 1 and runtime.sharding == "fsdp"):
            save_training_state(staging, optimizer, state)
        _swap_in(staging, out_dir)
    if world.size > 1:
        torch.distributed.barrier()


def _beside(out_dir: Path) -> tuple[Path, Path]:
    """Where a checkpoint of out_dir is written (staging), and where the one it replaces waits (previous)."""
    return out_dir.with_name(f".{out_dir.name}.saving"), out_dir.with_name(f".{out_dir.name}.previous")


def _swap_in(staging: Path, out_dir: Path) -> None:
    fsync_tree(staging)  # on disk before it replaces anything: a power cut must not tear it either
    failpoint("trainer.checkpoint.staged")
    _, previous = _beside(out_dir)
    shutil.rmtree(previous, ignore_errors=True)
    if out_dir.exists():
        os.replace(out_dir, previous)
        failpoint("trainer.checkpoint.swapping")
    os.replace(staging, out_dir)
    fsync_dir(out_dir.parent)
    shutil.rmtree(previous, ignore_errors=True)


def _settle(out_dir: Path) -> None:
    staging, previous = _beside(out_dir)
    if previous.exists() and not out_dir.exists():  # killed between the two renames: the old one is whole
        os.replace(previous, out_dir)
    shutil.rmtree(previous, ignore_errors=True)
    shutil.rmtree(staging, ignore_errors=True)  # never swapped in: maybe half written

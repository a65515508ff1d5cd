"""Weights into a running vLLM engine without a checkpoint: the trainer packs the policy's tensors
into one block of shared memory (a 0600 file on /dev/shm) and names it to the engine; the engine's
worker (`WeightSyncWorker`, which vLLM mixes into its worker class: `worker_extension_cls`) loads
them in place with vLLM's own in-place reload. No safetensors file is written or read, no pickle
crosses the process boundary (the block's layout is plain names, dtypes and offsets), and the
block is gone when the call returns.

Both sides of the format live here, so the writer and the reader cannot drift apart."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import torch

WORKER_EXTENSION = f"{__name__}.WeightSyncWorker"
_ALIGN = 64  # every tensor starts on a 64-byte boundary: any dtype's view of it is aligned
_SHM = Path("/dev/shm")

# One tensor in a block: [name, dtype ("bfloat16"), shape, byte offset, byte length].
Layout = list[list]


def _block_dir() -> Path:
    return _SHM if _SHM.is_dir() else Path(tempfile.gettempdir())


def layout_of(state: dict[str, torch.Tensor]) -> tuple[Layout, int]:
    """Where each tensor goes in a block, and the block's size in bytes."""
    layout, offset = [], 0
    for name, t in state.items():
        nbytes = t.numel() * t.element_size()
        layout.append([name, str(t.dtype).removeprefix("torch."), list(t.shape), offset, nbytes])
        offset += -(-nbytes // _ALIGN) * _ALIGN
    return layout, offset


@contextlib.contextmanager
def shared_block(state: dict[str, torch.Tensor]) -> Iterator[tuple[str, Layout]]:
    """The tensors copied into a new shared-memory block: (its path, its layout), removed after."""
    layout, size = layout_of(state)
    where = _block_dir()
    free = shutil.disk_usage(where).free
    if size > free:
        # Writing past a tmpfs's size kills the writer with SIGBUS, so refuse first.
        raise RuntimeError(
            f"the policy's weights need {size / 2**30:.2f} GiB of shared memory and {where} has "
            f"{free / 2**30:.2f} GiB free: enlarge it (docker: --shm-size) or set "
            "train.ppo.weight_sync=checkpoint"
        )
    fd, path = tempfile.mkstemp(prefix="alignloop-weights-", dir=where)  # mode 0600
    try:
        os.ftruncate(fd, max(size, 1))
        block = torch.from_file(path, shared=True, size=max(size, 1), dtype=torch.uint8)
        for (_, _, _, offset, nbytes), t in zip(layout, state.values(), strict=True):
            block[offset : offset + nbytes].copy_(t.detach().contiguous().view(-1).view(torch.uint8))
        del block
        yield path, layout
    finally:
        os.close(fd)
        os.unlink(path)


def read_block(path: str, layout: Layout) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) for each tensor of a block, as views of the shared memory (no copy)."""
    size = max((offset + nbytes for *_, offset, nbytes in layout), default=1)
    block = torch.from_file(path, shared=True, size=max(size, 1), dtype=torch.uint8)
    for name, dtype, shape, offset, nbytes in layout:
        yield name, block[offset : offset + nbytes].view(getattr(torch, dtype)).view(shape)


class WeightSyncWorker:
    """Mixed into vLLM's worker: the methods the trainer calls with `collective_rpc`."""

    def load_shared_weights(self, path: str, layout: Layout) -> int:
        """Load the block's tensors (checkpoint names) into this worker's model in place; returns
        how many tensors it read."""
        self.model_runner.reload_weights(weights_iterator=read_block(path, layout))  # type: ignore[attr-defined]
        return len(layout)

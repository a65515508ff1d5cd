"""Weights into a running vLLM engine without a checkpoint: the trainer copies the policy's tensors
into a block of shared memory (`SharedBlock`) and names it to the engine; the engine's worker
(`WeightSyncWorker`, which vLLM mixes into its worker class: `worker_extension_cls`) loads them in
place with vLLM's own in-place reload, reading views of the block. No safetensors file is written or
read, and no pickle crosses the process boundary (the block's layout is plain names, dtypes, shapes
and offsets).

Both sides of the format live here, so the writer and the reader cannot drift apart."""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import torch

WORKER_EXTENSION = f"{__name__}.WeightSyncWorker"
_ALIGN = 64  # every tensor starts on a 64-byte boundary: any dtype's view of it is aligned
_SHM = Path("/dev/shm")

# One tensor in a block: [name, dtype ("bfloat16"), shape, byte offset, byte length].
Layout = list[list]


def layout_of(state: dict[str, torch.Tensor]) -> tuple[Layout, int]:
    """Where each tensor goes in a block, and the block's size in bytes."""
    layout, offset = [], 0
    for name, t in state.items():
        nbytes = t.numel() * t.element_size()
        layout.append([name, str(t.dtype).removeprefix("torch."), list(t.shape), offset, nbytes])
        offset += -(-nbytes // _ALIGN) * _ALIGN
    return layout, max(offset, 1)


class SharedBlock:
    """The trainer's side: one block of shared memory, written with the policy's tensors at each
    sync and kept between syncs, so its pages stay mapped in both processes and a sync costs two
    memory copies (into the block, out of it into the engine's weights); a new block when the
    weights' layout changes.

    The block is an anonymous memory file (memfd): nothing is left behind if the trainer dies, and
    it is not bounded by /dev/shm's size. The worker opens it through /proc/<pid>/fd/<fd>, which
    only processes of the same user may. Without memfd (not Linux), a 0600 file on /dev/shm."""

    def __init__(self) -> None:
        self.path = ""
        self.block_id = ""
        self._size = 0
        self._fd: int | None = None
        self._file: str | None = None  # the fallback file, removed by close()
        self._tensor: torch.Tensor | None = None

    def write(self, state: dict[str, torch.Tensor]) -> tuple[str, str, Layout]:
        """Copy the tensors into the block: (its path, its id, its layout) for the worker."""
        layout, size = layout_of(state)
        if size != self._size:
            self._open(size)
        assert self._tensor is not None
        for (_, _, _, offset, nbytes), t in zip(layout, state.values(), strict=True):
            self._tensor[offset : offset + nbytes].copy_(t.detach().contiguous().view(-1).view(torch.uint8))
        return self.path, self.block_id, layout

    def _open(self, size: int) -> None:
        self.close()
        if hasattr(os, "memfd_create"):
            self._fd = os.memfd_create("alignloop-weights", os.MFD_CLOEXEC)
            self.path = f"/proc/{os.getpid()}/fd/{self._fd}"
        else:
            where = _SHM if _SHM.is_dir() else Path(tempfile.gettempdir())
            free = shutil.disk_usage(where).free
            if size > free:  # writing past a tmpfs's size kills the writer with SIGBUS: refuse first
                raise RuntimeError(
                    f"the policy's weights need {size / 2**30:.2f} GiB of shared memory and {where} has "
                    f"{free / 2**30:.2f} GiB free: enlarge it or set train.ppo.weight_sync=checkpoint"
                )
            self._fd, self._file = tempfile.mkstemp(prefix="alignloop-weights-", dir=where)  # mode 0600
            self.path = self._file
        os.ftruncate(self._fd, size)
        self._tensor = torch.from_file(self.path, shared=True, size=size, dtype=torch.uint8)
        self._size, self.block_id = size, uuid.uuid4().hex

    def close(self) -> None:
        """Release the block (the memory goes once the worker has dropped its mapping too)."""
        self._tensor, self._size = None, 0
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self._file is not None:
            os.unlink(self._file)
            self._file = None


def views(block: torch.Tensor, layout: Layout) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) for each tensor of a mapped block (bytes), as views of it: no copy."""
    for name, dtype, shape, offset, nbytes in layout:
        yield name, block[offset : offset + nbytes].view(getattr(torch, dtype)).view(shape)


def block_size(layout: Layout) -> int:
    """The bytes a reader maps to see every tensor of the layout."""
    return max((offset + nbytes for *_, offset, nbytes in layout), default=1)


class WeightSyncWorker:
    """Mixed into vLLM's worker: the methods the trainer calls with `collective_rpc`."""

    def load_shared_weights(self, path: str, block_id: str, layout: Layout) -> int:
        """Load the block's tensors (checkpoint names) into this worker's model in place; returns
        how many tensors it read. The block stays mapped for the next sync until its id changes."""
        mapped = getattr(self, "_weight_block", None)
        if mapped is None or mapped[0] != block_id:
            self._weight_block = (block_id, None)  # drop the old mapping first
            block = torch.from_file(path, shared=True, size=block_size(layout), dtype=torch.uint8)
            self._weight_block = (block_id, block)
        self.model_runner.reload_weights(weights_iterator=views(self._weight_block[1], layout))  # type: ignore[attr-defined]
        return len(layout)

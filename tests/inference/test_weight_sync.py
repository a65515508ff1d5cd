"""The shared block that carries whole weights to a rollout engine: what the trainer writes is what
a reader of the block gets, and the block is kept while the layout stays the same."""

import torch

from inference.weight_sync import SharedBlock, block_size, views


def read(path: str, layout: list[list]) -> dict[str, torch.Tensor]:
    """The block's tensors as another process maps them (the worker's reading, without vLLM)."""
    block = torch.from_file(path, shared=True, size=block_size(layout), dtype=torch.uint8)
    return {name: t.clone() for name, t in views(block, layout)}


def test_the_block_carries_the_weights_and_is_kept_while_the_layout_is_the_same():
    state = {"embed.weight": torch.randn(7, 5), "norm.weight": torch.randn(5).to(torch.bfloat16)}
    block = SharedBlock()
    try:
        path, first_id, layout = block.write(state)
        got = read(path, layout)
        assert got.keys() == state.keys() and all(torch.equal(got[k], v) for k, v in state.items())

        changed = {k: v + 1 for k, v in state.items()}
        path, same_id, layout = block.write(changed)  # the next iteration's weights, same layout
        assert same_id == first_id
        assert all(torch.equal(read(path, layout)[k], v) for k, v in changed.items())

        grown = {**changed, "head.weight": torch.randn(3, 5)}
        _, new_id, _ = block.write(grown)
        assert new_id != first_id  # a new block for a new layout: a reader must not keep the old one
    finally:
        block.close()

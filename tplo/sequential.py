"""Block-by-block execution of a model on calibration batches (DESIGN 3.1).

`record_block_calls` runs the model once with every block replaced by an identity recorder, which
captures the exact positional and keyword arguments each block receives (attention masks, rotary
embeddings, cache positions, per-layer sliding-window masks: whatever this transformers version
passes). Blocks can then be run one at a time on those arguments, so only one block has to sit on
the compute device.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from tplo.blocks import UnsupportedModelError


@dataclass
class BlockCall:
    """The arguments one block received for one batch, besides its hidden states."""

    args: tuple[Any, ...]
    kwargs: dict[str, Any]


@dataclass(frozen=True)
class BlockOutput:
    """What a block returns: its hidden states alone (`is_tuple` False), or a tuple `(hidden, *extras)`."""

    is_tuple: bool
    extras: tuple = ()

    def wrap(self, hidden: torch.Tensor) -> torch.Tensor | tuple:
        return (hidden, *self.extras) if self.is_tuple else hidden


@dataclass
class Recording:
    """Block-0 hidden states per batch ([B, T, H] each) and every block's arguments per batch."""

    hidden: list[torch.Tensor]
    calls: list[list[BlockCall]]
    token_masks: list[torch.Tensor]
    output: BlockOutput


def _split_hidden(args: tuple, kwargs: dict) -> tuple[torch.Tensor, tuple, dict]:
    if args:
        return args[0], args[1:], kwargs
    kwargs = dict(kwargs)
    return kwargs.pop("hidden_states"), args, kwargs


@torch.no_grad()
def record_block_calls(model: nn.Module, blocks: nn.ModuleList, batches: Sequence[Mapping[str, torch.Tensor]],
                       device: torch.device, output: BlockOutput | None = None) -> Recording:
    """Run `model` over `batches` with identity blocks and record what every block receives.

    What blocks return (a tensor, or a tuple with extras such as attention weights) is learnt by running
    block 0 once, unless given. Raises `UnsupportedModelError` when running blocks one after another cannot
    reproduce the model: a block that runs more than once per forward pass (weights shared across layers,
    as in ALBERT), or hidden states changed between two blocks (as by DeBERTa-v2's convolution after block 0).
    Each block's own `forward` attribute (e.g. accelerate's dispatch wrapper) is restored exactly afterwards.
    """
    calls: list[list[BlockCall]] = [[] for _ in blocks]
    hidden: list[torch.Tensor] = []
    learnt = [] if output is None else [output]
    passed: list[torch.Tensor | None] = [None]
    ran: set[int] = set()  # blocks that ran in the current batch
    first = blocks[0]

    def recorder(index: int, original):
        def forward(*args, **kwargs):
            h, rest, kw = _split_hidden(args, kwargs)
            if index in ran:
                raise UnsupportedModelError(
                    f"block {index} of {type(model).__name__} runs more than once in one forward pass: its weights "
                    "are shared across layers (as in ALBERT), so it cannot be pruned to one sparsity per layer. "
                    "tplo supports models whose blocks each run once (set `blocks:` if another list holds them).")
            if index > 0 and h is not passed[0] and not torch.equal(h, passed[0]):
                raise UnsupportedModelError(
                    f"{type(model).__name__} changes the hidden states between block {index - 1} and block {index} "
                    "(e.g. DeBERTa-v2's convolution after its first block), so its blocks cannot be run one after "
                    "another; tplo supports models whose blocks pass their outputs straight on.")
            ran.add(index)
            calls[index].append(BlockCall(rest, kw))
            if index == 0:
                hidden.append(h)
                if not learnt:
                    with on_device(first, device):
                        out = original(*args, **kwargs)
                    learnt.append(BlockOutput(True, tuple(out[1:])) if isinstance(out, tuple) else BlockOutput(False))
            passed[0] = h
            return learnt[0].wrap(h)
        return forward

    own = [block.__dict__.get("forward", _NONE) for block in blocks]
    originals = [b.forward for b in blocks]
    for i, block in enumerate(blocks):
        block.forward = recorder(i, originals[i])
    token_masks = []
    try:
        runner = getattr(model, "base_model", model)
        for batch in batches:
            ids = batch["input_ids"].to(device)
            mask = batch.get("attention_mask")
            mask = torch.ones_like(ids) if mask is None else mask.to(device)
            token_masks.append(mask.bool())
            ran.clear()
            runner(input_ids=ids, attention_mask=mask, use_cache=False)
    finally:
        for block, forward in zip(blocks, own):
            if forward is _NONE:
                del block.forward
            else:
                block.forward = forward
    return Recording(hidden, calls, token_masks, learnt[0] if learnt else BlockOutput(False))


_NONE = object()


def run_block(block: nn.Module, hidden: torch.Tensor, call: BlockCall) -> torch.Tensor:
    """One block on recorded arguments; returns its hidden states [B, T, H]."""
    out = block(hidden, *call.args, **call.kwargs)
    return out[0] if isinstance(out, tuple) else out


@contextmanager
def on_device(module: nn.Module, device: torch.device) -> Iterator[None]:
    """Move `module` to `device` for the duration of the block, then back where it was; a module dispatched by
    accelerate stays where its hooks put it."""
    if any(hasattr(m, "_hf_hook") for m in module.modules()):
        yield
        return
    home = next(module.parameters()).device
    module.to(device)
    try:
        yield
    finally:
        module.to(home)

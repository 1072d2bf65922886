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


@dataclass
class BlockCall:
    """The arguments one block received for one batch, besides its hidden states."""

    args: tuple[Any, ...]
    kwargs: dict[str, Any]


@dataclass
class Recording:
    """Block-0 hidden states per batch ([B, T, H] each) and every block's arguments per batch."""

    hidden: list[torch.Tensor]
    calls: list[list[BlockCall]]
    token_masks: list[torch.Tensor]
    returns_tuple: bool


def _split_hidden(args: tuple, kwargs: dict) -> tuple[torch.Tensor, tuple, dict]:
    if args:
        return args[0], args[1:], kwargs
    kwargs = dict(kwargs)
    return kwargs.pop("hidden_states"), args, kwargs


@torch.no_grad()
def record_block_calls(model: nn.Module, blocks: nn.ModuleList, batches: Sequence[Mapping[str, torch.Tensor]],
                       device: torch.device, returns_tuple: bool | None = None) -> Recording:
    """Run `model` over `batches` with identity blocks and record what every block receives.

    Whether blocks return a tuple or a tensor is learnt by running block 0 once, unless given.
    """
    calls: list[list[BlockCall]] = [[] for _ in blocks]
    hidden: list[torch.Tensor] = []
    returns_tuple = [] if returns_tuple is None else [returns_tuple]
    first = blocks[0]

    def recorder(index: int, original):
        def forward(*args, **kwargs):
            h, rest, kw = _split_hidden(args, kwargs)
            calls[index].append(BlockCall(rest, kw))
            if index == 0:
                hidden.append(h)
                if not returns_tuple:
                    with on_device(first, device):
                        returns_tuple.append(isinstance(original(*args, **kwargs), tuple))
            return (h,) if returns_tuple[0] else h
        return forward

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
            runner(input_ids=ids, attention_mask=mask, use_cache=False)
    finally:
        for block in blocks:
            del block.forward
    return Recording(hidden, calls, token_masks, returns_tuple[0] if returns_tuple else False)


def run_block(block: nn.Module, hidden: torch.Tensor, call: BlockCall) -> torch.Tensor:
    """One block on recorded arguments; returns its hidden states [B, T, H]."""
    out = block(hidden, *call.args, **call.kwargs)
    return out[0] if isinstance(out, tuple) else out


@contextmanager
def on_device(module: nn.Module, device: torch.device) -> Iterator[None]:
    """Move `module` to `device` for the duration of the block, then back where it was."""
    home = next(module.parameters()).device
    module.to(device)
    try:
        yield
    finally:
        module.to(home)


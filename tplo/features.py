"""Per-layer statement features: the hidden state after every block, pooled over tokens."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Literal

import torch
from torch import nn

from tplo.blocks import find_blocks, is_encoder

Pooling = Literal["auto", "last", "mean"]


def resolve_pooling(model: nn.Module, pooling: Pooling = "auto") -> Literal["last", "mean"]:
    """`auto` is mean pooling for encoders and the last non-padding token for causal models."""
    if pooling == "auto":
        return "mean" if is_encoder(model) else "last"
    if pooling not in ("last", "mean"):
        raise ValueError(f"pooling must be 'auto', 'last' or 'mean', got {pooling!r}")
    return pooling


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor | None, pooling: Literal["last", "mean"]) -> torch.Tensor:
    """Pool token states [B, T, H] to [B, H] in fp32, ignoring padding (left or right padded)."""
    hidden = hidden.float()
    if attention_mask is None:
        return hidden[:, -1] if pooling == "last" else hidden.mean(1)
    mask = attention_mask.to(hidden.device, torch.bool)
    if pooling == "mean":
        weights = mask.unsqueeze(-1).float()
        return (hidden * weights).sum(1) / weights.sum(1).clamp_min(1.0)
    positions = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
    last = torch.where(mask, positions, -1).amax(1).clamp_min(0)
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]


def pooled_layer_states(model: nn.Module, batch: Mapping[str, torch.Tensor], pooling: Pooling = "auto",
                        blocks: str | None = None) -> torch.Tensor:
    """Pooled hidden states of every layer for one batch, [B, L + 1, H] fp32 on the model's device.

    Layer 0 is the input of the first block (the embedding output), layer l the output of block l-1;
    all layers come from one forward pass of the base model (a causal LM's head, which computes
    vocabulary-sized logits, is skipped). Gradients flow when autograd is on (for fine-tuning losses on
    the features). `batch` holds `input_ids` and `attention_mask`.
    """
    _, block_list = find_blocks(model, blocks)
    mode = resolve_pooling(model, pooling)
    device = next(model.parameters()).device
    states: list[torch.Tensor] = []

    def grab_input(_module, args, kwargs):
        states.append(args[0] if args else kwargs["hidden_states"])

    def grab_output(_module, _args, output):
        states.append(output[0] if isinstance(output, tuple) else output)

    handles = [block_list[0].register_forward_pre_hook(grab_input, with_kwargs=True)]
    handles += [b.register_forward_hook(grab_output) for b in block_list]
    mask = batch.get("attention_mask")
    try:
        getattr(model, "base_model", model)(input_ids=batch["input_ids"].to(device),
                                            attention_mask=None if mask is None else mask.to(device), use_cache=False)
    finally:
        for h in handles:
            h.remove()
    return torch.stack([pool(h, mask, mode) for h in states], 1)


@torch.no_grad()
def extract_features(
    model: nn.Module,
    batches: Iterable[Mapping[str, torch.Tensor]],
    pooling: Pooling = "auto",
    blocks: str | None = None,
) -> torch.Tensor:
    """`pooled_layer_states` of every batch, concatenated: [N, L + 1, H] fp32 on CPU."""
    return torch.cat([pooled_layer_states(model, batch, pooling, blocks).cpu() for batch in batches])

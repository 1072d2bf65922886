"""Pruning masks as bool buffers on the linear layers (DESIGN 3.6)."""

from __future__ import annotations

import torch
from torch import nn

from tplo.blocks import stored_weight, stores_transposed

MASK = "weight_mask"


def row_mask(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Keep-mask [d_out, d_in] that zeroes the floor(d_in * sparsity) lowest scores of every row.

    Among equal scores the lowest input index is pruned first (a stable sort, as the reference code does).
    """
    n_prune = int(scores.shape[1] * sparsity)
    mask = torch.ones_like(scores, dtype=torch.bool)
    if n_prune > 0:
        mask.scatter_(1, lowest_first(scores, n_prune), False)
    return mask


def lowest_first(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices [d_out, k] of the k lowest fp32 scores of every row, equal scores by lowest index first.

    Exactly a stable sort's first k, computed as a selection (about 4x faster than sorting): each score's
    bits, mapped to an integer of the same order, become the high half of an int64 key whose low half is
    the column index, so every key is distinct and ordered as (score, index).
    """
    bits = (scores.float() + 0.0).contiguous().view(torch.int32)  # + 0.0 turns -0.0 into 0.0, equal as numbers
    ordered = (bits ^ ((bits >> 31) & 0x7FFFFFFF)).to(torch.int64)  # order-preserving for negative floats too
    columns = torch.arange(scores.shape[1], device=scores.device, dtype=torch.int64)
    return torch.topk((ordered << 32) | columns, k, dim=1, largest=False, sorted=False).indices


def nm_mask(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Keep-mask [d_out, d_in] keeping the n highest scores in every group of m consecutive inputs.

    Among equal scores in a group the lowest input index is pruned first.
    """
    d_out, d_in = scores.shape
    if d_in % m:
        raise ValueError(f"{n}:{m} sparsity needs d_in divisible by {m}, got d_in={d_in}.")
    groups = scores.reshape(d_out, d_in // m, m)
    lowest = torch.sort(groups, dim=2, stable=True).indices[..., : m - n]
    return torch.ones_like(groups, dtype=torch.bool).scatter_(2, lowest, False).reshape(d_out, d_in)


def set_mask(module: nn.Module, keep_rows: torch.Tensor) -> None:
    """Store keep-mask [d_out, d_in] as the module's bool buffer (in the weight's own layout) and zero
    the masked weights in place."""
    weight = stored_weight(module)
    mask = keep_rows.to(weight.device)
    mask = (mask.t() if stores_transposed(module) else mask).contiguous()
    module.register_buffer(MASK, mask, persistent=False)
    with torch.no_grad():
        weight.masked_fill_(~mask, 0)


def masked_modules(model: nn.Module) -> dict[str, nn.Module]:
    """Every module that carries a pruning mask, by qualified name."""
    return {name: mod for name, mod in model.named_modules() if getattr(mod, MASK, None) is not None}


@torch.no_grad()
def apply_masks(model: nn.Module) -> None:
    """Re-zero every masked weight in place (after an optimizer step, say)."""
    for mod in masked_modules(model).values():
        mod.weight.masked_fill_(~getattr(mod, MASK), 0)


def mask_gradients(model: nn.Module) -> None:
    """Zero the gradients of masked weights so optimizers see no update direction for them."""
    for mod in masked_modules(model).values():
        if mod.weight.grad is not None:
            mod.weight.grad.masked_fill_(~getattr(mod, MASK), 0)


def collect_masks(model: nn.Module) -> dict[str, torch.Tensor]:
    """Module name -> bool keep-mask (weight layout), for checkpoints."""
    return {name: getattr(mod, MASK) for name, mod in masked_modules(model).items()}


def load_masks(model: nn.Module, masks: dict[str, torch.Tensor]) -> None:
    """Register saved masks on `model` and zero the masked weights."""
    modules = dict(model.named_modules())
    missing = [name for name in masks if name not in modules]
    if missing:
        raise KeyError(f"masks name modules the model does not have: {missing[:3]}; was the model changed?")
    for name, mask in masks.items():
        mod = modules[name]
        if mask.shape != mod.weight.shape:
            raise ValueError(f"mask for {name} has shape {tuple(mask.shape)}, weight has {tuple(mod.weight.shape)}.")
        mask = mask.to(torch.bool)
        set_mask(mod, mask.t() if stores_transposed(mod) else mask)


def drop_masks(model: nn.Module) -> None:
    """Remove the mask buffers (the zeroed weights stay): for a backbone whose weights no longer change."""
    for module in masked_modules(model).values():
        delattr(module, MASK)


def model_sparsity(model: nn.Module, names: list[str] | None = None) -> float:
    """Fraction of zeros over the weights of the named modules (default: every masked module; 0.0 for none)."""
    mods = list(masked_modules(model).values()) if names is None else [model.get_submodule(n) for n in names]
    total = sum(m.weight.numel() for m in mods)
    zeros = sum(int((stored_weight(m) == 0).sum()) for m in mods)
    return zeros / total if total else 0.0

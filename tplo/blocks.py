"""Find the repeated transformer blocks of a model and the linear layers inside them."""

from __future__ import annotations

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

PRUNABLE_TYPES = (nn.Linear, Conv1D)
ENCODER_MODEL_TYPES = {
    "bert", "roberta", "xlm-roberta", "distilbert", "electra", "albert", "mpnet", "deberta",
    "deberta-v2", "camembert", "ernie", "modernbert",
}


class UnsupportedModelError(ValueError):
    """The model has no recognisable list of transformer blocks."""


def get_submodule(model: nn.Module, path: str) -> nn.Module:
    """`model.get_submodule` with an error that lists what is there instead."""
    try:
        return model.get_submodule(path)
    except AttributeError:
        raise UnsupportedModelError(
            f"blocks={path!r} does not name a submodule of {type(model).__name__}. "
            f"Candidates: {', '.join(_describe(c) for c in _module_lists(model)) or 'none'}."
        ) from None


def find_blocks(model: nn.Module, path: str | None = None) -> tuple[str, nn.ModuleList]:
    """The model's list of repeated blocks, found automatically or at attribute `path`.

    Automatic search picks the largest `nn.ModuleList` whose children all have the same class and
    each hold at least one prunable linear (Llama `model.layers`, GPT-2 `transformer.h`, BERT
    `encoder.layer`, ...).
    """
    if path is not None:
        blocks = get_submodule(model, path)
        if not isinstance(blocks, nn.ModuleList) or not all(prunable_linears(b) for b in blocks):
            raise UnsupportedModelError(
                f"blocks={path!r} is a {type(blocks).__name__}, not a ModuleList of blocks with linear "
                "layers. Name the ModuleList that holds the transformer blocks, e.g. blocks='model.layers'."
            )
        return path, blocks
    candidates = [
        (name, mod) for name, mod in _module_lists(model)
        if len({type(b) for b in mod}) == 1 and all(prunable_linears(b) for b in mod)
    ]
    if not candidates:
        found = ", ".join(_describe(c) for c in _module_lists(model)) or "no nn.ModuleList at all"
        raise UnsupportedModelError(
            f"Could not find the transformer blocks of {type(model).__name__}: found {found}. "
            "Pass the attribute path of the ModuleList that holds the blocks, e.g. blocks='model.layers' "
            "(PruneConfig.blocks, or `blocks:` in the YAML config)."
        )
    return max(candidates, key=lambda c: sum(p.numel() for p in c[1].parameters()))


def prunable_linears(block: nn.Module) -> dict[str, nn.Module]:
    """Every `nn.Linear` (and GPT-2 `Conv1D`) inside `block`, by qualified name, in definition order."""
    return {name: mod for name, mod in block.named_modules() if isinstance(mod, PRUNABLE_TYPES)}


def stores_transposed(module: nn.Module) -> bool:
    """GPT-2's `Conv1D` stores its weight as [d_in, d_out], unlike `nn.Linear`."""
    return isinstance(module, Conv1D)


def stored_weight(module: nn.Module) -> torch.Tensor:
    """The tensor that holds a linear's weight: its parameter, or, where accelerate offloads the module (the
    parameter is on the meta device and loaded for each forward), the tensor in its hook's weights map, so
    that pruning reads and writes the weights the forward passes will use."""
    weight = module.weight
    if weight.device.type != "meta":
        return weight
    weights_map = getattr(getattr(module, "_hf_hook", None), "weights_map", None)
    if weights_map is None:
        raise UnsupportedModelError(f"the weight of {type(module).__name__} is on the meta device and no accelerate "
                                    "hook holds it; load the model with real weights (no init_empty_weights).")
    stored = weights_map["weight"]
    if stored is not weights_map["weight"]:
        raise UnsupportedModelError(
            "this model's weights are offloaded to disk by accelerate, where pruning cannot change them in place; "
            "offload to CPU memory instead (device_map without 'disk', or a max_memory that fits the CPU), or use "
            "tplo's own offload: true with the model on the CPU.")
    return stored


def weight_rows(module: nn.Module) -> torch.Tensor:
    """The stored weight as a [d_out, d_in] view sharing storage."""
    weight = stored_weight(module)
    return weight.t() if stores_transposed(module) else weight


def is_encoder_config(config: object) -> bool:
    """True for the config of a bidirectional encoder (BERT family)."""
    return getattr(config, "model_type", None) in ENCODER_MODEL_TYPES and not getattr(config, "is_decoder", False)


def is_encoder(model: nn.Module) -> bool:
    """True for bidirectional encoders (BERT family), whose statements are mean-pooled."""
    return is_encoder_config(getattr(model, "config", None))


def _module_lists(model: nn.Module) -> list[tuple[str, nn.ModuleList]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, nn.ModuleList) and len(m) > 0]


def _describe(candidate: tuple[str, nn.ModuleList]) -> str:
    name, mod = candidate
    kinds = sorted({type(b).__name__ for b in mod})
    return f"{name} ({len(mod)} x {'/'.join(kinds)})"

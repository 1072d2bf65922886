"""Truth-feature distillation: a fine-tuning loss that pulls a pruned model's pooled statement features back to
the dense model's, at every layer.

With features f_l (pruned) and d_l (dense, recorded once before pruning) of a statement at layer l, and
s_l the dense features' mean squared norm over the training statements,

    loss = mean over statements and layers of ||f_l - d_l||^2 / s_l,

a relative squared error, so every layer weighs the same whatever its scale (the variance around the layer
mean would not do: the last token of most statements is ".", whose embedding is the same for all). The probes
read exactly these features, and the dense model's are what its truth directions live in; restoring them
restores what lie detection reads.
"""

from __future__ import annotations

import torch

EPS = 1e-12


def feature_scales(dense: torch.Tensor) -> torch.Tensor:
    """s_l: mean over statements of ||d_l||^2, for dense features [N, L + 1, H]; returns [L + 1]."""
    return dense.double().pow(2).sum(-1).mean(0).clamp_min(EPS).float()


def distillation_loss(pruned: torch.Tensor, dense: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """Mean over statements and layers of ||f_l - d_l||^2 / s_l; pruned, dense [B, L + 1, H], scales [L + 1]."""
    return ((pruned - dense).pow(2).sum(-1) / scales).mean()

"""Per-block sparsity allocations (DESIGN 3.5): uniform, OWL, SWL, TPLO and TPLO-blend, and truth-prefix.

All functions take 1-D tensors over the L blocks and return per-block densities or sparsities.
"""

from __future__ import annotations

import torch

from tplo.config import PruneConfig, check_pivot


def owl_ratios(outlier_ratio: torch.Tensor, owl_lambda: float) -> torch.Tensor:
    """OWL's r_l = (D_l - min D) / (max D - min D) * 2 * lambda, [L]; zeros when all D_l are equal."""
    d = outlier_ratio.double()
    span = d.max() - d.min()
    if span == 0:
        return torch.zeros_like(d)
    return (d - d.min()) / span * 2 * owl_lambda


def owl_densities(outlier_ratio: torch.Tensor, sparsity: float, owl_lambda: float) -> torch.Tensor:
    """rho_owl_l = r_l - mean(r) + (1 - S), [L]."""
    r = owl_ratios(outlier_ratio, owl_lambda)
    return r - r.mean() + (1 - sparsity)


def swl_densities(truth_separation: torch.Tensor, sparsity: float, beta: float) -> torch.Tensor:
    """rho_swl_l = (1 - S) + beta * L * (p_l - 1/L), [L]."""
    p = truth_separation.double()
    n = p.numel()
    return (1 - sparsity) + beta * n * (p - 1 / n)


def resolve_pivot(truth_separation: torch.Tensor, pivot: int | str) -> int:
    """`auto` = max(0, argmax(p) - 2); an integer must name a block."""
    if pivot == "auto":
        return max(0, int(truth_separation.argmax()) - 2)
    check_pivot(pivot, truth_separation.numel())
    return int(pivot)


def tplo_densities(outlier_ratio: torch.Tensor, truth_separation: torch.Tensor, sparsity: float,
                   owl_lambda: float, beta: float, pivot: int) -> torch.Tensor:
    """OWL densities before `pivot`, SWL densities from it on, shifted to mean 1 - S, [L]."""
    owl = owl_densities(outlier_ratio, sparsity, owl_lambda)
    swl = swl_densities(truth_separation, sparsity, beta)
    spliced = torch.cat([owl[:pivot], swl[pivot:]])
    return spliced - spliced.mean() + (1 - sparsity)


def blend_densities(outlier_ratio: torch.Tensor, truth_separation: torch.Tensor, sparsity: float,
                    owl_lambda: float, beta: float) -> torch.Tensor:
    """Both signals in every block: (1 - S) + (r_l - mean r) + beta * L * (p_l - 1/L), re-centred, [L]."""
    r = owl_ratios(outlier_ratio, owl_lambda)
    rho = (r - r.mean()) + swl_densities(truth_separation, sparsity, beta)
    return rho - rho.mean() + (1 - sparsity)


def truth_prefix_densities(outlier_ratio: torch.Tensor, truth_separation: torch.Tensor, sparsity: float,
                           owl_lambda: float, shift: float) -> torch.Tensor:
    """Protect the blocks that build the truth features, [L].

    With k = argmax(p) the block of peak truth separation (a probe at its output reads nothing computed later),
    rho_l = (1 - S) + shift for l <= k, (1 - S) - shift * (k + 1) / (L - k - 1) for l > k (the same total
    density moved from after the peak to before it), plus OWL's r_l - mean(r) as a modulation."""
    n, k = truth_separation.numel(), int(truth_separation.argmax())
    step = torch.full((n,), -shift * (k + 1) / max(1, n - k - 1), dtype=torch.float64)
    step[: k + 1] = shift
    r = owl_ratios(outlier_ratio, owl_lambda)
    return (1 - sparsity) + step + (r - r.mean())


def fit_global_sparsity(sparsities: torch.Tensor, params: torch.Tensor, sparsity: float,
                        s_min: float = 0.0, s_max: float = 0.99) -> torch.Tensor:
    """Clip to [s_min, s_max] and shift all blocks by one constant so that the parameter-weighted
    sparsity sum(params * s) / sum(params) equals `sparsity` exactly, [L] float64."""
    s = sparsities.double()
    w = params.double() / params.double().sum()

    def clipped(shift: float) -> torch.Tensor:
        return (s + shift).clamp(s_min, s_max)

    lo, hi = s_min - float(s.max()) - 1.0, s_max - float(s.min()) + 1.0
    for _ in range(200):
        mid = (lo + hi) / 2
        if float((w * clipped(mid)).sum()) < sparsity:
            lo = mid
        else:
            hi = mid
    return clipped((lo + hi) / 2)


def allocate(config: PruneConfig, params: torch.Tensor, outlier_ratio: torch.Tensor | None,
             truth_separation: torch.Tensor | None) -> tuple[torch.Tensor, int | None]:
    """Per-block target sparsities [L] for `config.method` (or `config.block_sparsities`), and the resolved TPLO
    pivot (else None)."""
    s, n = config.sparsity, params.numel()
    if config.nm is not None or (config.method == "uniform" and config.block_sparsities is None):
        return torch.full((n,), s, dtype=torch.float64), None
    if config.block_sparsities is not None:
        given = torch.tensor(config.block_sparsities, dtype=torch.float64)
        return fit_global_sparsity(given, params, s, config.s_min, config.s_max), None
    pivot = None
    if config.method == "owl":
        density = owl_densities(outlier_ratio, s, config.owl_lambda)
    elif config.method == "swl":
        density = swl_densities(truth_separation, s, config.beta)
    elif config.method == "tplo":
        pivot = resolve_pivot(truth_separation, config.pivot)
        density = tplo_densities(outlier_ratio, truth_separation, s, config.owl_lambda, config.beta, pivot)
    elif config.method == "tplo_blend":
        density = blend_densities(outlier_ratio, truth_separation, s, config.owl_lambda, config.beta)
    else:
        density = truth_prefix_densities(outlier_ratio, truth_separation, s, config.owl_lambda, config.prefix_shift)
    return fit_global_sparsity(1 - density, params, s, config.s_min, config.s_max), pivot

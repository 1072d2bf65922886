"""Weight importance scores and the per-block statistics computed from them (DESIGN 3.2-3.4)."""

from __future__ import annotations

import torch


def magnitude_score(weight: torch.Tensor) -> torch.Tensor:
    """|W|, [d_out, d_in] fp32."""
    return weight.detach().float().abs()


def wanda_score(weight: torch.Tensor, sq_norms: torch.Tensor) -> torch.Tensor:
    """Wanda's |W_ij| * sqrt(n_j) for weight [d_out, d_in] and input squared norms n [d_in], fp32."""
    return weight.detach().float().abs() * sq_norms.to(weight.device, torch.float32).sqrt().unsqueeze(0)


def outlier_ratio(scores: list[torch.Tensor], m: float) -> float:
    """OWL's D_l: percentage of the pooled scores of one block greater than m * their mean."""
    total = sum(s.numel() for s in scores)
    mean = sum(float(s.sum(dtype=torch.float64)) for s in scores) / total
    above = sum(int((s > m * mean).sum()) for s in scores)
    return 100.0 * above / total


def fisher_ratio(features: torch.Tensor, labels: torch.Tensor) -> float:
    """Truth separation V = B / W of pooled features [N, H] with labels [N] in {0, 1} (DESIGN 3.4).

    B = 0.5 * mean_d((mu_F - mu)^2 + (mu_T - mu)^2), W = 0.5 * (mean_d var_F + mean_d var_T),
    with per-dimension means and unbiased variances.
    """
    x = features.double()
    false, true = x[labels == 0], x[labels == 1]
    if len(false) < 2 or len(true) < 2:
        raise ValueError("the truth separation needs at least two true and two false statements per topic.")
    mu = x.mean(0)
    between = 0.5 * ((false.mean(0) - mu) ** 2 + (true.mean(0) - mu) ** 2).mean()
    within = 0.5 * (false.var(0, unbiased=True).mean() + true.var(0, unbiased=True).mean())
    if within == 0:
        raise ValueError("all true (and all false) statements have identical features; use varied statements.")
    return float(between / within)


def truth_separation(ratios: torch.Tensor) -> torch.Tensor:
    """p_l from Fisher ratios V [K topics, L blocks]: normalise over layers, average over topics, [L]."""
    v = ratios.double()
    return (v / v.sum(1, keepdim=True)).mean(0)

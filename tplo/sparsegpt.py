"""SparseGPT weight reconstruction for one linear (Frantar and Alistarh 2023, as Wanda and OWL run it)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

logger = logging.getLogger(__name__)

RETRIES = 4
"""Dampening retries after the first attempt; each multiplies percdamp by DAMP_GROWTH."""
DAMP_GROWTH = 10.0


class HessianError(ValueError):
    """The Hessian of a linear cannot be factorised, even with the largest dampening tried."""


@dataclass(frozen=True)
class SparseGPTResult:
    """weight: reconstructed fp32 [d_out, d_in], exact zeros where pruned; keep: bool [d_out, d_in], True = kept;
    percdamp: the dampening used, as a fraction of mean(diag H)."""

    weight: torch.Tensor
    keep: torch.Tensor
    percdamp: float


def sparsegpt_prune(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    sparsity: float,
    nm: tuple[int, int] | None = None,
    blocksize: int = 128,
    percdamp: float = 0.01,
    name: str = "linear",
) -> SparseGPTResult:
    """Prune weight [d_out, d_in] with Hessian H = (2/n) sum_t x_t x_t^T [d_in, d_in].

    Unstructured (nm None): every column block prunes its t = w^2 / U_jj^2 at or below the floor(numel * sparsity)-th
    smallest; sparsity 0 returns the weight unchanged. N:M (nm = (n, m), sparsity unused): every m consecutive inputs
    of a row keep n, ties pruned lowest index first. Dead inputs (H_jj = 0) get zero weights, pruned first. Runs in fp32
    on the weight's device without TF32; the arguments are not modified. If H + damp I is not positive definite, or the
    result not finite, percdamp is retried x10 up to RETRIES times (logged), then HessianError is raised.
    """
    _check_args(weight, hessian, sparsity, nm, blocksize, percdamp, name)
    w = weight.detach().to(torch.float32, copy=True)
    if nm is None and sparsity == 0:
        return SparseGPTResult(w, torch.ones_like(w, dtype=torch.bool), percdamp)
    h = hessian.detach().to(w.device, torch.float32, copy=True)
    if not torch.isfinite(h).all():
        raise HessianError(f"{name}: the Hessian has non-finite entries; check the calibration activations.")
    dead = h.diagonal() == 0
    h.diagonal()[dead] = 1
    w[:, dead] = 0
    mean_diag = float(h.diagonal().mean())
    factor = percdamp
    with _ieee_fp32_matmul():
        for attempt in range(RETRIES + 1):
            u = _inverse_factor(h, factor * mean_diag)
            if u is not None:
                pruned, keep = _sweep(w, u, sparsity, nm, blocksize)
                if torch.isfinite(pruned).all():
                    return SparseGPTResult(pruned, keep, factor)
            if attempt < RETRIES:
                logger.warning("%s: Hessian not positive definite (or too ill-conditioned) with percdamp=%g, "
                               "retrying with percdamp=%g.", name, factor, factor * DAMP_GROWTH)
                factor *= DAMP_GROWTH
    raise HessianError(
        f"{name}: the Hessian is not positive definite even with percdamp={factor:g} (x mean diagonal "
        f"{mean_diag:.3g}); use more or more varied calibration data, a higher percdamp, or float32 weights."
    )


def _check_args(weight: torch.Tensor, hessian: torch.Tensor, sparsity: float, nm: tuple[int, int] | None,
                blocksize: int, percdamp: float, name: str) -> None:
    """Raise ValueError naming `name` for shapes or settings sparsegpt_prune cannot run."""
    d_in = weight.shape[1]
    if hessian.shape != (d_in, d_in):
        raise ValueError(f"{name}: Hessian has shape {tuple(hessian.shape)}, expected ({d_in}, {d_in}).")
    if not torch.isfinite(weight).all():
        raise ValueError(f"{name}: the weight has non-finite entries.")
    if blocksize < 1 or percdamp <= 0:
        raise ValueError(f"{name}: blocksize must be >= 1 and percdamp > 0, got {blocksize} and {percdamp}.")
    if nm is None:
        if not 0 <= sparsity < 1:
            raise ValueError(f"{name}: sparsity must be in [0, 1), got {sparsity}.")
        return
    n, m = nm
    if not 0 < n <= m:
        raise ValueError(f"{name}: N:M sparsity needs 0 < N <= M, got {n}:{m}.")
    if d_in % m or blocksize % m:
        raise ValueError(f"{name}: {n}:{m} sparsity needs d_in and blocksize divisible by {m}, "
                         f"got d_in={d_in}, blocksize={blocksize}.")


@contextmanager
def _ieee_fp32_matmul() -> Iterator[None]:
    """Full fp32 CUDA matmuls (no TF32) inside the block, as the reference runs; the setting is restored after."""
    matmul = torch.backends.cuda.matmul
    saved = matmul.fp32_precision
    matmul.fp32_precision = "ieee"
    try:
        yield
    finally:
        matmul.fp32_precision = saved


def _inverse_factor(h: torch.Tensor, damp: float) -> torch.Tensor | None:
    """Upper Cholesky factor U [d_in, d_in] of (H + damp I)^-1, or None when that is not positive definite."""
    damped = h.clone()
    damped.diagonal().add_(damp)
    lower, info = torch.linalg.cholesky_ex(damped)
    if info.item():
        return None
    u, info = torch.linalg.cholesky_ex(torch.cholesky_inverse(lower), upper=True)
    if info.item() or not torch.isfinite(u).all():
        return None
    return u


def _sweep(weight: torch.Tensor, u: torch.Tensor, sparsity: float, nm: tuple[int, int] | None,
           blocksize: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Prune and update columns left to right in blocks; returns (weight, keep), both [d_out, d_in]."""
    w = weight.clone()
    prune = torch.zeros_like(w, dtype=torch.bool)
    d_in = w.shape[1]
    for i1 in range(0, d_in, blocksize):
        i2 = min(i1 + blocksize, d_in)
        w1, u1, prune1 = w[:, i1:i2], u[i1:i2, i1:i2], prune[:, i1:i2]
        d = u1.diagonal()
        err1 = torch.zeros_like(w1)
        if nm is None:
            t = (w1 / d) ** 2
            prune1.copy_(t <= torch.kthvalue(t.flatten(), int(t.numel() * sparsity) + 1).values)
        for i in range(i2 - i1):
            if nm is not None and i % nm[1] == 0:
                prune1[:, i:i + nm[1]] = _group_prune((w1[:, i:i + nm[1]] / d[i:i + nm[1]]) ** 2, nm[1] - nm[0])
            q = w1[:, i].masked_fill(prune1[:, i], 0)
            err1[:, i] = (w1[:, i] - q) / d[i]
            w1[:, i + 1:] -= torch.outer(err1[:, i], u1[i, i + 1:])
            w1[:, i] = q
        w[:, i2:] -= err1 @ u[i1:i2, i2:]
    return w, ~prune


def _group_prune(t: torch.Tensor, n_prune: int) -> torch.Tensor:
    """Bool [d_out, m] marking the n_prune smallest t of each row, lowest index first among ties."""
    lowest = torch.sort(t, dim=1, stable=True).indices[:, :n_prune]
    return torch.zeros_like(t, dtype=torch.bool).scatter_(1, lowest, True)

"""Many binary logistic regressions fitted at once in torch, with scikit-learn's objective and solver.

Fit b minimises scikit-learn's `LogisticRegression` objective (fit_intercept, sample weights `w_b`):

    sum_i w_bi * logloss(y_bi, x_i . coef_b + intercept_b) / sum_i w_bi + ||coef_b||^2 / (2 C sum_i w_bi)

with `C = inf` for no penalty (`penalty=None`); the intercept is never penalised. With `standardise`, each
fit first scales its features to zero mean and unit variance over its own weighted rows (a
`StandardScaler` fitted on the training rows), and the penalty applies to the standardised coefficients;
the returned coefficients are always in the raw feature space.

The optimiser is scipy's L-BFGS-B as scikit-learn's `lbfgs` solver calls it, which without bounds is
plain L-BFGS: memory 10, initial inverse Hessian scale s'y / y'y, start at zero, first step 1 / ||g||
then unit steps, the Moré-Thuente line search of MINPACK-2 (ftol 1e-3, gtol 0.9, xtol 0.1, at most 50
evaluations; on failure the memory is dropped and the step retried along -g), curvature pairs with
s'y <= eps * (-s'g) skipped. A fit stops after `max_iter` iterations, when the largest component of its
gradient (mean loss, intercept included) is <= `tol`, or when the loss falls by <= 64 eps relatively.
Every fit follows its own trajectory; the batch only shares the matrix products.

On separable data (fewer rows than features) the unpenalised problem has no finite optimum and the
answer is where this rule stops, so the fit matches scikit-learn by following the same path, not by
reaching a common optimum. In float64 it takes the same number of iterations and agrees to about 1e-12
relative (tests hold it to 1e-8). The matrix products run in the dtype of `x` (the curvature memory
too); float32 moves the iterates by rounding only (about 1e-6 relative), and on the 8B-shaped
benchmark (`benchmarks/lie_detection_speed.py`) every compared held-out accuracy equals
scikit-learn's. Penalised fits have a unique optimum; with a small `tol` and a large `max_iter` the
coefficients match scikit-learn's optimum to 1e-5 relative (float64, tested).

Layouts: `x` [P, d] shared by all fits (fits pick their rows through `weight`; each evaluation is two
matrix products of all P rows with the whole batch, compute-bound, which beats gathering every fit's
rows into its own matrix, memory-bound, on CPU and GPU alike) or [B, P, d] one matrix per fit;
`y` [B, P] in {0, 1}; `weight` [B, P] >= 0, 0 leaves a row out. Everything runs on the device of `x`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

MEMORY = 10
MAX_LINE_SEARCH = 50
LS_FTOL, LS_GTOL, LS_XTOL = 1e-3, 0.9, 0.1
STEP_MAX = 1e10
EPS = np.finfo(np.float64).eps
REL_REDUCTION = 64 * EPS

Objective = Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]


@dataclass(frozen=True)
class LogisticFit:
    """Fitted models: `coef` [B, d] and `intercept` [B] in raw feature space, `n_iter` [B] L-BFGS iterations."""

    coef: Tensor
    intercept: Tensor
    n_iter: Tensor

    def decision(self, x: Tensor) -> Tensor:
        """Logits [B, M] of rows x [M, d] shared by all fits, or [B, M, d] per fit."""
        w = self.coef.to(x.dtype)
        z = (x @ w.T).T if x.dim() == 2 else torch.bmm(x, w[:, :, None])[..., 0]
        return z.double() + self.intercept[:, None]

    def predict(self, x: Tensor) -> Tensor:
        """Predicted labels [B, M] in {0, 1}: 1 where the logit is positive, as scikit-learn predicts."""
        return (self.decision(x) > 0).long()

    def __getitem__(self, fits: slice | Tensor) -> LogisticFit:
        """The fits selected by a slice or an index tensor of the batch."""
        return LogisticFit(self.coef[fits], self.intercept[fits], self.n_iter[fits])


def fit_logistic(
    x: Tensor, y: Tensor, weight: Tensor, C: float = math.inf, standardise: bool = False,
    tol: float = 1e-4, max_iter: int = 100,
) -> LogisticFit:
    """Fit B logistic regressions (see the module docstring for the objective, solver and layouts)."""
    n_fits = y.shape[0]
    if x.dim() not in (2, 3) or y.shape != weight.shape or x.shape[-2] != y.shape[1] or (
            x.dim() == 3 and x.shape[0] != n_fits):
        raise ValueError(f"shapes do not match: x {tuple(x.shape)}, y {tuple(y.shape)}, weight {tuple(weight.shape)}")
    weight = weight.to(x.device, torch.float64)
    total = weight.sum(1)
    if not bool((total > 0).all()):
        raise ValueError("every fit needs rows with positive weight")
    shift, scale = _standardisation(x, weight, total) if standardise else (None, None)
    objective = _objective(x, y.to(x.device, torch.float64), weight, total, 1.0 / (C * total), shift, scale)
    theta, n_iter = _lbfgs(objective, n_fits, x.shape[-1] + 1, x.device, x.dtype, tol, max_iter)
    coef, intercept = theta[:, :-1], theta[:, -1]
    if scale is not None:
        coef = coef / scale
        intercept = intercept - (shift * coef).sum(1)
    return LogisticFit(coef, intercept, n_iter)


def _standardisation(x: Tensor, weight: Tensor, total: Tensor) -> tuple[Tensor, Tensor]:
    """Weighted mean [B, d] and standard deviation [B, d] (1 where a feature is constant) of each fit's rows."""
    x64 = x.double()
    centre = x64.mean(-2, keepdim=True)  # a common shift first, so the variance does not cancel
    x64 = x64 - centre
    if x.dim() == 2:
        mean, square = weight @ x64, weight @ x64.square()
    else:
        mean = torch.bmm(weight[:, None], x64)[:, 0]
        square = torch.bmm(weight[:, None], x64.square())[:, 0]
    mean, square = mean / total[:, None], square / total[:, None]
    std = (square - mean.square()).clamp(min=0).sqrt()
    mean = mean + centre.reshape(-1, x.shape[-1])
    constant = std <= 1e-12 * (1 + mean.abs())
    return mean, torch.where(constant, torch.ones_like(std), std)


def _objective(x: Tensor, y: Tensor, weight: Tensor, total: Tensor, l2: Tensor, shift: Tensor | None,
               scale: Tensor | None) -> Objective:
    """(mean loss [b], gradient [b, d + 1]) at parameters theta [b, d + 1] (intercept last) of fits `idx` [b].

    The elementwise work runs on each fit's rows of positive weight only (padded to the longest fit);
    with shared rows the two products still cover all rows, residuals being zero outside a fit's rows.
    """
    used = weight > 0
    rows = torch.argsort(used.to(torch.int8), dim=1, descending=True, stable=True)[:, :int(used.sum(1).max())]
    share = weight.gather(1, rows) / total[:, None]  # [B, n]; 0 on padding
    target = y.gather(1, rows)
    shared = x.dim() == 2
    if not shared:
        x = torch.gather(x, 1, rows[..., None].expand(-1, -1, x.shape[-1]))

    def evaluate(theta: Tensor, idx: Tensor) -> tuple[Tensor, Tensor]:
        w, b = theta[:, :-1], theta[:, -1]
        if scale is not None:
            w = w / scale[idx]
            b = b - (shift[idx] * w).sum(1)
        w = w.to(x.dtype)
        if not bool(w.any()):  # the start: no product needed
            z = torch.zeros(len(idx), rows.shape[1], dtype=torch.float64, device=x.device)
        elif shared:
            z = (x @ w.T).T.gather(1, rows[idx]).double()
        else:
            z = torch.bmm(x[idx], w[:, :, None])[..., 0].double()
        z = z + b[:, None]
        rows_share, rows_target = share[idx], target[idx]
        loss = (rows_share * (torch.nn.functional.softplus(z) - rows_target * z)).sum(1)
        r = rows_share * (torch.sigmoid(z) - rows_target)
        if shared:
            spread = torch.zeros(len(idx), x.shape[0], dtype=x.dtype, device=x.device)
            grad_w = (spread.scatter_add_(1, rows[idx], r.to(x.dtype)) @ x).double()
        else:
            grad_w = torch.bmm(r.to(x.dtype)[:, None], x[idx])[:, 0].double()
        grad_b = r.sum(1)
        if scale is not None:
            grad_w = (grad_w - shift[idx] * grad_b[:, None]) / scale[idx]
        penalty = l2[idx]
        loss = loss + 0.5 * penalty * theta[:, :-1].square().sum(1)
        grad_w = grad_w + penalty[:, None] * theta[:, :-1]
        return loss, torch.cat([grad_w, grad_b[:, None]], 1)

    return evaluate


def _lbfgs(objective: Objective, n_fits: int, dim: int, device: torch.device, dtype: torch.dtype, tol: float,
           max_iter: int) -> tuple[Tensor, Tensor]:
    """Batched L-BFGS from zero: (parameters [B, dim], iterations [B]); each round evaluates every running fit once.

    Vectors stay on `device`; per-fit scalars (values, counters, line-search state) are numpy arrays.
    """
    theta = torch.zeros(n_fits, dim, dtype=torch.float64, device=device)
    f, g = objective(theta, torch.arange(n_fits, device=device))
    f = _host(f)
    n_iter = np.zeros(n_fits, dtype=np.int64)
    running = _host(g.abs().amax(1)) > tol
    memory, ls = _Memory(n_fits, dim, device, dtype), _LineSearch(n_fits)
    direction = -g
    ls.begin(np.arange(n_fits), f, _host(-g.square().sum(1)), 1.0 / np.maximum(_host(g.norm(dim=1)), 1.0 / STEP_MAX))
    while running.any():
        idx = np.flatnonzero(running)
        at = _on(idx, device)
        trial = theta[at] + _on(ls.stp[idx], device)[:, None] * direction[at]
        f_new, g_new = objective(trial, at)
        f_new, slope = _host(torch.stack([f_new, (g_new * direction[at]).sum(1)]))
        done = ls.advance(idx, f_new, slope)
        restart = [idx[~done & (ls.evals[idx] >= MAX_LINE_SEARCH)]]
        accepted = idx[done]
        if accepted.size:
            at, rows = _on(accepted, device), _on(np.flatnonzero(done), device)
            s, dy = trial[rows] - theta[at], g_new[rows] - g[at]
            g_max, sy, s_g_old, yy = _host(torch.stack([
                g_new[rows].abs().amax(1), (s * dy).sum(1), (s * g[at]).sum(1), dy.square().sum(1)]))
            theta[at], g[at] = trial[rows], g_new[rows]
            f_old, f[accepted] = f[accepted], f_new[done]
            n_iter[accepted] += 1
            scale = np.maximum(np.maximum(np.abs(f_old), np.abs(f[accepted])), 1.0)
            stop = (n_iter[accepted] >= max_iter) | (g_max <= tol) | (f_old - f[accepted] <= REL_REDUCTION * scale)
            running[accepted[stop]] = False
            curved = ~stop & (sy > EPS * (-s_g_old))
            keep = _on(np.flatnonzero(curved), device)
            memory.push(accepted[curved], s[keep], dy[keep], sy[curved], yy[curved])
            go_on = accepted[~stop]
            if go_on.size:
                at = _on(go_on, device)
                direction[at] = -memory.apply(go_on, g[at])
                slope = _host((g[at] * direction[at]).sum(1))
                restart.append(go_on[slope >= 0])
                ls.begin(go_on[slope < 0], f[go_on[slope < 0]], slope[slope < 0], 1.0)
        restart = np.concatenate(restart)
        if restart.size:
            running[restart[memory.stored[restart] == 0]] = False
            warm = restart[memory.stored[restart] > 0]
            memory.clear(warm)
            at = _on(warm, device)
            direction[at] = -g[at]
            ls.begin(warm, f[warm], _host(-g[at].square().sum(1)), 1.0)
    return theta, torch.as_tensor(n_iter, device=device)


def _host(t: Tensor) -> np.ndarray:
    """A tensor as a numpy array on the host."""
    return t.detach().cpu().numpy()


def _on(a: np.ndarray, device: torch.device) -> Tensor:
    """A numpy array as a tensor on `device`."""
    return torch.as_tensor(a, device=device)


class _Memory:
    """The last MEMORY curvature pairs (s, y) [B, MEMORY, D] of every fit in a ring buffer, stored in the dtype
    of the features (float32 halves the traffic of the two-loop recursion), with rho = 1 / s'y and
    gamma = s'y / y'y of the newest pair."""

    def __init__(self, n_fits: int, dim: int, device: torch.device, dtype: torch.dtype) -> None:
        self.s = torch.zeros(n_fits, MEMORY, dim, dtype=dtype, device=device)
        self.y = torch.zeros_like(self.s)
        self.rho = np.zeros((n_fits, MEMORY))
        self.gamma = np.ones(n_fits)
        self.head = np.zeros(n_fits, dtype=np.int64)
        self.stored = np.zeros(n_fits, dtype=np.int64)

    def push(self, idx: np.ndarray, s: Tensor, y: Tensor, sy: np.ndarray, yy: np.ndarray) -> None:
        """Store pairs s, y [b, D] with their s'y and y'y [b] for fits `idx`."""
        if idx.size:
            slot = self.head[idx] % MEMORY
            at = _on(idx, s.device)
            self.s[at, _on(slot, s.device)], self.y[at, _on(slot, s.device)] = s.to(self.s.dtype), y.to(self.s.dtype)
            self.rho[idx, slot], self.gamma[idx] = 1.0 / sy, sy / yy
            self.head[idx] += 1
            self.stored[idx] = np.minimum(self.stored[idx] + 1, MEMORY)

    def clear(self, idx: np.ndarray) -> None:
        """Forget the pairs of fits `idx` (steepest descent next)."""
        self.stored[idx], self.gamma[idx] = 0, 1.0

    def apply(self, idx: np.ndarray, g: Tensor) -> Tensor:
        """Inverse-Hessian approximation times g [b, D] (float64) for fits `idx`, by the two-loop recursion."""
        device, dtype = g.device, self.s.dtype
        newest_first = (self.head[idx, None] - 1 - np.arange(MEMORY)) % MEMORY
        rho = np.where(np.arange(MEMORY) < self.stored[idx, None], self.rho[idx[:, None], newest_first], 0.0)
        rho, slots, at = _on(rho, device).to(dtype), _on(newest_first, device), _on(idx, device)
        q, pairs = g.to(dtype), []
        for k in range(int(self.stored[idx].max(initial=0))):
            s, y = self.s[at, slots[:, k]], self.y[at, slots[:, k]]
            alpha = rho[:, k] * torch.linalg.vecdot(s, q)
            q = q - alpha[:, None] * y
            pairs.append((s, y, rho[:, k], alpha))
        q = q * _on(self.gamma[idx], device).to(dtype)[:, None]
        for s, y, rho_k, alpha in reversed(pairs):
            q.addcmul_((alpha - rho_k * torch.linalg.vecdot(y, q))[:, None], s)
        return q.double()


class _LineSearch:
    """Moré-Thuente line search (MINPACK-2 dcsrch/dcstep) of every fit, numpy arrays [B] on the host."""

    def __init__(self, n_fits: int) -> None:
        for name in ("stp", "finit", "ginit", "stx", "fx", "gx", "sty", "fy", "gy", "stmin", "stmax", "width",
                     "width1"):
            setattr(self, name, np.zeros(n_fits))
        self.brackt = np.zeros(n_fits, dtype=bool)
        self.stage = np.ones(n_fits, dtype=np.int64)
        self.evals = np.zeros(n_fits, dtype=np.int64)

    def begin(self, idx: np.ndarray, f: np.ndarray, slope: np.ndarray, step: np.ndarray | float) -> None:
        """Start searches for fits `idx` at value f, directional derivative slope < 0, first trial `step`."""
        self.stp[idx], self.finit[idx], self.ginit[idx] = step, f, slope
        self.stx[idx], self.fx[idx], self.gx[idx] = 0.0, f, slope
        self.sty[idx], self.fy[idx], self.gy[idx] = 0.0, f, slope
        self.stmin[idx], self.stmax[idx] = 0.0, 5.0 * self.stp[idx]
        self.width[idx], self.width1[idx] = STEP_MAX, 2.0 * STEP_MAX
        self.brackt[idx], self.stage[idx], self.evals[idx] = False, 1, 0

    def advance(self, idx: np.ndarray, f: np.ndarray, g: np.ndarray) -> np.ndarray:
        """Take f and slope g at the trial steps of fits `idx`: True where a search ends, else set its next step."""
        self.evals[idx] += 1
        stp, stx, sty, ginit = self.stp[idx], self.stx[idx], self.sty[idx], self.ginit[idx]
        brackt, stmin, stmax = self.brackt[idx], self.stmin[idx], self.stmax[idx]
        gtest = LS_FTOL * ginit
        ftest = self.finit[idx] + stp * gtest
        stage = np.where((self.stage[idx] == 1) & (f <= ftest) & (g >= 0), 2, self.stage[idx])
        done = ((brackt & ((stp <= stmin) | (stp >= stmax)))
                | (brackt & (stmax - stmin <= LS_XTOL * stmax))
                | ((stp == STEP_MAX) & (f <= ftest) & (g <= gtest))
                | ((stp == 0) & ((f > ftest) | (g >= gtest)))
                | ((f <= ftest) & (np.abs(g) <= LS_GTOL * (-ginit))))
        fx = self.fx[idx]
        shift = np.where((stage == 1) & (f <= fx) & (f > ftest), gtest, 0.0)  # the modified function of stage 1
        stx, fx, gx, sty, fy, gy, new, brackt = _dcstep(
            stx, fx - stx * shift, self.gx[idx] - shift, sty, self.fy[idx] - sty * shift, self.gy[idx] - shift,
            stp, f - stp * shift, g - shift, brackt, stmin, stmax)
        fx, fy, gx, gy = fx + stx * shift, fy + sty * shift, gx + shift, gy + shift
        span = np.abs(sty - stx)
        new = np.where(brackt & (span >= 0.66 * self.width1[idx]), stx + 0.5 * (sty - stx), new)
        width1 = np.where(brackt, self.width[idx], self.width1[idx])
        width = np.where(brackt, span, self.width[idx])
        stmin = np.where(brackt, np.minimum(stx, sty), new + 1.1 * (new - stx))
        stmax = np.where(brackt, np.maximum(stx, sty), new + 4.0 * (new - stx))
        new = np.clip(new, 0.0, STEP_MAX)
        new = np.where(brackt & ((new <= stmin) | (new >= stmax) | (stmax - stmin <= LS_XTOL * stmax)), stx, new)
        go_on = idx[~done]
        for name, value in dict(stp=new, stx=stx, fx=fx, gx=gx, sty=sty, fy=fy, gy=gy, stmin=stmin, stmax=stmax,
                                width=width, width1=width1, brackt=brackt, stage=stage).items():
            getattr(self, name)[go_on] = value[~done]
        return done


@np.errstate(divide="ignore", invalid="ignore")
def _dcstep(stx: np.ndarray, fx: np.ndarray, dx: np.ndarray, sty: np.ndarray, fy: np.ndarray, dy: np.ndarray,
            stp: np.ndarray, fp: np.ndarray, dp: np.ndarray, brackt: np.ndarray, stpmin: np.ndarray,
            stpmax: np.ndarray) -> tuple[np.ndarray, ...]:
    """One safeguarded cubic/quadratic step of Moré-Thuente: new interval (stx, fx, dx, sty, fy, dy), step, brackt.

    x is the best step so far, y the other end of the interval, p the trial step (value, derivative);
    every case is computed for every fit and the applicable one selected.
    """
    high = fp > fx
    opposite = ~high & (dp * np.sign(dx) < 0)
    flatter = ~high & ~opposite & (np.abs(dp) < np.abs(dx))
    theta = 3.0 * (fx - fp) / (stp - stx) + dx + dp
    s = np.maximum(np.maximum(np.abs(theta), np.abs(dx)), np.abs(dp))
    gamma = s * np.sqrt(np.maximum((theta / s) ** 2 - (dx / s) * (dp / s), 0.0))
    # case 1: higher value, the minimum is bracketed
    g1 = np.where(stp < stx, -gamma, gamma)
    cubic = stx + ((g1 - dx) + theta) / (((g1 - dx) + g1) + dp) * (stp - stx)
    quad = stx + (dx / ((fx - fp) / (stp - stx) + dx)) / 2.0 * (stp - stx)
    step1 = np.where(np.abs(cubic - stx) < np.abs(quad - stx), cubic, cubic + (quad - cubic) / 2.0)
    # case 2: lower value, derivatives of opposite sign, bracketed
    g2 = np.where(stp > stx, -gamma, gamma)
    cubic = stp + ((g2 - dp) + theta) / (((g2 - dp) + g2) + dx) * (stx - stp)
    secant = stp + (dp / (dp - dx)) * (stx - stp)
    step2 = np.where(np.abs(cubic - stp) > np.abs(secant - stp), cubic, secant)
    # case 3: lower value, same sign, derivative decreases in magnitude
    r = ((g2 - dp) + theta) / ((g2 + (dx - dp)) + g2)
    cubic = np.where((r < 0) & (g2 != 0), stp + r * (stx - stp), np.where(stp > stx, stpmax, stpmin))
    inside = np.where(np.abs(cubic - stp) < np.abs(secant - stp), cubic, secant)
    limit = stp + 0.66 * (sty - stp)
    inside = np.where(stp > stx, np.minimum(limit, inside), np.maximum(limit, inside))
    outside = np.clip(np.where(np.abs(cubic - stp) > np.abs(secant - stp), cubic, secant), stpmin, stpmax)
    step3 = np.where(brackt, inside, outside)
    # case 4: lower value, same sign, derivative does not decrease
    theta4 = 3.0 * (fp - fy) / (sty - stp) + dy + dp
    s4 = np.maximum(np.maximum(np.abs(theta4), np.abs(dy)), np.abs(dp))
    gamma4 = s4 * np.sqrt(np.maximum((theta4 / s4) ** 2 - (dy / s4) * (dp / s4), 0.0))
    gamma4 = np.where(stp > sty, -gamma4, gamma4)
    cubic4 = stp + ((gamma4 - dp) + theta4) / (((gamma4 - dp) + gamma4) + dy) * (sty - stp)
    step4 = np.where(brackt, cubic4, np.where(stp > stx, stpmax, stpmin))
    new = np.where(high, step1, np.where(opposite, step2, np.where(flatter, step3, step4)))
    sty_n = np.where(high, stp, np.where(opposite, stx, sty))
    fy_n = np.where(high, fp, np.where(opposite, fx, fy))
    dy_n = np.where(high, dp, np.where(opposite, dx, dy))
    return (np.where(high, stx, stp), np.where(high, fx, fp), np.where(high, dx, dp), sty_n, fy_n, dy_n, new,
            brackt | high | opposite)

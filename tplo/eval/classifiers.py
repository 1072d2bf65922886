"""Truth probes on pooled activations: logistic regression (LR) and TTPD.

TTPD follows Buerger et al. 2024, "Truth is Universal": activations are centred per dataset (one
member of a topic pair, e.g. `cities` or `neg_cities`), then ordinary least squares fits
`a_i = t_G * truth_i + t_P * truth_i * polarity_i` with truth in {-1, +1} and polarity -1 for negated
statements, +1 for affirmative ones. `t_G` is the general truth direction that keeps its sign under
negation. A polarity direction comes from a logistic regression of polarity on the raw activations,
and the final classifier is a logistic regression on the 2-D projection `[a . t_G, a . p]`.

The logistic regressions come in two modes, chosen by `C`:

- `C=None` (the reference code's): unpenalised `LogisticRegression(C=inf)` on the raw activations, with
  scikit-learn's lbfgs defaults (tol 1e-4, max_iter 100). On a few thousand statements in 4096
  dimensions the problem is separable and has no finite optimum; the answer is where lbfgs stops.
- `C` a float: standardised inputs and an L2 penalty of inverse strength `C` (intercept unpenalised),
  solved to its unique optimum (lbfgs, tol `REGULARISED_TOL`, at most `REGULARISED_MAX_ITER` iterations).

These are the scikit-learn fits one at a time; `tplo.eval.lie_detection` fits the same objectives batched
in torch (`tplo.eval.logistic`). Arrays are numpy: activations `x` [N, H], labels `y` [N] in {0, 1}
(1 = true).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler


REGULARISED_TOL = 1e-8
REGULARISED_MAX_ITER = 1000


def logistic(C: float | None = None) -> Pipeline:
    """Unpenalised logistic regression on raw features (`C=None`), or standardised with L2 strength 1 / `C`."""
    if C is None:
        return make_pipeline(LogisticRegression(C=np.inf))
    return make_pipeline(StandardScaler(),
                         LogisticRegression(C=C, tol=REGULARISED_TOL, max_iter=REGULARISED_MAX_ITER))


@dataclass(frozen=True)
class LRProbe:
    """Logistic regression on the activations."""

    classifier: Pipeline

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Predicted labels [N] in {0, 1} for activations [N, H]."""
        return self.classifier.predict(np.asarray(x, dtype=np.float64))


def fit_lr(x: np.ndarray, y: np.ndarray, C: float | None = None) -> LRProbe:
    """Fit an LR probe on activations [N, H] and labels [N]."""
    return LRProbe(logistic(C).fit(np.asarray(x, dtype=np.float64), np.asarray(y)))


def centre_per_dataset(x: np.ndarray, datasets: np.ndarray) -> np.ndarray:
    """Subtract each dataset's mean activation: [N, H] -> [N, H]; `datasets` [N] are group ids."""
    x = np.asarray(x, dtype=np.float64)
    _, group = np.unique(datasets, return_inverse=True)
    onehot = np.eye(group.max() + 1)[group]  # [N, G]
    means = (onehot.T @ x) / onehot.sum(0)[:, None]
    return x - means[group]


def truth_directions(
    x_centred: np.ndarray, y: np.ndarray, polarity: np.ndarray
) -> tuple[np.ndarray, np.ndarray | None]:
    """OLS fit of `x_centred` [N, H] on [truth, truth * polarity]; returns (t_G [H], t_P [H] or None).

    With a single polarity the two regressors coincide, so only t_G is fitted (t_P is None).
    """
    truth = np.where(np.asarray(y) == 1, 1.0, -1.0)
    polarity = np.asarray(polarity, dtype=np.float64)
    if np.unique(polarity).size < 2:
        design = truth[:, None]
    else:
        design = np.stack([truth, truth * polarity], 1)
    coef = np.linalg.solve(design.T @ design, design.T @ x_centred)  # the normal equations, as the reference
    return coef[0], (coef[1] if coef.shape[0] > 1 else None)


def polarity_direction(x: np.ndarray, polarity: np.ndarray, C: float | None = None) -> np.ndarray:
    """Direction [H] in activation space of a logistic regression separating negated from affirmative."""
    model = logistic(C).fit(np.asarray(x, dtype=np.float64), np.asarray(polarity) > 0)
    coef = model[-1].coef_[0]
    return coef / model[0].scale_ if len(model) == 2 else coef  # back from standardised units


@dataclass(frozen=True)
class TTPDProbe:
    """Training of Truth and Polarity Direction probe.

    `t_g` [H] is the general truth direction used for classification; `t_p` [H] (the polarity-sensitive
    truth direction, None without negated data) is kept for inspection only.
    """

    t_g: np.ndarray
    t_p: np.ndarray | None
    polarity_direction: np.ndarray | None
    classifier: Pipeline

    def project(self, x: np.ndarray) -> np.ndarray:
        """Activations [N, H] -> [N, 2] coordinates `[a . t_G, a . p]` ([N, 1] without a polarity direction)."""
        x = np.asarray(x, dtype=np.float64)
        columns = [x @ self.t_g] + ([] if self.polarity_direction is None else [x @ self.polarity_direction])
        return np.stack(columns, 1)

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Predicted labels [N] in {0, 1} for activations [N, H]."""
        return self.classifier.predict(self.project(x))


def fit_ttpd(x: np.ndarray, y: np.ndarray, datasets: np.ndarray, polarity: np.ndarray,
             C: float | None = None) -> TTPDProbe:
    """Fit TTPD on activations [N, H], labels [N], dataset ids [N] and polarity [N] in {-1, +1}.

    Training data with a single polarity yields a 1-D probe on `t_G` alone (no polarity direction).
    """
    x = np.asarray(x, dtype=np.float64)
    polarity = np.asarray(polarity)
    t_g, t_p = truth_directions(centre_per_dataset(x, np.asarray(datasets)), y, polarity)
    direction = polarity_direction(x, polarity, C) if np.unique(polarity).size > 1 else None
    probe = TTPDProbe(t_g, t_p, direction, logistic(C))
    probe.classifier.fit(probe.project(x), np.asarray(y))
    return probe

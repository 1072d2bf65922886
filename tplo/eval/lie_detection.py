"""Lie-detection protocol: leave one topic pair out, repeated with resampling.

A dataset is one member of a topic pair: `cities` (affirmative) or `neg_cities` (negated). Each held-out
pair is tested in full, dataset by dataset; the probes (LR and TTPD, see `tplo.eval.classifiers`) train
on subsets of the other pairs, drawn afresh in every repetition. Two protocols:

- "reference" (default), Buerger et al.'s `lie_detection.ipynb`: every training dataset contributes as
  many statements as the smallest of ALL datasets has (held-out ones included). Each training topic
  draws one subset of row positions without replacement, used by its affirmative dataset and by its
  negation alike (row k of `neg_cities` negates row k of `cities`, so the two must have equal sizes).
  Every logistic regression is unpenalised on raw activations: scikit-learn's `LogisticRegression`
  with `penalty=None` and its lbfgs defaults (tol 1e-4, max_iter 100, start at zero).
- "regularised": each training dataset draws `train_fraction` of the smallest training dataset on its
  own, and every logistic regression standardises its inputs and is L2-penalised (`C`), solved to its
  optimum. With fewer statements than dimensions the unpenalised problem is separable and has no finite
  optimum, so the reference answer is wherever lbfgs stops; the penalised optimum is unique and the
  same for every solver.

Subsets are drawn once per (pair, repetition) from one seeded generator and shared by all layers and
probes (the notebook redraws them for each probe type, which changes the draws but not their
distribution). All logistic regressions of one layer (every held-out pair and repetition) are fitted
as one batch by `tplo.eval.logistic.fit_logistic` on `device`, with scikit-learn's objective and lbfgs
rule.

Accuracies are kept per held-out dataset, `[layers, datasets, repeats]`; `summarise` turns them into
the JSON blocks of `evaluation.json`:

    {"protocol": "reference", "layers": [0, 1, ...], "pairs": [...], "datasets": [...],
     "<probe>": {"mean": [per layer], "std": [per layer],
                 "per_pair": {pair: {"mean": [...], "std": [...]}},
                 "per_dataset": {dataset: {"mean": [...], "std": [...]}}}}

`mean` over repeats; `std` is the standard deviation over repeats (resampling variability). The overall
accuracy of a repetition is the mean over held-out datasets, as the paper averages its datasets.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from tplo.data.schema import dataset_name
from tplo.eval.classifiers import REGULARISED_MAX_ITER, REGULARISED_TOL
from tplo.eval.logistic import fit_logistic

PROBES = ("lr", "ttpd")
PROTOCOLS = ("reference", "regularised")


@dataclass(frozen=True)
class Split:
    """Row indices of one (held-out pair, repetition): training rows [n_train], test rows [n_test]."""

    pair: str
    repeat: int
    train: np.ndarray
    test: np.ndarray


def make_splits(
    topics: Sequence[str], negated: Sequence[bool], repeats: int = 20, train_fraction: float = 0.8, seed: int = 0,
    protocol: str = "reference",
) -> list[Split]:
    """Leave-one-pair-out splits of `protocol` for every topic pair and repetition, deterministic given `seed`.

    `train_fraction` is used by the "regularised" protocol only.
    """
    _check_protocol(protocol)
    if protocol == "regularised" and not 0 < train_fraction <= 1:
        raise ValueError(f"train_fraction must be in (0, 1], got {train_fraction}")
    topics = np.asarray(topics, dtype=object)
    negated = np.asarray(negated, dtype=bool)
    pairs = sorted(set(topics))
    if len(pairs) < 2:
        raise ValueError(f"leave-one-pair-out needs at least two topic pairs, got {pairs}")
    rng = np.random.default_rng(seed)
    if protocol == "reference":
        return _reference_splits(topics, negated, pairs, repeats, rng)
    return _regularised_splits(topics, negated, pairs, repeats, train_fraction, rng)


def _reference_splits(topics: np.ndarray, negated: np.ndarray, pairs: list[str], repeats: int,
                      rng: np.random.Generator) -> list[Split]:
    """Truth_is_Universal's subsets: one draw of row positions per training topic, shared by its two datasets."""
    members = {}
    for topic in pairs:
        both = (np.flatnonzero((topics == topic) & (negated == neg)) for neg in (False, True))
        members[topic] = [rows for rows in both if rows.size]
        if len({rows.size for rows in members[topic]}) > 1:
            raise ValueError(f"{topic} and {dataset_name(topic, True)} differ in size "
                             f"({[rows.size for rows in members[topic]]}); the reference protocol pairs their "
                             "rows by position")
    size = min(rows.size for parts in members.values() for rows in parts)
    splits = []
    for pair in pairs:
        test = np.flatnonzero(topics == pair)
        for repeat in range(repeats):
            train = []
            for topic in pairs:
                if topic != pair:
                    positions = rng.choice(members[topic][0].size, size=size, replace=False)
                    train += [rows[positions] for rows in members[topic]]
            splits.append(Split(pair, repeat, np.sort(np.concatenate(train)), test))
    return splits


def _regularised_splits(topics: np.ndarray, negated: np.ndarray, pairs: list[str], repeats: int,
                        train_fraction: float, rng: np.random.Generator) -> list[Split]:
    """`train_fraction` of the smallest training dataset from every training dataset, drawn independently."""
    names = np.array([dataset_name(t, bool(n)) for t, n in zip(topics, negated)], dtype=object)
    splits = []
    for pair in pairs:
        test = np.flatnonzero(topics == pair)
        train_sets = [np.flatnonzero(names == d) for d in sorted(set(names[topics != pair]))]
        size = max(2, int(train_fraction * min(len(rows) for rows in train_sets)))
        for repeat in range(repeats):
            train = np.concatenate([rng.choice(rows, size=min(size, len(rows)), replace=False) for rows in train_sets])
            splits.append(Split(pair, repeat, np.sort(train), test))
    return splits


def _check_protocol(protocol: str) -> None:
    """Raise ValueError unless `protocol` is one of PROTOCOLS."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; choose from {PROTOCOLS}")


def _solver_settings(protocol: str, C: float = 1.0) -> dict:
    """Keyword arguments of `fit_logistic` for every logistic regression of `protocol`."""
    _check_protocol(protocol)
    if protocol == "reference":
        return {"C": math.inf, "standardise": False, "tol": 1e-4, "max_iter": 100}
    return {"C": C, "standardise": True, "tol": REGULARISED_TOL, "max_iter": REGULARISED_MAX_ITER}


@dataclass(frozen=True)
class ProtocolResult:
    """Held-out accuracies. `dataset_accuracy[probe]`: [n_layers, n_datasets, repeats]."""

    layers: list[int]
    pairs: list[str]
    datasets: list[str]
    dataset_pair: list[str]
    dataset_accuracy: dict[str, np.ndarray]
    protocol: str = "reference"

    def overall(self, probe: str) -> np.ndarray:
        """Mean over held-out datasets per layer and repetition: [n_layers, repeats]."""
        return self.dataset_accuracy[probe].mean(1)

    def pair_accuracy(self, probe: str, pair: str) -> np.ndarray:
        """Mean over the datasets of one held-out pair: [n_layers, repeats]."""
        rows = [i for i, p in enumerate(self.dataset_pair) if p == pair]
        return self.dataset_accuracy[probe][:, rows].mean(1)


def run_protocol(
    features: torch.Tensor | np.ndarray,
    labels: Sequence[int] | np.ndarray | torch.Tensor,
    topics: Sequence[str],
    negated: Sequence[bool] | np.ndarray | torch.Tensor,
    layers: Sequence[int] | None = None,
    repeats: int = 20,
    train_fraction: float = 0.8,
    seed: int = 0,
    probes: Sequence[str] = PROBES,
    C: float = 1.0,
    protocol: str = "reference",
    device: str | torch.device | None = None,
    on_layer_done: Callable[[int], None] | None = None,
) -> ProtocolResult:
    """Leave-one-topic-pair-out lie detection on features [N, L + 1, H] for the chosen layers (default all).

    `labels` [N] in {0, 1}, `topics` [N] base topic names, `negated` [N]. `train_fraction` and `C` apply
    to the "regularised" protocol only. Fits run on `device` (default: CUDA when available, else CPU), in
    float64 when `features` are float64 and in float32 otherwise; `on_layer_done(layer)` is called as each
    layer finishes (for progress bars).
    """
    unknown = set(probes) - set(PROBES)
    if unknown:
        raise ValueError(f"unknown probes {sorted(unknown)}; choose from {PROBES}")
    feats = torch.as_tensor(features)
    layers = list(range(feats.shape[1])) if layers is None else list(dict.fromkeys(int(l) for l in layers))
    bad = [l for l in layers if not 0 <= l < feats.shape[1]]
    if bad:
        raise ValueError(f"layers {bad} out of range: features have {feats.shape[1]} layers (0 = embeddings)")
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = torch.float64 if feats.dtype == torch.float64 else torch.float32
    y = np.asarray(labels).astype(np.int64)
    neg = np.asarray(negated).astype(bool)
    names = np.array([dataset_name(t, n) for t, n in zip(topics, neg)], dtype=object)
    splits = make_splits(topics, neg, repeats, train_fraction, seed, protocol)
    solver = _solver_settings(protocol, C)
    pair_of = dict(zip(names, topics))
    datasets = sorted(pair_of, key=lambda d: (pair_of[d], d != pair_of[d]))
    dataset_ids = np.array([datasets.index(d) for d in names])
    pairs = sorted(set(topics))
    dataset_accuracy = {p: np.zeros((len(layers), len(datasets), repeats)) for p in probes}
    for i, layer in enumerate(layers):
        x = feats[:, layer].to(device=device, dtype=dtype).contiguous()
        for probe, correct in _layer_predictions(x, y, dataset_ids, neg, splits, probes, solver).items():
            for split, hits in zip(splits, correct):
                held_out = dataset_ids[split.test]
                for d in np.unique(held_out):
                    dataset_accuracy[probe][i, d, split.repeat] = hits[split.test[held_out == d]].mean()
        if on_layer_done is not None:
            on_layer_done(layer)
    return ProtocolResult(layers, pairs, datasets, [pair_of[d] for d in datasets], dataset_accuracy, protocol)


def _layer_predictions(x: Tensor, y: np.ndarray, dataset_ids: np.ndarray, negated: np.ndarray, splits: list[Split],
                       probes: Sequence[str], solver: dict) -> dict[str, np.ndarray]:
    """{probe: correct [S, N]}: whether the probe fitted on split s predicts row n right, for all splits [S] at once.

    x [N, H] are one layer's features on the fitting device. Each split selects its training rows by
    weight; the LR probes and TTPD's polarity regressions share one batch (same rows, other labels),
    and TTPD's final regressions on the 2-D projections form another.
    """
    device, n_splits = x.device, len(splits)
    weight = np.zeros((n_splits, len(y)))
    for s, split in enumerate(splits):
        weight[s, split.train] = 1.0
    weight = torch.as_tensor(weight, device=device)
    truth = torch.as_tensor(y, dtype=torch.float64, device=device).expand(n_splits, -1)
    polarity = np.where(negated, -1.0, 1.0)
    two_polarities = np.array([np.unique(polarity[split.train]).size > 1 for split in splits])
    with_polarity = torch.as_tensor(np.flatnonzero(two_polarities), device=device)
    targets, weights = [], []
    if "lr" in probes:
        targets.append(truth)
        weights.append(weight)
    if "ttpd" in probes:
        targets.append(torch.as_tensor(polarity > 0, dtype=torch.float64, device=device).expand(len(with_polarity), -1))
        weights.append(weight[with_polarity])
    predictions = {}
    batch = fit_logistic(x, torch.cat(targets), torch.cat(weights), **solver) if sum(map(len, targets)) else None
    if "lr" in probes:
        predictions["lr"] = batch[:n_splits].predict(x)
    if "ttpd" in probes:
        predictions["ttpd"] = torch.zeros(n_splits, len(y), dtype=torch.long, device=device)
        t_g = _general_truth_direction(x, y, dataset_ids, polarity, weight, two_polarities)
        for has_polarity in (True, False):
            group = np.flatnonzero(two_polarities == has_polarity)
            if group.size:
                at = torch.as_tensor(group, device=device)
                directions = [t_g[at]] + ([batch.coef[-len(with_polarity):]] if has_polarity else [])
                coordinates = _project(x, torch.stack(directions, 1).to(x.dtype))
                final = fit_logistic(coordinates, truth[at], weight[at], **solver)
                predictions["ttpd"][at] = final.predict(coordinates)
    labels = torch.as_tensor(y, device=device)
    return {probe: (pred == labels).cpu().numpy() for probe, pred in predictions.items()}


def _project(x: Tensor, directions: Tensor) -> Tensor:
    """Coordinates [S, N, k] (float64) of rows x [N, H] along each split's directions [S, k, H]."""
    n_splits, k, hidden = directions.shape
    return (x @ directions.reshape(-1, hidden).T).double().reshape(-1, n_splits, k).transpose(0, 1)


def _general_truth_direction(x: Tensor, y: np.ndarray, dataset_ids: np.ndarray, polarity: np.ndarray,
                             weight: Tensor, two_polarities: np.ndarray) -> Tensor:
    """TTPD's t_G [S, H] per split: OLS of activations centred per dataset on [truth, truth * polarity].

    x [N, H] rows, y / dataset_ids / polarity [N], weight [S, N] the rows of each split, two_polarities [S]
    whether a split has both (else only the truth column is fitted). Centring each training dataset by
    its own subset mean gives X_c' D = sum_i (D_i - mean of D over i's dataset) x_i, so one matrix
    product covers all splits.
    """
    truth = np.where(y == 1, 1.0, -1.0)
    design = torch.as_tensor(np.stack([truth, truth * polarity], 1), device=x.device)  # [N, 2]
    mask = torch.as_tensor(np.stack([np.ones_like(two_polarities), two_polarities], 1), dtype=torch.float64,
                           device=x.device)  # [S, 2]: the polarity column only where a split has both
    group = torch.as_tensor(dataset_ids, device=x.device)
    onehot = torch.nn.functional.one_hot(group).double()  # [N, G]
    counts = (weight @ onehot).clamp(min=1)  # [S, G]
    sums = weight @ (onehot[:, :, None] * design[:, None, :]).reshape(len(design), -1)  # [S, G * 2]
    means = sums.reshape(len(weight), -1, 2) / counts[..., None]
    centred = weight[..., None] * (design - means[:, group]) * mask[:, None]  # [S, N, 2]
    n_splits = centred.shape[0]
    moments = (centred.transpose(1, 2).reshape(2 * n_splits, -1).to(x.dtype) @ x).double().reshape(n_splits, 2, -1)
    gram = (weight @ (design[:, :, None] * design[:, None, :]).reshape(-1, 4)).reshape(-1, 2, 2)
    gram = gram * mask[:, :, None] * mask[:, None, :]
    gram = gram + torch.diag_embed(1 - mask)  # a single polarity: identity on the unused column
    return torch.linalg.solve(gram, moments)[:, 0]


def summarise(result: ProtocolResult) -> dict:
    """JSON-ready summary (see module docstring): per-layer mean and std overall, per pair, per dataset."""

    def stats(acc: np.ndarray) -> dict[str, list[float]]:
        return {"mean": acc.mean(-1).round(6).tolist(), "std": acc.std(-1).round(6).tolist()}

    out: dict = {"protocol": result.protocol, "layers": result.layers, "pairs": result.pairs,
                 "datasets": result.datasets}
    for probe, acc in result.dataset_accuracy.items():
        out[probe] = {
            **stats(result.overall(probe)),
            "per_pair": {p: stats(result.pair_accuracy(probe, p)) for p in result.pairs},
            "per_dataset": {d: stats(acc[:, i]) for i, d in enumerate(result.datasets)},
        }
    return out


def headline(summary: dict, paper_layer: int | None) -> dict:
    """Best layer and paper layer per probe from a `summarise` dict.

    `{"best": {probe: {"layer", "mean", "std"}}, "paper": {probe: {...} or None if the layer was not run}}`;
    ties in mean accuracy go to the shallower layer.
    """
    out: dict = {"best": {}, "paper": {}}
    layers = summary["layers"]
    for probe in PROBES:
        if probe not in summary:
            continue
        mean, std = summary[probe]["mean"], summary[probe]["std"]
        best = int(np.argmax(mean))
        out["best"][probe] = {"layer": layers[best], "mean": mean[best], "std": std[best]}
        at = layers.index(paper_layer) if paper_layer in layers else None
        out["paper"][probe] = None if at is None else {"layer": paper_layer, "mean": mean[at], "std": std[at]}
    return out

"""Lie-detection protocol of the paper: leave one topic pair out, repeated with resampling.

A dataset is one member of a topic pair: `cities` (affirmative) or `neg_cities` (negated). Each held-out
pair is tested in full; the probes train on the other pairs. In every repetition each training dataset
contributes a fresh random subset of the same size, `train_fraction` of the smallest training dataset
(so large datasets do not dominate, and repetitions differ). The subsets are drawn once per
(pair, repetition) from one seeded generator and shared by all layers and probes.

Accuracies are kept per held-out dataset, `[layers, datasets, repeats]`; `summarise` turns them into
the JSON blocks of `evaluation.json`:

    {"layers": [0, 1, ...], "pairs": [...], "datasets": [...],
     "<probe>": {"mean": [per layer], "std": [per layer],
                 "per_pair": {pair: {"mean": [...], "std": [...]}},
                 "per_dataset": {dataset: {"mean": [...], "std": [...]}}}}

`mean` over repeats; `std` is the standard deviation over repeats (resampling variability). The overall
accuracy of a repetition is the mean over held-out datasets, as the paper averages its datasets.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from joblib import Parallel, delayed

from tplo.data.schema import dataset_name
from tplo.eval.classifiers import fit_lr, fit_ttpd

PROBES = ("lr", "ttpd")


@dataclass(frozen=True)
class Split:
    """Row indices of one (held-out pair, repetition): training rows [n_train], test rows [n_test]."""

    pair: str
    repeat: int
    train: np.ndarray
    test: np.ndarray


def make_splits(
    topics: Sequence[str], negated: Sequence[bool], repeats: int = 20, train_fraction: float = 0.8, seed: int = 0
) -> list[Split]:
    """Leave-one-pair-out splits for every topic pair and repetition, deterministic given `seed`."""
    if not 0 < train_fraction <= 1:
        raise ValueError(f"train_fraction must be in (0, 1], got {train_fraction}")
    topics = np.asarray(topics, dtype=object)
    names = np.array([dataset_name(t, bool(n)) for t, n in zip(topics, negated)], dtype=object)
    pairs = sorted(set(topics))
    if len(pairs) < 2:
        raise ValueError(f"leave-one-pair-out needs at least two topic pairs, got {pairs}")
    rng = np.random.default_rng(seed)
    splits = []
    for pair in pairs:
        test = np.flatnonzero(topics == pair)
        train_sets = [np.flatnonzero(names == d) for d in sorted(set(names[topics != pair]))]
        size = max(2, int(train_fraction * min(len(rows) for rows in train_sets)))
        for repeat in range(repeats):
            train = np.concatenate([rng.choice(rows, size=min(size, len(rows)), replace=False) for rows in train_sets])
            splits.append(Split(pair, repeat, np.sort(train), test))
    return splits


def _held_out_accuracies(
    x: np.ndarray, y: np.ndarray, names: np.ndarray, polarity: np.ndarray, splits: Sequence[Split],
    probes: Sequence[str], C: float,
) -> dict[tuple[str, str, int], float]:
    """Accuracy per (probe, held-out dataset, repetition) of the given splits, on features x [N, H]."""
    out = {}
    for split in splits:
        tr, te = split.train, split.test
        fitted = {}
        if "lr" in probes:
            fitted["lr"] = fit_lr(x[tr], y[tr], C)
        if "ttpd" in probes:
            fitted["ttpd"] = fit_ttpd(x[tr], y[tr], names[tr], polarity[tr], C)
        for probe, model in fitted.items():
            correct = model.predict(x[te]) == y[te]
            for name in set(names[te]):
                out[probe, name, split.repeat] = float(correct[names[te] == name].mean())
    return out


@dataclass(frozen=True)
class ProtocolResult:
    """Held-out accuracies. `dataset_accuracy[probe]`: [n_layers, n_datasets, repeats]."""

    layers: list[int]
    pairs: list[str]
    datasets: list[str]
    dataset_pair: list[str]
    dataset_accuracy: dict[str, np.ndarray]

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
    n_jobs: int = 1,
    on_layer_done: Callable[[int], None] | None = None,
) -> ProtocolResult:
    """Leave-one-topic-pair-out lie detection on features [N, L + 1, H] for the chosen layers (default all).

    `labels` [N] in {0, 1}, `topics` [N] base topic names, `negated` [N]. The (layer, held-out pair) tasks
    run in parallel over `n_jobs` processes (-1: all cores); `on_layer_done(layer)` is called as each layer
    finishes (for progress bars).
    """
    unknown = set(probes) - set(PROBES)
    if unknown:
        raise ValueError(f"unknown probes {sorted(unknown)}; choose from {PROBES}")
    feats = features.numpy() if isinstance(features, torch.Tensor) else np.asarray(features)
    layers = list(range(feats.shape[1])) if layers is None else list(dict.fromkeys(int(l) for l in layers))
    bad = [l for l in layers if not 0 <= l < feats.shape[1]]
    if bad:
        raise ValueError(f"layers {bad} out of range: features have {feats.shape[1]} layers (0 = embeddings)")
    y = np.asarray(labels).astype(np.int64)
    neg = np.asarray(negated).astype(bool)
    names = np.array([dataset_name(t, n) for t, n in zip(topics, neg)], dtype=object)
    polarity = np.where(neg, -1.0, 1.0)
    splits = make_splits(topics, neg, repeats, train_fraction, seed)
    pair_of = dict(zip(names, topics))
    datasets = sorted(pair_of, key=lambda d: (pair_of[d], d != pair_of[d]))
    pairs = sorted(set(topics))
    # one task per (layer, held-out pair), so even a single layer uses every worker
    jobs = [(layer, pair) for layer in layers for pair in pairs]
    tasks = (
        delayed(_held_out_accuracies)(np.ascontiguousarray(feats[:, layer]), y, names, polarity,
                                      [s for s in splits if s.pair == pair], probes, C)
        for layer, pair in jobs
    )
    dataset_accuracy = {p: np.zeros((len(layers), len(datasets), repeats)) for p in probes}
    remaining = {layer: len(pairs) for layer in layers}
    for (layer, _), accuracies in zip(jobs, Parallel(n_jobs=n_jobs, return_as="generator")(tasks)):
        for (probe, name, repeat), acc in accuracies.items():
            dataset_accuracy[probe][layers.index(layer), datasets.index(name), repeat] = acc
        remaining[layer] -= 1
        if remaining[layer] == 0 and on_layer_done is not None:
            on_layer_done(layer)
    return ProtocolResult(layers, pairs, datasets, [pair_of[d] for d in datasets], dataset_accuracy)


def summarise(result: ProtocolResult) -> dict:
    """JSON-ready summary (see module docstring): per-layer mean and std overall, per pair, per dataset."""

    def stats(acc: np.ndarray) -> dict[str, list[float]]:
        return {"mean": acc.mean(-1).round(6).tolist(), "std": acc.std(-1).round(6).tolist()}

    out: dict = {"layers": result.layers, "pairs": result.pairs, "datasets": result.datasets}
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

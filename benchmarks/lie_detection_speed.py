"""Time the reference lie-detection protocol: tplo's batched torch fits against the scikit-learn loop.

    python benchmarks/lie_detection_speed.py [--layers 33 --hidden 4096 --repeats 20 --size-scale 1 --sklearn-fits 24]

Random features of Llama-3-8B's shape (33 hidden states of 4096 dims) for Truth_is_Universal's 12 datasets,
with the row counts of its CSVs (cities 1496, sp_en_trans 354, inventors 406, animal_class 164,
element_symb 186, facts 561, each with a `neg_` twin of the same size whose row k negates row k). A truth
direction, a truth x polarity direction and a polarity direction are planted with a strength that
peaks in the middle layers, on top of unit noise and a random offset per dataset, so held-out
accuracies are meaningful rather than 0.5.

The full protocol (every layer, 6 held-out pairs, `--repeats` repetitions, LR and TTPD) runs through
`run_protocol`, one layer per call; after each layer the scikit-learn loop (`tplo.eval.classifiers`,
the reference code's estimators) fits a share of `--sklearn-fits` sampled (layer, pair, repetition)
triples on the same splits, so both sides see the same machine load. A "fit" is one triple: an LR
probe and a TTPD probe trained and tested on both held-out datasets. Prints both times per fit, their
ratio, the largest accuracy difference over the compared fits and the protocol's wall time; the last
line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings

import numpy as np
import torch
from sklearn.exceptions import ConvergenceWarning
from threadpoolctl import threadpool_limits

from tplo.data.schema import dataset_name
from tplo.eval.classifiers import fit_lr, fit_ttpd
from tplo.eval.lie_detection import make_splits, run_protocol, summarise

SIZES = {"cities": 1496, "sp_en_trans": 354, "inventors": 406, "animal_class": 164, "element_symb": 186,
         "facts": 561}


def statements(scale: float, seed: int) -> tuple[np.ndarray, list[str], np.ndarray]:
    """Labels [N], topics [N], negated [N]: every topic's affirmative rows, then their negations."""
    rng = np.random.default_rng(seed)
    labels, topics, negated = [], [], []
    for topic, size in SIZES.items():
        n = max(4, round(size * scale))
        base = rng.permutation(np.arange(n) % 2)
        labels += [base, 1 - base]
        topics += [topic] * (2 * n)
        negated += [False] * n + [True] * n
    return np.concatenate(labels), topics, np.array(negated)


def features(labels: np.ndarray, topics: list[str], negated: np.ndarray, layers: int, hidden: int,
             seed: int) -> torch.Tensor:
    """Float32 activations [N, layers, hidden] with planted truth, truth x polarity and polarity directions."""
    gen = torch.Generator().manual_seed(seed)
    truth = torch.as_tensor(2.0 * labels - 1)
    polarity = torch.as_tensor(np.where(negated, -1.0, 1.0))
    names = [dataset_name(t, bool(n)) for t, n in zip(topics, negated)]
    group = torch.as_tensor(np.unique(names, return_inverse=True)[1])
    out = torch.empty(len(labels), layers, hidden)
    for layer in range(layers):
        strength = float(np.sin(np.pi * (layer + 0.5) / layers))
        t_g, t_p, pol = torch.linalg.qr(torch.randn(hidden, 3, generator=gen, dtype=torch.float64))[0].T
        offsets = 0.5 * torch.randn(int(group.max()) + 1, hidden, generator=gen, dtype=torch.float64)
        planted = (torch.outer(1.5 * strength * truth, t_g) + torch.outer(2.0 * strength * truth * polarity, t_p)
                   + torch.outer(2.0 * polarity, pol) + offsets[group])
        out[:, layer] = torch.randn(len(labels), hidden, generator=gen) + planted.float()
    return out


def sklearn_fit(x: np.ndarray, labels: np.ndarray, names: np.ndarray, polarity: np.ndarray, train: np.ndarray,
                test_sets: dict[str, np.ndarray]) -> tuple[dict[tuple[str, str], float], float, float]:
    """Reference-protocol LR and TTPD on one split: ({(probe, dataset): accuracy}, LR seconds, TTPD seconds)."""
    accuracy = {}
    start = time.perf_counter()
    lr = fit_lr(x[train], labels[train])
    for name, rows in test_sets.items():
        accuracy["lr", name] = float((lr.predict(x[rows]) == labels[rows]).mean())
    middle = time.perf_counter()
    ttpd = fit_ttpd(x[train], labels[train], names[train], polarity[train])
    for name, rows in test_sets.items():
        accuracy["ttpd", name] = float((ttpd.predict(x[rows]) == labels[rows]).mean())
    return accuracy, middle - start, time.perf_counter() - middle


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=33, help="hidden states, embeddings included")
    parser.add_argument("--hidden", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--size-scale", type=float, default=1.0, help="multiplies every dataset size")
    parser.add_argument("--sklearn-fits", type=int, default=24, help="(layer, pair, repetition) triples for sklearn")
    parser.add_argument("--device", default=None, help="fitting device of tplo (default: CUDA if available)")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads of torch and of scikit-learn's BLAS alike (default: torch's default)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", category=ConvergenceWarning)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
        threadpool_limits(args.threads)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")

    labels, topics, negated = statements(args.size_scale, args.seed)
    feats = features(labels, topics, negated, args.layers, args.hidden, args.seed)
    names = np.array([dataset_name(t, bool(n)) for t, n in zip(topics, negated)], dtype=object)
    polarity = np.where(negated, -1.0, 1.0)
    splits = make_splits(topics, negated, args.repeats, seed=args.seed)
    pairs = sorted(set(topics))
    triples = [(layer, s) for layer in range(args.layers) for s in splits]
    rng = np.random.default_rng(args.seed)
    sampled = sorted(rng.choice(len(triples), size=min(args.sklearn_fits, len(triples)), replace=False))
    by_layer = {layer: [triples[i][1] for i in sampled if triples[i][0] == layer] for layer in range(args.layers)}

    results, tplo_s, sklearn_lr_s, sklearn_ttpd_s, compared = [], 0.0, 0.0, 0.0, []
    for layer in range(args.layers):
        start = time.perf_counter()
        result = run_protocol(feats, labels, topics, negated, layers=[layer], repeats=args.repeats, seed=args.seed,
                              device=device)
        tplo_s += time.perf_counter() - start
        results.append(result)
        x = feats[:, layer].numpy()
        for split in by_layer[layer]:
            test_sets = {d: split.test[names[split.test] == d] for d in sorted(set(names[split.test]))}
            accuracy, lr_s, ttpd_s = sklearn_fit(x, labels, names, polarity, split.train, test_sets)
            sklearn_lr_s, sklearn_ttpd_s = sklearn_lr_s + lr_s, sklearn_ttpd_s + ttpd_s
            for (probe, d), acc in accuracy.items():
                compared.append((probe, acc, result.dataset_accuracy[probe][0, result.datasets.index(d), split.repeat]))

    n_fits = args.layers * len(pairs) * args.repeats
    n_sklearn = len(sampled)
    tplo_per_fit = tplo_s / n_fits
    sklearn_per_fit = (sklearn_lr_s + sklearn_ttpd_s) / max(n_sklearn, 1)
    gaps = np.array([abs(a - b) for _, a, b in compared])
    bias = np.array([b - a for _, a, b in compared])
    summaries = [summarise(r) for r in results]
    best = {p: max(s[p]["mean"][0] for s in summaries) for p in ("lr", "ttpd")}
    out = {
        "layers": args.layers, "hidden": args.hidden, "rows": len(labels), "repeats": args.repeats,
        "pairs": len(pairs), "fits": n_fits, "device": device,
        "threads": torch.get_num_threads(),
        "tplo_protocol_s": round(tplo_s, 2), "tplo_s_per_fit": round(tplo_per_fit, 5),
        "sklearn_fits": n_sklearn, "sklearn_s_per_fit": round(sklearn_per_fit, 5),
        "sklearn_lr_s_per_fit": round(sklearn_lr_s / max(n_sklearn, 1), 5),
        "sklearn_ttpd_s_per_fit": round(sklearn_ttpd_s / max(n_sklearn, 1), 5),
        "ratio": round(sklearn_per_fit / tplo_per_fit, 2),
        "compared_accuracies": len(compared),
        "max_accuracy_diff_points": round(100 * float(gaps.max()), 3) if compared else None,
        "mean_accuracy_diff_points": round(100 * float(bias.mean()), 4) if compared else None,
        "best_layer_accuracy": {p: round(v, 4) for p, v in best.items()},
        "sklearn_protocol_estimate_s": round(sklearn_per_fit * n_fits, 1),
    }
    print(f"tplo: {tplo_s:.1f} s for the full protocol ({n_fits} fits, {1e3 * tplo_per_fit:.2f} ms per fit)")
    print(f"scikit-learn: {1e3 * sklearn_per_fit:.1f} ms per fit over {n_sklearn} sampled fits "
          f"(LR {1e3 * out['sklearn_lr_s_per_fit']:.1f} ms, TTPD {1e3 * out['sklearn_ttpd_s_per_fit']:.1f} ms)")
    print(f"ratio {out['ratio']}x; largest accuracy difference over {len(compared)} compared accuracies: "
          f"{out['max_accuracy_diff_points']} points (mean {out['mean_accuracy_diff_points']})")
    print(json.dumps(out))


if __name__ == "__main__":
    main()

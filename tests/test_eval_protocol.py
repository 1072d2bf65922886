"""Leave-one-topic-pair-out protocols: the reference subsets, no leakage, agreement with scikit-learn, determinism."""

import numpy as np
import pytest
import torch

from tplo.data.schema import dataset_name
from tplo.eval.classifiers import fit_lr, fit_ttpd
from tplo.eval.lie_detection import headline, make_splits, run_protocol, summarise

TOPICS = ["animals", "cities", "facts"]
SIZES = {"animals": 30, "cities": 50, "facts": 40}


def synthetic(seed=0, sizes=SIZES, layers=4, hidden=12, signal_layer=2, strength=1.5):
    """Features [N, layers, hidden] where only `signal_layer` carries truth (a planted general direction).

    Each topic has an affirmative and a negated dataset of equal size; row k of the negated one has the
    opposite label of row k of the affirmative one, as negations do.
    """
    rng = np.random.default_rng(seed)
    topics, negated, labels = [], [], []
    for t, n in sizes.items():
        base = rng.permutation(np.arange(n) % 2)
        for neg in (False, True):
            topics += [t] * n
            negated += [neg] * n
            labels += list(1 - base if neg else base)
    y = np.array(labels)
    feats = rng.normal(0, 1, (len(y), layers, hidden))
    feats[:, signal_layer, 0] += strength * (2 * y - 1)
    return torch.tensor(feats, dtype=torch.float32), torch.tensor(y), topics, torch.tensor(negated)


# reference subsets on a table small enough to check by hand: rows 0-2 a, 3-5 neg_a, 6-10 b, 11-15 neg_b, 16-19 c
TINY_TOPICS = ["a"] * 6 + ["b"] * 10 + ["c"] * 4
TINY_NEGATED = [False] * 3 + [True] * 3 + [False] * 5 + [True] * 5 + [False] * 4


def test_reference_subsets_are_the_smallest_dataset_size_with_shared_positions():
    splits = make_splits(TINY_TOPICS, TINY_NEGATED, repeats=4, seed=0)
    assert [(s.pair, s.repeat) for s in splits] == [(p, r) for p in "abc" for r in range(4)]
    for split in splits:
        np.testing.assert_array_equal(split.test, {"a": np.arange(6), "b": np.arange(6, 16),
                                                   "c": np.arange(16, 20)}[split.pair])
        train = set(split.train.tolist())
        assert len(train) == len(split.train)  # drawn without replacement
        aff_a, neg_a = {r for r in train if r < 3}, {r - 3 for r in train if 3 <= r < 6}
        aff_b, neg_b = {r - 6 for r in train if 6 <= r < 11}, {r - 11 for r in train if 11 <= r < 16}
        c = {r for r in train if r >= 16}
        # 3 = size of the smallest dataset (a), even where a is held out; neg_x reuses x's positions
        if split.pair != "a":
            assert aff_a == neg_a == {0, 1, 2}
        if split.pair != "b":
            assert len(aff_b) == 3 and neg_b == aff_b
        if split.pair != "c":
            assert len(c) == 3  # a topic without negations draws for its one dataset
        assert not train & set(split.test.tolist())
    held_out_a = [frozenset(s.train.tolist()) for s in splits if s.pair == "a"]
    assert len(set(held_out_a)) > 1  # repetitions redraw


def test_reference_subsets_deterministic_under_seed():
    a = make_splits(TINY_TOPICS, TINY_NEGATED, repeats=3, seed=7)
    b = make_splits(TINY_TOPICS, TINY_NEGATED, repeats=3, seed=7)
    c = make_splits(TINY_TOPICS, TINY_NEGATED, repeats=3, seed=8)
    assert all(np.array_equal(x.train, y.train) for x, y in zip(a, b))
    assert not all(np.array_equal(x.train, y.train) for x, y in zip(a, c))


def test_reference_protocol_needs_aligned_negations():
    with pytest.raises(ValueError, match="differ in size"):
        make_splits(["a"] * 5 + ["b"] * 4, [False, False, True, True, True] + [False, False, True, True])


def test_regularised_subsets_draw_a_fraction_of_the_smallest_training_dataset_independently():
    _, _, topics, negated = synthetic()
    topics_arr = np.array(topics)
    splits = make_splits(topics, negated.tolist(), repeats=3, seed=0, protocol="regularised", train_fraction=0.5)
    assert len(splits) == len(TOPICS) * 3
    shared = []
    for split in splits:
        assert set(topics_arr[split.train]).isdisjoint(topics_arr[split.test])
        np.testing.assert_array_equal(split.test, np.flatnonzero(topics_arr == split.pair))
        names = [dataset_name(topics[i], bool(negated[i])) for i in split.train]
        counts = {d: names.count(d) for d in set(names)}
        smallest = min(n for t, n in SIZES.items() if t != split.pair)
        assert len(counts) == 4 and set(counts.values()) == {int(0.5 * smallest)}
        start = {t: sum(2 * n for u, n in SIZES.items() if TOPICS.index(u) < TOPICS.index(t)) for t in TOPICS}
        for t in set(TOPICS) - {split.pair}:
            aff = {r - start[t] for r in split.train if start[t] <= r < start[t] + SIZES[t]}
            neg = {r - start[t] - SIZES[t] for r in split.train if start[t] + SIZES[t] <= r < start[t] + 2 * SIZES[t]}
            shared.append(aff == neg)
    assert not all(shared)


def test_single_topic_pair_and_unknown_protocol_are_rejected():
    with pytest.raises(ValueError, match="two topic pairs"):
        make_splits(["cities"] * 4, [False, False, True, True])
    with pytest.raises(ValueError, match="unknown protocol"):
        make_splits(TINY_TOPICS, TINY_NEGATED, protocol="paper")


@pytest.mark.parametrize("protocol, C", [("reference", None), ("regularised", 1.0)])
def test_batched_protocol_matches_scikit_learn_split_by_split(protocol, C):
    feats, y, topics, negated = synthetic()
    feats = feats.double()  # float64 fits follow scikit-learn's lbfgs path to rounding
    result = run_protocol(feats, y, topics, negated, layers=[2], repeats=2, seed=3, protocol=protocol)
    assert result.protocol == protocol
    names = np.array([dataset_name(t, bool(n)) for t, n in zip(topics, negated)])
    pol = np.where(negated.numpy(), -1.0, 1.0)
    x, yy = feats[:, 2].numpy(), y.numpy()
    accuracies = []
    for split in make_splits(topics, negated.tolist(), repeats=2, seed=3, protocol=protocol):
        tr = split.train
        lr = fit_lr(x[tr], yy[tr], C)
        ttpd = fit_ttpd(x[tr], yy[tr], names[tr], pol[tr], C)
        for neg in (False, True):
            rows = split.test[names[split.test] == dataset_name(split.pair, neg)]
            d = result.datasets.index(dataset_name(split.pair, neg))
            assert result.dataset_accuracy["lr"][0, d, split.repeat] == (lr.predict(x[rows]) == yy[rows]).mean()
            assert result.dataset_accuracy["ttpd"][0, d, split.repeat] == (ttpd.predict(x[rows]) == yy[rows]).mean()
            accuracies.append(result.dataset_accuracy["ttpd"][0, d, split.repeat])
    assert 0.6 < np.mean(accuracies) < 1  # a test with errors to get wrong


def test_float32_protocol_agrees_with_float64_within_a_statement():
    feats, y, topics, negated = synthetic()
    single = run_protocol(feats, y, topics, negated, layers=[2], repeats=2, seed=1)
    double = run_protocol(feats.double(), y, topics, negated, layers=[2], repeats=2, seed=1)
    for probe in ("lr", "ttpd"):
        gap = np.abs(single.dataset_accuracy[probe] - double.dataset_accuracy[probe])
        assert gap.max() <= 1 / min(SIZES.values()) + 1e-12


def test_protocol_finds_the_signal_layer_and_summarises_it():
    feats, y, topics, negated = synthetic(strength=3.0)
    done = []
    result = run_protocol(feats, y, topics, negated, repeats=3, seed=0, on_layer_done=done.append)
    assert done == [0, 1, 2, 3]
    summary = summarise(result)
    assert summary["protocol"] == "reference"
    assert summary["pairs"] == TOPICS
    assert summary["datasets"] == ["animals", "neg_animals", "cities", "neg_cities", "facts", "neg_facts"]
    for probe in ("lr", "ttpd"):
        mean = np.array(summary[probe]["mean"])
        assert mean.argmax() == 2 and mean[2] > 0.9 and max(mean[[0, 1, 3]]) < 0.75
        per_pair = np.array([summary[probe]["per_pair"][p]["mean"] for p in TOPICS])
        per_dataset = np.array([summary[probe]["per_dataset"][d]["mean"] for d in summary["datasets"]])
        np.testing.assert_allclose(per_pair, per_dataset.reshape(3, 2, -1).mean(1), atol=1e-5)
        np.testing.assert_allclose(mean, per_dataset.mean(0), atol=1e-5)
        assert np.all(np.array(summary[probe]["std"]) >= 0)


def test_protocol_deterministic_and_each_layer_independent_of_the_others():
    feats, y, topics, negated = synthetic()
    one = run_protocol(feats, y, topics, negated, layers=[1, 2], repeats=2, seed=5)
    again = run_protocol(feats, y, topics, negated, layers=[2], repeats=2, seed=5, device="cpu")
    other = run_protocol(feats, y, topics, negated, layers=[1, 2], repeats=2, seed=6)
    for probe in ("lr", "ttpd"):
        np.testing.assert_array_equal(one.dataset_accuracy[probe][1:], again.dataset_accuracy[probe])
    assert not np.array_equal(one.dataset_accuracy["ttpd"], other.dataset_accuracy["ttpd"])


def test_protocol_runs_one_probe_alone():
    feats, y, topics, negated = synthetic()
    both = run_protocol(feats, y, topics, negated, layers=[2], repeats=2, seed=0)
    for probe in ("lr", "ttpd"):
        alone = run_protocol(feats, y, topics, negated, layers=[2], repeats=2, seed=0, probes=[probe])
        assert list(alone.dataset_accuracy) == [probe]
        np.testing.assert_array_equal(alone.dataset_accuracy[probe], both.dataset_accuracy[probe])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_protocol_on_the_gpu_matches_the_cpu():
    feats, y, topics, negated = synthetic()
    feats = feats.double()
    cpu = run_protocol(feats, y, topics, negated, layers=[2], repeats=2, seed=0, device="cpu")
    gpu = run_protocol(feats, y, topics, negated, layers=[2], repeats=2, seed=0, device="cuda")
    for probe in ("lr", "ttpd"):
        np.testing.assert_array_equal(cpu.dataset_accuracy[probe], gpu.dataset_accuracy[probe])


def test_protocol_rejects_bad_layers_probes_and_protocols():
    feats, y, topics, negated = synthetic()
    with pytest.raises(ValueError, match="out of range"):
        run_protocol(feats, y, topics, negated, layers=[4], repeats=1)
    with pytest.raises(ValueError, match="unknown probes"):
        run_protocol(feats, y, topics, negated, probes=["svm"], repeats=1)
    with pytest.raises(ValueError, match="unknown protocol"):
        run_protocol(feats, y, topics, negated, protocol="paper", repeats=1)


def test_headline_picks_the_best_and_the_paper_layer():
    summary = {"layers": [0, 1, 2], "lr": {"mean": [0.5, 0.9, 0.9], "std": [0.1, 0.2, 0.3]},
               "ttpd": {"mean": [0.7, 0.6, 0.8], "std": [0.0, 0.0, 0.05]}}
    got = headline(summary, paper_layer=1)
    assert got["best"] == {"lr": {"layer": 1, "mean": 0.9, "std": 0.2}, "ttpd": {"layer": 2, "mean": 0.8, "std": 0.05}}
    assert got["paper"]["ttpd"] == {"layer": 1, "mean": 0.6, "std": 0.0}
    assert headline(summary, paper_layer=7)["paper"] == {"lr": None, "ttpd": None}

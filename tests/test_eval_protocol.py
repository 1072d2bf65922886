"""Leave-one-topic-pair-out protocol: no leakage, fresh resamples per repetition, determinism."""

import numpy as np
import pytest
import torch

from tplo.data.schema import dataset_name
from tplo.eval.lie_detection import headline, make_splits, run_protocol, summarise
from tplo.eval.classifiers import fit_lr, fit_ttpd

TOPICS = ["animals", "cities", "facts"]


def synthetic(seed=0, n=40, layers=4, hidden=12, signal_layer=2):
    """Features [N, layers, hidden] where only `signal_layer` carries truth (a planted general direction)."""
    rng = np.random.default_rng(seed)
    topics, negated, labels = [], [], []
    for t in TOPICS:
        for neg in (False, True):
            topics += [t] * n
            negated += [neg] * n
            labels += list(rng.permutation(np.arange(n) % 2))
    y = np.array(labels)
    feats = rng.normal(0, 1, (len(y), layers, hidden))
    feats[:, signal_layer, 0] += 2.0 * (2 * y - 1)
    return torch.tensor(feats, dtype=torch.float32), torch.tensor(y), topics, torch.tensor(negated)


def test_splits_never_leak_the_held_out_pair_and_test_on_all_of_it():
    _, _, topics, negated = synthetic()
    topics_arr = np.array(topics)
    splits = make_splits(topics, negated.tolist(), repeats=3, seed=0)
    assert len(splits) == len(TOPICS) * 3
    for split in splits:
        assert set(topics_arr[split.train]).isdisjoint(topics_arr[split.test])
        np.testing.assert_array_equal(split.test, np.flatnonzero(topics_arr == split.pair))
        names = [dataset_name(topics[i], bool(negated[i])) for i in split.train]
        counts = {d: names.count(d) for d in set(names)}
        assert len(counts) == 4 and len(set(counts.values())) == 1  # every training dataset, same share
        assert counts[next(iter(counts))] == int(0.8 * 40)


def test_repetitions_draw_different_resamples():
    _, _, topics, negated = synthetic()
    splits = make_splits(topics, negated.tolist(), repeats=4, seed=0)
    for pair in TOPICS:
        trains = [tuple(s.train) for s in splits if s.pair == pair]
        assert len(set(trains)) == 4


def test_splits_deterministic_under_seed():
    _, _, topics, negated = synthetic()
    a = make_splits(topics, negated.tolist(), repeats=2, seed=7)
    b = make_splits(topics, negated.tolist(), repeats=2, seed=7)
    c = make_splits(topics, negated.tolist(), repeats=2, seed=8)
    assert all(np.array_equal(x.train, y.train) for x, y in zip(a, b))
    assert not all(np.array_equal(x.train, y.train) for x, y in zip(a, c))


def test_single_topic_pair_is_rejected():
    with pytest.raises(ValueError, match="two topic pairs"):
        make_splits(["cities"] * 4, [False, False, True, True])


def test_protocol_accuracies_match_a_hand_run_of_each_split():
    feats, y, topics, negated = synthetic()
    result = run_protocol(feats, y, topics, negated, layers=[2], repeats=2, seed=3)
    names = np.array([dataset_name(t, bool(n)) for t, n in zip(topics, negated)])
    pol = np.where(negated.numpy(), -1.0, 1.0)
    x, yy = feats[:, 2].numpy(), y.numpy()
    for split in make_splits(topics, negated.tolist(), repeats=2, seed=3):
        lr = fit_lr(x[split.train], yy[split.train])
        ttpd = fit_ttpd(x[split.train], yy[split.train], names[split.train], pol[split.train])
        for neg in (False, True):
            rows = split.test[names[split.test] == dataset_name(split.pair, neg)]
            d = result.datasets.index(dataset_name(split.pair, neg))
            assert result.dataset_accuracy["lr"][0, d, split.repeat] == (lr.predict(x[rows]) == yy[rows]).mean()
            assert result.dataset_accuracy["ttpd"][0, d, split.repeat] == (ttpd.predict(x[rows]) == yy[rows]).mean()


def test_protocol_finds_the_signal_layer_and_summarises_it():
    feats, y, topics, negated = synthetic()
    done = []
    result = run_protocol(feats, y, topics, negated, repeats=3, seed=0, on_layer_done=done.append)
    assert done == [0, 1, 2, 3]
    summary = summarise(result)
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


def test_protocol_deterministic_and_independent_of_parallelism():
    feats, y, topics, negated = synthetic()
    one = run_protocol(feats, y, topics, negated, layers=[1, 2], repeats=2, seed=5, n_jobs=1)
    two = run_protocol(feats, y, topics, negated, layers=[1, 2], repeats=2, seed=5, n_jobs=2)
    other = run_protocol(feats, y, topics, negated, layers=[1, 2], repeats=2, seed=6, n_jobs=1)
    for probe in ("lr", "ttpd"):
        np.testing.assert_array_equal(one.dataset_accuracy[probe], two.dataset_accuracy[probe])
    assert not np.array_equal(one.dataset_accuracy["lr"], other.dataset_accuracy["lr"])


def test_protocol_rejects_bad_layers_and_probes():
    feats, y, topics, negated = synthetic()
    with pytest.raises(ValueError, match="out of range"):
        run_protocol(feats, y, topics, negated, layers=[4], repeats=1)
    with pytest.raises(ValueError, match="unknown probes"):
        run_protocol(feats, y, topics, negated, probes=["svm"], repeats=1)


def test_headline_picks_the_best_and_the_paper_layer():
    summary = {"layers": [0, 1, 2], "lr": {"mean": [0.5, 0.9, 0.9], "std": [0.1, 0.2, 0.3]},
               "ttpd": {"mean": [0.7, 0.6, 0.8], "std": [0.0, 0.0, 0.05]}}
    got = headline(summary, paper_layer=1)
    assert got["best"] == {"lr": {"layer": 1, "mean": 0.9, "std": 0.2}, "ttpd": {"layer": 2, "mean": 0.8, "std": 0.05}}
    assert got["paper"]["ttpd"] == {"layer": 1, "mean": 0.6, "std": 0.0}
    assert headline(summary, paper_layer=7)["paper"] == {"lr": None, "ttpd": None}

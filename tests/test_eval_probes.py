"""LR and TTPD probes on synthetic activations with a planted truth direction and a polarity flip, and the
batched torch logistic regression against scikit-learn."""

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from tplo.eval.classifiers import centre_per_dataset, fit_lr, fit_ttpd, polarity_direction, truth_directions
from tplo.eval.logistic import fit_logistic

H = 16
T_G, T_P, P = np.eye(H)[0], np.eye(H)[1], np.eye(H)[2]


def statements(rng, topic_offset, negated, n=300, g=1.0, h=3.0, c=2.0, y=None):
    """Activations a = offset + g*truth*t_G + h*truth*polarity*t_P + c*polarity*p + noise.

    The truth*polarity direction t_P is strong and clean, so a probe that has only seen affirmative
    statements leans on it, and it flips sign under negation. t_G keeps its sign (general truth).
    """
    s = -1.0 if negated else 1.0
    y = rng.permutation(np.arange(n) % 2) if y is None else y
    truth = 2.0 * y - 1.0
    noise = rng.normal(0, 1, (n, H)) * np.r_[0.5, 0.5, np.ones(H - 2)]
    x = topic_offset + noise + np.outer(g * truth, T_G) + np.outer(h * truth * s, T_P) + s * c * P
    return x, y


def offsets(rng, topics):
    return {t: np.r_[0.0, 0.0, 0.0, rng.normal(0, 1, H - 3)] for t in topics}


def corpus(rng, offs, members):
    """Stack (topic, negated) datasets: x [N, H], y [N], dataset ids [N], polarity [N]."""
    parts = [statements(rng, offs[t], neg) for t, neg in members]
    x = np.concatenate([p[0] for p in parts])
    y = np.concatenate([p[1] for p in parts])
    ids = np.concatenate([np.full(len(p[1]), f"{'neg_' if neg else ''}{t}") for p, (t, neg) in zip(parts, members)])
    pol = np.concatenate([np.full(len(p[1]), -1.0 if neg else 1.0) for p, (_, neg) in zip(parts, members)])
    return x, y, ids, pol


@pytest.mark.parametrize("C", [None, 1.0])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ttpd_generalises_to_negated_statements_where_affirmative_lr_does_not(seed, C):
    rng = np.random.default_rng(seed)
    offs = offsets(rng, ["a", "b", "c", "held_out"])
    train_topics = ["a", "b", "c"]
    x, y, ids, pol = corpus(rng, offs, [(t, neg) for t in train_topics for neg in (False, True)])
    affirmative = pol > 0
    x_aff, y_aff = corpus(rng, offs, [("held_out", False)])[:2]
    x_neg, y_neg = corpus(rng, offs, [("held_out", True)])[:2]

    lr = fit_lr(x[affirmative], y[affirmative], C)
    ttpd = fit_ttpd(x, y, ids, pol, C)

    assert (lr.predict(x_aff) == y_aff).mean() > 0.95  # a working probe on what it has seen...
    assert (lr.predict(x_neg) == y_neg).mean() < 0.2  # ...that reads t_P, which negation flips
    assert (ttpd.predict(x_aff) == y_aff).mean() > 0.9
    assert (ttpd.predict(x_neg) == y_neg).mean() > 0.9
    cos = ttpd.t_g @ T_G / np.linalg.norm(ttpd.t_g)
    assert cos > 0.95


def test_truth_directions_recover_planted_directions_exactly_without_noise():
    truth = np.array([1, -1, 1, -1, 1, -1, 1, -1])
    pol = np.array([1, 1, 1, 1, -1, -1, -1, -1])
    y = (truth > 0).astype(int)
    t_g, t_p = np.array([1.0, 2.0, 0.0]), np.array([0.0, -1.0, 3.0])
    x = np.outer(truth, t_g) + np.outer(truth * pol, t_p)
    got_g, got_p = truth_directions(x, y, pol)
    np.testing.assert_allclose(got_g, t_g, atol=1e-12)
    np.testing.assert_allclose(got_p, t_p, atol=1e-12)
    only_g, none = truth_directions(x[:4], y[:4], pol[:4])
    np.testing.assert_allclose(only_g, t_g + t_p, atol=1e-12)
    assert none is None


def test_centre_per_dataset_removes_each_dataset_mean():
    x = np.array([[1.0, 2.0], [3.0, 4.0], [10.0, 0.0], [20.0, 0.0], [30.0, 6.0]])
    ids = np.array(["a", "a", "b", "b", "b"])
    expected = np.array([[-1.0, -1.0], [1.0, 1.0], [-10.0, -2.0], [0.0, -2.0], [10.0, 4.0]])
    np.testing.assert_allclose(centre_per_dataset(x, ids), expected)


@pytest.mark.parametrize("C", [None, 1.0])
def test_polarity_direction_points_to_affirmative_side(C):
    rng = np.random.default_rng(0)
    pol = np.repeat([1.0, -1.0], 100)
    x = rng.normal(0, 1, (200, 5)) * [1, 1, 1, 10, 1] + np.outer(pol, [0, 0, 3.0, 0, 0])
    d = polarity_direction(x, pol, C)
    assert np.argmax(np.abs(d)) == 2 and d[2] > 0


def test_ttpd_with_one_polarity_is_a_one_dimensional_probe():
    rng = np.random.default_rng(0)
    offs = offsets(rng, ["a", "b"])
    x, y, ids, pol = corpus(rng, offs, [("a", False), ("b", False)])
    probe = fit_ttpd(x, y, ids, pol)
    assert probe.polarity_direction is None and probe.t_p is None
    assert probe.project(x).shape == (len(x), 1)
    assert (probe.predict(x) == y).mean() > 0.95


def test_ttpd_truth_direction_ignores_dataset_offsets_correlated_with_label_balance():
    rng = np.random.default_rng(0)
    parts, ids, pols = [], [], []
    # datasets with more true statements sit at +10 along e_3, the others at -10, in both polarities
    for k, (share_true, offset, neg) in enumerate([(0.8, 10.0, False), (0.2, -10.0, False), (0.8, 10.0, True),
                                                   (0.2, -10.0, True)]):
        y = (rng.random(200) < share_true).astype(int)
        parts.append(statements(rng, offset * np.eye(H)[3], neg, n=200, y=y))
        ids.append(np.full(200, k))
        pols.append(np.full(200, -1.0 if neg else 1.0))
    x, y = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
    t_g = fit_ttpd(x, y, np.concatenate(ids), np.concatenate(pols)).t_g
    assert t_g @ T_G / np.linalg.norm(t_g) > 0.95  # uncentred, the label-correlated offsets leak into t_G


def logistic_data(rng, n, d):
    """Rows [n, d] off the origin with one informative feature, labels [n]; separable when n < d."""
    y = (rng.random(n) < 0.5).astype(int)
    x = rng.normal(size=(n, d)) + rng.normal(0, 2, d)
    x[:, 0] += 2 * y - 1
    return x, y


def torch_fit(x, y, **kwargs):
    """One fit of all rows."""
    return fit_logistic(torch.tensor(x), torch.tensor(y, dtype=torch.float64)[None],
                        torch.ones(1, len(y), dtype=torch.float64), **kwargs)


def relative(a, b):
    return np.linalg.norm(a - b) / np.linalg.norm(b)


@pytest.mark.parametrize("n, d", [(60, 200), (300, 20)])
@pytest.mark.parametrize("max_iter", [3, 100])
def test_unpenalised_fit_follows_scikit_learns_lbfgs_path(n, d, max_iter):
    x, y = logistic_data(np.random.default_rng(n + max_iter), n, d)
    reference = LogisticRegression(C=np.inf, max_iter=max_iter).fit(x, y)
    fit = torch_fit(x, y, max_iter=max_iter)
    assert fit.n_iter.item() == reference.n_iter_[0] <= max_iter
    params = np.r_[fit.coef[0].numpy(), fit.intercept.item()]
    assert relative(params, np.r_[reference.coef_[0], reference.intercept_]) < 1e-8
    x_new = logistic_data(np.random.default_rng(1), 500, d)[0]
    np.testing.assert_array_equal(fit.predict(torch.tensor(x_new))[0].numpy(), reference.predict(x_new))


@pytest.mark.parametrize("standardise", [False, True])
def test_penalised_fit_reaches_scikit_learns_optimum(standardise):
    x, y = logistic_data(np.random.default_rng(0), 80, 40)
    model = LogisticRegression(C=0.5, tol=1e-10, max_iter=10_000)
    reference = (make_pipeline(StandardScaler(), model) if standardise else model).fit(x, y)
    coef, intercept = model.coef_[0], model.intercept_[0]
    if standardise:
        coef = coef / reference[0].scale_
        intercept -= reference[0].mean_ @ coef
    fit = torch_fit(x, y, C=0.5, standardise=standardise, tol=1e-8, max_iter=1000)
    assert relative(fit.coef[0].numpy(), coef) < 1e-5
    assert fit.intercept.item() == pytest.approx(intercept, abs=1e-5)


def test_weights_pick_rows_and_both_layouts_fit_the_same_models():
    rng = np.random.default_rng(0)
    x, y = logistic_data(rng, 90, 30)
    rows = [np.arange(0, 60), np.arange(30, 90), rng.choice(90, 50, replace=False)]
    labels = np.stack([y, 1 - y, (x[:, 1] > np.median(x[:, 1])).astype(int)])
    weight = np.zeros((3, 90))
    for b, r in enumerate(rows):
        weight[b, r] = 1.0
    shared = fit_logistic(torch.tensor(x), torch.tensor(labels, dtype=torch.float64), torch.tensor(weight))
    per_fit = fit_logistic(torch.tensor(x).expand(3, -1, -1), torch.tensor(labels, dtype=torch.float64),
                           torch.tensor(weight))
    for b, r in enumerate(rows):
        alone = LogisticRegression(C=np.inf).fit(x[r], labels[b, r])
        for fit in (shared, per_fit):
            assert relative(fit.coef[b].numpy(), alone.coef_[0]) < 1e-9
    np.testing.assert_array_equal(shared.n_iter.numpy(), per_fit.n_iter.numpy())


def test_sample_weights_match_scikit_learns_weighted_objective():
    rng = np.random.default_rng(3)
    x, y = logistic_data(rng, 100, 10)
    w = rng.uniform(0.1, 3.0, 100)
    reference = LogisticRegression(C=2.0, tol=1e-10, max_iter=10_000).fit(x, y, sample_weight=w)
    fit = fit_logistic(torch.tensor(x), torch.tensor(y, dtype=torch.float64)[None], torch.tensor(w)[None], C=2.0,
                       tol=1e-8, max_iter=1000)
    assert relative(fit.coef[0].numpy(), reference.coef_[0]) < 1e-5


def test_float32_products_stay_on_scikit_learns_path():
    x, y = logistic_data(np.random.default_rng(5), 100, 300)
    reference = LogisticRegression(C=np.inf).fit(x.astype(np.float32).astype(np.float64), y)
    fit = fit_logistic(torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.float64)[None],
                       torch.ones(1, 100, dtype=torch.float64))
    assert fit.n_iter.item() == reference.n_iter_[0]
    assert relative(fit.coef[0].numpy(), reference.coef_[0]) < 1e-4


def test_fit_logistic_rejects_mismatched_shapes_and_empty_fits():
    x = torch.zeros(5, 3)
    with pytest.raises(ValueError, match="shapes"):
        fit_logistic(x, torch.zeros(2, 4), torch.ones(2, 4))
    with pytest.raises(ValueError, match="positive weight"):
        fit_logistic(x, torch.zeros(2, 5), torch.zeros(2, 5))

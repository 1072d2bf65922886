"""Every formula of DESIGN 3.2-3.5 against a hand computation on small tensors."""

import pytest
import torch

from tplo.allocation import (
    allocate, blend_densities, fit_global_sparsity, owl_densities, resolve_pivot, swl_densities, tplo_densities,
)
from tplo.config import PruneConfig
from tplo.scores import fisher_ratio, magnitude_score, outlier_ratio, truth_separation, wanda_score


def test_wanda_score_is_abs_weight_times_input_norm():
    w = torch.tensor([[1.0, -2.0], [-3.0, 0.5]])
    n = torch.tensor([4.0, 9.0])  # sqrt -> 2, 3
    assert torch.equal(wanda_score(w, n), torch.tensor([[2.0, 6.0], [6.0, 1.5]]))
    assert torch.equal(magnitude_score(w), torch.tensor([[1.0, 2.0], [3.0, 0.5]]))


def test_outlier_ratio_pools_all_linears_of_a_block():
    # pooled scores: 1, 1, 1, 1, 1, 1, 1, 13 -> mean 2.5; with M = 5 only 13 > 12.5 -> 1 of 8 = 12.5 %
    a = torch.ones(2, 3)
    b = torch.tensor([[1.0, 13.0]])
    assert outlier_ratio([a, b], m=5.0) == pytest.approx(12.5)
    assert outlier_ratio([a, b], m=6.0) == 0.0


def test_fisher_ratio_by_hand():
    # one dimension per column; false rows [0, 0], [2, 2]; true rows [4, 1], [6, 3]
    x = torch.tensor([[0.0, 0.0], [2.0, 2.0], [4.0, 1.0], [6.0, 3.0]])
    y = torch.tensor([0, 0, 1, 1])
    # mu_F = [1, 1], mu_T = [5, 2], mu = [3, 1.5]
    between = 0.5 * (((1 - 3) ** 2 + (5 - 3) ** 2 + (1 - 1.5) ** 2 + (2 - 1.5) ** 2) / 2)
    # unbiased variances: F -> [2, 2], T -> [2, 2]
    within = 0.5 * (2.0 + 2.0)
    assert fisher_ratio(x, y) == pytest.approx(between / within)


def test_fisher_ratio_needs_both_classes():
    with pytest.raises(ValueError, match="two true and two false"):
        fisher_ratio(torch.randn(4, 3), torch.tensor([1, 1, 1, 0]))


def test_truth_separation_normalises_over_layers_then_averages_topics():
    v = torch.tensor([[1.0, 3.0], [2.0, 2.0]])  # 2 topics x 2 layers
    p = truth_separation(v)
    assert torch.allclose(p, torch.tensor([(0.25 + 0.5) / 2, (0.75 + 0.5) / 2], dtype=torch.float64))
    assert float(p.sum()) == pytest.approx(1.0)


D = torch.tensor([1.0, 3.0, 2.0, 5.0])
P = torch.tensor([0.1, 0.2, 0.4, 0.3])


def test_owl_densities_by_hand():
    # r = (D - 1) / 4 * 0.16 = [0, .08, .04, .16], mean .07
    rho = owl_densities(D, sparsity=0.5, owl_lambda=0.08)
    assert torch.allclose(rho, torch.tensor([0.43, 0.51, 0.47, 0.59], dtype=torch.float64))
    assert float(rho.mean()) == pytest.approx(0.5)


def test_swl_densities_by_hand():
    # (1 - S) + beta * L * (p - 1/L) = 0.5 + 0.16 * (p - 0.25)
    rho = swl_densities(P, sparsity=0.5, beta=0.04)
    assert torch.allclose(rho, torch.tensor([0.476, 0.492, 0.524, 0.508], dtype=torch.float64))


def test_pivot_auto_and_explicit():
    assert resolve_pivot(P, "auto") == 0  # argmax 2 -> max(0, 0)
    assert resolve_pivot(torch.tensor([0.1, 0.1, 0.1, 0.1, 0.6]), "auto") == 2
    assert resolve_pivot(P, 3) == 3
    with pytest.raises(ValueError, match="beyond the model's 4 blocks"):
        resolve_pivot(P, 4)


def test_tplo_splice_then_shift_to_mean_density():
    owl = torch.tensor([0.43, 0.51, 0.47, 0.59], dtype=torch.float64)
    swl = torch.tensor([0.476, 0.492, 0.524, 0.508], dtype=torch.float64)
    spliced = torch.cat([owl[:2], swl[2:]])  # [.43, .51, .524, .508], mean .493
    expected = spliced + (0.5 - 0.493)
    assert torch.allclose(tplo_densities(D, P, 0.5, 0.08, 0.04, pivot=2), expected)


def test_blend_uses_both_signals_in_every_block():
    r_centred = torch.tensor([0.0, 0.08, 0.04, 0.16], dtype=torch.float64) - 0.07
    expected = 0.5 + r_centred + 0.16 * (P.double() - 0.25)
    assert torch.allclose(blend_densities(D, P, 0.5, 0.08, 0.04), expected)


def test_fit_global_sparsity_weights_by_params_and_clips():
    s = torch.tensor([0.2, 0.9, 0.5])
    params = torch.tensor([100, 100, 200])
    fitted = fit_global_sparsity(s, params, sparsity=0.5, s_min=0.0, s_max=0.8)
    assert float((fitted * params).sum() / params.sum()) == pytest.approx(0.5, abs=1e-9)
    assert float(fitted.max()) <= 0.8
    # an unclipped solution is a pure shift: 0.25*(0.2+c) + 0.25*(0.9+c)... except the clipped block
    c = fitted[0] - 0.2
    assert float(fitted[2]) == pytest.approx(0.5 + float(c))


def test_allocate_uniform_and_nm_ignore_signals():
    params = torch.tensor([10, 10, 10, 10])
    s, pivot = allocate(PruneConfig(method="uniform"), params, D, None)
    assert torch.equal(s, torch.full((4,), 0.5, dtype=torch.float64)) and pivot is None
    s, _ = allocate(PruneConfig(method="tplo", structure="2:4"), params, D, P)
    assert torch.equal(s, torch.full((4,), 0.5, dtype=torch.float64))


@pytest.mark.parametrize("method", ["owl", "swl", "tplo", "tplo_blend", "truth_prefix"])
def test_allocate_hits_global_sparsity(method):
    params = torch.tensor([10, 20, 30, 40])
    s, pivot = allocate(PruneConfig(method=method, sparsity=0.6), params, D, P)
    assert float((s * params).sum() / params.sum()) == pytest.approx(0.6, abs=1e-9)
    assert (pivot is not None) == (method == "tplo")


def test_allocate_tplo_equal_params_matches_spliced_formula():
    params = torch.full((4,), 7)
    s, pivot = allocate(PruneConfig(method="tplo", pivot=2), params, D, P)
    assert pivot == 2
    assert torch.allclose(s, 1 - tplo_densities(D, P, 0.5, 0.08, 0.04, pivot=2))


@pytest.mark.parametrize("bad, message", [
    (dict(sparsity=1.0), "sparsity must be in"),
    (dict(sparsity=-0.1), "sparsity must be in"),
    (dict(method="magic"), "unknown method 'magic'"),
    (dict(scorer="obs"), "unknown scorer"),
    (dict(scorer="sparsegpt", sequential=False), "set sequential: true"),
    (dict(structure="2:4", sparsity=0.6), "sparsity must be 0.5"),
    (dict(pivot=-2), "pivot must be"),
    (dict(s_max=0.4), "s_min <= sparsity <= s_max"),
])
def test_config_rejects_bad_values(bad, message):
    with pytest.raises(ValueError, match=message):
        PruneConfig(**bad)


def test_block_sparsities_replace_the_allocation_and_keep_the_global_sparsity():
    from tiny_models import tiny_model, token_batches
    from tplo import prune

    given = PruneConfig(sparsity=0.5, method="tplo", block_sparsities=[0.3, 0.4, 0.6, 0.7])
    assert not given.needs_statements  # the truth separation is not needed for given sparsities
    report = prune(tiny_model("llama"), token_batches(), None, given, progress=False)
    assert report.method == "block_sparsities"
    assert [layer.target_sparsity for layer in report.layers] == pytest.approx([0.3, 0.4, 0.6, 0.7])
    shifted = prune(tiny_model("llama"), token_batches(), None,
                    PruneConfig(sparsity=0.5, block_sparsities=[0.1, 0.1, 0.2, 0.2]), progress=False)
    assert [layer.target_sparsity for layer in shifted.layers] == pytest.approx([0.45, 0.45, 0.55, 0.55])
    with pytest.raises(ValueError, match="block_sparsities has 3 values for a model with 4 blocks"):
        prune(tiny_model("llama"), token_batches(), None, PruneConfig(block_sparsities=[0.5] * 3), progress=False)
    with pytest.raises(ValueError, match="each be in"):
        PruneConfig(block_sparsities=[0.5, 1.2])

"""SparseGPT reconstruction against a plain one-column-at-a-time OBS implementation."""

import logging

import pytest
import torch

from tplo.sparsegpt import RETRIES, HessianError, sparsegpt_prune


def calibration(d_in: int, n: int = 256, seed: int = 0, dead: tuple[int, ...] = ()) -> torch.Tensor:
    """Correlated inputs X = Z @ A [n, d_in] (float64), with the `dead` columns always zero."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d_in, generator=g, dtype=torch.float64) @ torch.randn(d_in, d_in, generator=g,
                                                                             dtype=torch.float64)
    x[:, list(dead)] = 0
    return x


def hessian(x: torch.Tensor) -> torch.Tensor:
    return (2 / x.shape[0] * x.T @ x).float()


def random_weight(d_out: int, d_in: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(d_out, d_in, generator=torch.Generator().manual_seed(seed))


def obs_reference(weight, h, sparsity, nm, blocksize, percdamp=0.01):
    """Float64 SparseGPT without blocking or Cholesky: inverse(H[i:, i:]) at every column."""
    w, h = weight.double().clone(), h.double().clone()
    d_out, d_in = w.shape
    dead = h.diagonal() == 0
    h[dead, dead] = 1
    w[:, dead] = 0
    h += percdamp * h.diagonal().mean() * torch.eye(d_in, dtype=torch.float64)
    hinv = [torch.linalg.inv(h[j:, j:]) for j in range(d_in)]
    prune = torch.zeros(d_out, d_in, dtype=torch.bool)

    def saliency(cols):
        return torch.stack([w[:, j] ** 2 / hinv[j][0, 0] for j in cols], 1)

    for b in range(0, d_in, blocksize):
        e = min(b + blocksize, d_in)
        if nm is None:
            t = saliency(range(b, e))
            prune[:, b:e] = t <= sorted(t.flatten().tolist())[int(t.numel() * sparsity)]
        for i in range(b, e):
            if nm is not None and (i - b) % nm[1] == 0:
                t = saliency(range(i, i + nm[1]))
                for r in range(d_out):
                    order = sorted(range(nm[1]), key=lambda j: (t[r, j].item(), j))
                    prune[r, [i + j for j in order[:nm[1] - nm[0]]]] = True
            q = w[:, i].masked_fill(prune[:, i], 0)
            w[:, i:] -= torch.outer(w[:, i] - q, hinv[i][0] / hinv[i][0, 0])
            w[:, i] = q
    return w, ~prune


@pytest.mark.parametrize("d_out, d_in, sparsity, nm, blocksize, dead", [
    (16, 40, 0.5, None, 16, ()),
    (24, 48, 0.3, None, 20, ()),
    (16, 64, 0.7, None, 32, (5, 40)),
    (16, 48, 0.0, (2, 4), 16, ()),
    (20, 64, 0.0, (4, 8), 32, (3, 17)),
])
def test_matches_unblocked_obs_reference(d_out, d_in, sparsity, nm, blocksize, dead):
    w = random_weight(d_out, d_in)
    h = hessian(calibration(d_in, dead=dead))
    res = sparsegpt_prune(w, h, sparsity, nm=nm, blocksize=blocksize)
    ref_w, ref_keep = obs_reference(w, h, sparsity, nm, blocksize)
    assert res.weight.dtype == torch.float32 and res.keep.dtype == torch.bool
    assert torch.equal(res.keep, ref_keep)
    torch.testing.assert_close(res.weight.double(), ref_w, rtol=1e-4, atol=1e-4)
    assert res.percdamp == 0.01


@pytest.mark.parametrize("sparsity", [0.5, 0.7])
def test_reconstruction_error_below_wanda(sparsity):
    x = calibration(64, n=512, seed=3)
    w = random_weight(32, 64, seed=4).double()
    res = sparsegpt_prune(w, hessian(x), sparsity, blocksize=32)
    scores = w.abs() * x.norm(dim=0)
    n_prune = int(64 * sparsity)
    lowest = scores.argsort(dim=1)[:, :n_prune]
    wanda = w.scatter(1, lowest, 0)
    err_sparsegpt = torch.linalg.norm(x @ (w - res.weight.double()).T)
    err_wanda = torch.linalg.norm(x @ (w - wanda).T)
    assert err_sparsegpt < err_wanda


def test_unstructured_counts_per_column_block():
    w = random_weight(16, 40)
    res = sparsegpt_prune(w, hessian(calibration(40)), 0.6, blocksize=16)
    for b, e in [(0, 16), (16, 32), (32, 40)]:
        assert int((~res.keep[:, b:e]).sum()) == int(16 * (e - b) * 0.6) + 1
    assert (res.weight[~res.keep] == 0).all()
    assert (res.weight[res.keep] != 0).all()


@pytest.mark.parametrize("n, m", [(2, 4), (4, 8), (1, 4)])
def test_nm_keeps_exactly_n_per_group(n, m):
    w = random_weight(16, 64)
    res = sparsegpt_prune(w, hessian(calibration(64)), 0.0, nm=(n, m), blocksize=32)
    assert (res.keep.reshape(16, -1, m).sum(-1) == n).all()
    assert (res.weight[~res.keep] == 0).all()


def test_ties_nm_prunes_lowest_index_unstructured_prunes_all_equal():
    w, h = torch.ones(2, 8), torch.eye(8)
    nm = sparsegpt_prune(w, h, 0.0, nm=(2, 4), blocksize=8)
    assert nm.keep.tolist() == [[False, False, True, True, False, False, True, True]] * 2
    assert torch.equal(nm.weight, nm.keep.float())
    unstructured = sparsegpt_prune(w, h, 0.5)
    assert not unstructured.keep.any() and (unstructured.weight == 0).all()


def test_dead_inputs_are_zeroed_and_pruned():
    dead = (3, 10)
    x = calibration(32, dead=dead)
    w = random_weight(16, 32)
    res = sparsegpt_prune(w, hessian(x), 0.25, blocksize=16)
    assert (res.weight[:, dead] == 0).all() and not res.keep[:, dead].any()
    assert torch.isfinite(res.weight).all()
    nm = sparsegpt_prune(w, hessian(x), 0.0, nm=(2, 4), blocksize=16)
    assert (nm.weight[:, dead] == 0).all() and not nm.keep[:, dead].any()


def test_nm_group_with_more_dead_inputs_than_m_minus_n_keeps_zero_slots():
    x = calibration(16, dead=(0, 1, 2))
    res = sparsegpt_prune(random_weight(8, 16), hessian(x), 0.0, nm=(2, 4), blocksize=16)
    assert (res.keep.reshape(8, 4, 4).sum(-1) == 2).all()
    assert (res.weight[:, :3] == 0).all() and res.keep[:, 3].all()
    assert int(res.keep[:, :3].sum()) == 8


def spectrum_hessian(eigenvalues: torch.Tensor, seed: int = 5) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(len(eigenvalues), len(eigenvalues), dtype=torch.float64,
                                       generator=torch.Generator().manual_seed(seed)))
    return (q * eigenvalues) @ q.T


def test_indefinite_hessian_retries_with_more_dampening(caplog):
    eig = torch.ones(32, dtype=torch.float64)
    eig[0] = -0.05  # fails with damp 0.01 * mean, passes with 0.1 * mean
    h = spectrum_hessian(eig).float()
    w = random_weight(16, 32)
    w_before, h_before = w.clone(), h.clone()
    with caplog.at_level(logging.WARNING, logger="tplo.sparsegpt"):
        res = sparsegpt_prune(w, h, 0.5, name="layers.0.mlp.up_proj")
    assert res.percdamp == pytest.approx(0.1)
    assert torch.isfinite(res.weight).all()
    [record] = caplog.records
    assert record.name == "tplo.sparsegpt" and "layers.0.mlp.up_proj" in record.getMessage()
    assert torch.equal(w, w_before) and torch.equal(h, h_before)


def test_negative_definite_hessian_raises_naming_the_linear(caplog):
    h = -hessian(calibration(32))
    with caplog.at_level(logging.WARNING, logger="tplo.sparsegpt"), \
            pytest.raises(HessianError, match="layers.3.self_attn.q_proj.*not positive definite.*calibration"):
        sparsegpt_prune(random_weight(16, 32), h, 0.5, name="layers.3.self_attn.q_proj")
    assert len(caplog.records) == RETRIES
    assert issubclass(HessianError, ValueError)
    h[0, 1] = torch.nan
    with pytest.raises(HessianError, match="non-finite"):
        sparsegpt_prune(random_weight(16, 32), h, 0.5)


def test_arguments_unchanged_with_dead_inputs_and_low_precision_weight():
    h = hessian(calibration(32, dead=(4,)))
    for w in (random_weight(16, 32), random_weight(16, 32).bfloat16()):
        w_before, h_before = w.clone(), h.clone()
        res = sparsegpt_prune(w, h, 0.5, blocksize=16)
        assert torch.equal(w, w_before) and torch.equal(h, h_before)
        assert res.weight.dtype == torch.float32 and (res.weight[:, 4] == 0).all()


def test_sparsity_zero_returns_weight_unchanged():
    w = random_weight(16, 32)
    res = sparsegpt_prune(w, hessian(calibration(32, dead=(2,))), 0.0)
    assert torch.equal(res.weight, w) and res.keep.all()
    assert res.weight.data_ptr() != w.data_ptr()


def test_bad_shapes_and_settings_raise():
    w, h = random_weight(8, 30), hessian(calibration(30))
    with pytest.raises(ValueError, match="2:4 sparsity needs d_in and blocksize divisible by 4"):
        sparsegpt_prune(w, h, 0.0, nm=(2, 4), name="fc")
    w, h = random_weight(8, 32), hessian(calibration(32))
    with pytest.raises(ValueError, match="divisible by 8"):
        sparsegpt_prune(w, h, 0.0, nm=(4, 8), blocksize=12)
    with pytest.raises(ValueError, match="sparsity"):
        sparsegpt_prune(w, h, 1.0)
    with pytest.raises(ValueError, match="Hessian has shape"):
        sparsegpt_prune(w, h[:16, :16], 0.5)

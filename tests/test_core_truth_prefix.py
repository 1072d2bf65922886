"""The truth_prefix allocation: its densities against a hand computation, exact global sparsity, determinism, and
its masks holding through a sparse fine-tune."""

import lightning as L
import pytest
import torch

from test_core_prune import statement_batches
from test_reliability_checkpoints import DATA
from tiny_models import tiny_model, token_batches
from tplo import PruneConfig, prune
from tplo.allocation import allocate, truth_prefix_densities
from tplo.callbacks import TPLOCallback
from tplo.data import StatementDataModule
from tplo.masks import collect_masks
from tplo.truth_probe import TruthProbe

D = torch.tensor([1.0, 3.0, 2.0, 5.0])  # outlier ratios: OWL r = (D - 1) / 4 * 0.16 = 0, .08, .04, .16 (mean .07)
P = torch.tensor([0.1, 0.2, 0.4, 0.3])  # truth separation: peak at block 2


def hand_densities(outlier: list[float], separation: list[float], sparsity: float, shift: float,
                   owl_lambda: float = 0.08) -> list[float]:
    """The formula written out in plain Python, one block at a time."""
    n, k = len(separation), separation.index(max(separation))
    r = [(d - min(outlier)) / (max(outlier) - min(outlier)) * 2 * owl_lambda for d in outlier]
    mean_r = sum(r) / n
    after = -shift * (k + 1) / (n - k - 1) if k < n - 1 else 0.0
    return [(1 - sparsity) + (shift if l <= k else after) + r[l] - mean_r for l in range(n)]


def test_densities_by_hand():
    # step +.05 for blocks 0-2, -.05 * 3 / 1 for block 3; OWL centred: -.07, .01, -.03, .09
    expected = [0.5 + 0.05 - 0.07, 0.5 + 0.05 + 0.01, 0.5 + 0.05 - 0.03, 0.5 - 0.15 + 0.09]
    got = truth_prefix_densities(D, P, 0.5, 0.08, 0.05)
    assert got.dtype == torch.float64
    assert got.tolist() == pytest.approx(expected, abs=1e-12)
    assert got.tolist() == pytest.approx(hand_densities(D.tolist(), P.tolist(), 0.5, 0.05), abs=1e-12)
    assert float(got.mean()) == pytest.approx(0.5, abs=1e-12)  # density moved, not added


def test_shift_zero_is_owl_and_a_peak_at_the_last_block_is_owl():
    params = torch.tensor([10, 20, 30, 40])
    owl, _ = allocate(PruneConfig(method="owl", sparsity=0.6), params, D, P)
    no_shift, _ = allocate(PruneConfig(method="truth_prefix", sparsity=0.6, prefix_shift=0.0), params, D, P)
    late_peak, _ = allocate(PruneConfig(method="truth_prefix", sparsity=0.6), params, D,
                            torch.tensor([0.1, 0.2, 0.3, 0.4]))  # every block is "up to the peak": a pure shift
    assert torch.allclose(no_shift, owl, atol=1e-12) and torch.allclose(late_peak, owl, atol=1e-12)


def test_allocation_hits_the_global_sparsity_and_protects_the_prefix():
    params = torch.tensor([10, 20, 30, 40])
    s, pivot = allocate(PruneConfig(method="truth_prefix", sparsity=0.6, prefix_shift=0.1), params, D, P)
    assert pivot is None
    assert float((s * params).sum() / params.sum()) == pytest.approx(0.6, abs=1e-9)
    owl, _ = allocate(PruneConfig(method="owl", sparsity=0.6), params, D, P)
    assert (s[:3] < owl[:3]).all() and s[3] > owl[3]  # denser up to the peak, sparser after it
    with pytest.raises(ValueError, match="prefix_shift"):
        PruneConfig(method="truth_prefix", prefix_shift=-0.1)


def test_prune_is_deterministic_and_needs_statements():
    config = PruneConfig(method="truth_prefix", sparsity=0.5)
    masks, reports = [], []
    for _ in range(2):
        model = tiny_model("llama", seed=3)
        reports.append(prune(model, token_batches(seed=1), statement_batches(), config, progress=False))
        masks.append(collect_masks(model))
    assert all(torch.equal(masks[0][k], masks[1][k]) for k in masks[0])
    report = reports[0]
    assert report.method == "truth_prefix"
    expected = hand_densities([layer.outlier_ratio for layer in report.layers],
                              [layer.truth_separation for layer in report.layers], 0.5, 0.05)
    assert [layer.target_sparsity for layer in report.layers] == pytest.approx([1 - d for d in expected], abs=1e-9)
    with pytest.raises(ValueError, match="needs labelled statements"):
        prune(tiny_model("llama"), token_batches(), None, config, progress=False)


def test_masks_hold_through_a_sparse_finetune(tmp_path, tiny_llama):
    L.seed_everything(0)
    model = TruthProbe(tiny_llama, finetune=True, finetune_lr=1e-2)
    callback = TPLOCallback(method="truth_prefix", sparsity=0.6, export=False)
    before = {n: p.detach().clone() for n, p in model.backbone.named_parameters()}
    L.Trainer(accelerator="cpu", max_steps=4, logger=False, enable_progress_bar=False, enable_model_summary=False,
              enable_checkpointing=False, limit_val_batches=0, default_root_dir=tmp_path,
              callbacks=[callback]).fit(model, datamodule=StatementDataModule(tiny_llama, **DATA))
    assert callback.report.method == "truth_prefix"
    assert any(not torch.equal(before[n], p.detach()) for n, p in model.backbone.named_parameters())
    for name, mask in collect_masks(model.backbone).items():
        assert torch.count_nonzero(model.backbone.get_submodule(name).weight[~mask]) == 0, name

"""The two places where tplo's masks could differ from the TPLO reference code's: ties among equal scores
(the lowest input index is pruned first) and the precision of the outlier ratios (float64 end to end)."""

import numpy as np
import torch

import tplo.pruning as pruning
from tiny_models import tiny_model, token_batches
from tplo import PruneConfig, collect_masks, prune
from tplo.blocks import find_blocks, prunable_linears, weight_rows
from tplo.masks import nm_mask, row_mask


def stable_row_mask(scores: np.ndarray, n_prune: int) -> np.ndarray:
    """The reference rule, independently: a stable sort per row, the first `n_prune` are pruned."""
    keep = np.ones(scores.shape, dtype=bool)
    order = np.argsort(scores, axis=1, kind="stable")[:, :n_prune]
    np.put_along_axis(keep, order, False, axis=1)
    return keep


def test_equal_scores_prune_the_lowest_input_index_first():
    scores = torch.ones(3, 10)
    assert row_mask(scores, 0.4).tolist() == [[False] * 4 + [True] * 6] * 3
    scores[1, 2] = 0.5  # one lower score goes first, then the tie order
    assert row_mask(scores, 0.4)[1].tolist() == [False, False, False, False] + [True] * 6
    scores[2, 0] = 2.0
    assert row_mask(scores, 0.4)[2].tolist() == [True, False, False, False, False] + [True] * 5
    groups = torch.ones(2, 8)
    assert nm_mask(groups, 2, 4).tolist() == [[False, False, True, True] * 2] * 2
    groups[0, 1] = 3.0
    assert nm_mask(groups, 2, 4)[0].tolist() == [False, True, False, True, False, False, True, True]


def test_magnitude_masks_of_a_bfloat16_model_equal_the_stable_sort_rule():
    """bf16 magnitudes repeat a lot: every tie must be broken as the reference breaks it."""
    model = tiny_model("llama").to(torch.bfloat16)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_((p * 8).round() / 8)  # a few distinct values: ties in every row
    path, blocks = find_blocks(model)
    before = {f"{path}.{l}.{name}": weight_rows(module).detach().float().abs().numpy().copy()
              for l, block in enumerate(blocks) for name, module in prunable_linears(block).items()}
    assert all(len(np.unique(r[0])) < r.shape[1] // 2 for r in before.values())
    prune(model, token_batches(), None, PruneConfig(method="uniform", scorer="magnitude", sequential=False),
          progress=False)
    masks = collect_masks(model)
    assert masks.keys() == before.keys()
    for name, mask in masks.items():
        assert np.array_equal(mask.numpy(), stable_row_mask(before[name], int(mask.shape[1] * 0.5))), name


def test_outlier_ratios_reach_the_allocation_in_float64(monkeypatch):
    seen = []
    real = pruning.allocate

    def recording(config, params, outliers, separation):
        seen.append(outliers.dtype)
        return real(config, params, outliers, separation)

    monkeypatch.setattr(pruning, "allocate", recording)
    prune(tiny_model("llama"), token_batches(), None, PruneConfig(method="owl"), progress=False)
    assert seen == [torch.float64]


def test_the_selection_equals_a_stable_sort_also_for_negative_and_repeated_scores():
    from tplo.masks import lowest_first

    g = torch.Generator().manual_seed(0)
    scores = (torch.randn(50, 64, generator=g) * 4).round() / 4  # negative, zero and many repeated values
    scores[0] = -0.0
    scores[1, ::2] = 0.0
    for k in (1, 7, 32, 63):
        picked = torch.zeros_like(scores, dtype=torch.bool).scatter_(1, lowest_first(scores, k), True)
        expected = ~torch.from_numpy(stable_row_mask(scores.numpy(), k))
        assert torch.equal(picked, expected), k

"""Mask construction and the bool-buffer mask lifecycle."""

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from tplo.masks import (
    apply_masks, collect_masks, load_masks, mask_gradients, masked_modules, model_sparsity, nm_mask, row_mask,
    set_mask,
)


def test_row_mask_prunes_floor_of_each_row_lowest_scores():
    scores = torch.tensor([[5.0, 1.0, 3.0, 2.0, 4.0], [0.1, 0.5, 0.4, 0.3, 0.2]])
    keep = row_mask(scores, 0.5)  # floor(5 * 0.5) = 2 per row
    assert keep.tolist() == [[True, False, True, False, True], [False, True, True, True, False]]
    assert row_mask(scores, 0.0).all()


def test_row_mask_exact_count_on_random_scores():
    keep = row_mask(torch.rand(64, 100), 0.73)
    assert ((~keep).sum(1) == 73).all()


def test_nm_mask_keeps_exactly_n_per_group():
    scores = torch.rand(16, 64)
    for n, m in [(2, 4), (4, 8)]:
        keep = nm_mask(scores, n, m)
        assert (keep.reshape(16, -1, m).sum(-1) == n).all()
        # the kept ones are the group maxima
        groups = scores.reshape(16, -1, m)
        kept_min = torch.where(keep.reshape(16, -1, m), groups, torch.inf).amin(-1)
        dropped_max = torch.where(keep.reshape(16, -1, m), -torch.inf, groups).amax(-1)
        assert (kept_min > dropped_max).all()


def test_set_mask_zeroes_in_place_and_stores_bool_buffer():
    lin = nn.Linear(4, 3)
    weight = lin.weight
    keep = torch.tensor([[True, False, True, False]] * 3)
    set_mask(lin, keep)
    assert lin.weight is weight and lin.weight_mask.dtype == torch.bool
    assert (lin.weight[~keep] == 0).all() and (lin.weight[keep] != 0).all()
    assert "weight_mask" not in lin.state_dict()  # non-persistent: exports stay plain HF checkpoints


def test_conv1d_mask_is_stored_in_its_transposed_layout():
    conv = Conv1D(nf=3, nx=4)  # weight [d_in=4, d_out=3]
    nn.init.normal_(conv.weight)
    keep = torch.tensor([[True, True, False, False]] * 3)  # [d_out, d_in]
    set_mask(conv, keep)
    assert conv.weight_mask.shape == (4, 3)
    assert (conv.weight[2:] == 0).all() and (conv.weight[:2] != 0).all()


def test_apply_masks_and_gradients_keep_pruned_weights_zero():
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    set_mask(model[0], row_mask(torch.rand(8, 8), 0.5))
    opt = torch.optim.AdamW(model.parameters(), lr=0.1, weight_decay=0.1)
    for _ in range(3):
        model(torch.randn(5, 8)).sum().backward()
        mask_gradients(model)
        assert (model[0].weight.grad[~model[0].weight_mask] == 0).all()
        opt.step()
        apply_masks(model)
        opt.zero_grad()
    assert model_sparsity(model) == 0.5
    assert list(masked_modules(model)) == ["0"]


def test_collect_and_load_masks_round_trip():
    src = nn.Sequential(nn.Linear(6, 4), Conv1D(5, 6))
    for mod in src:
        set_mask(mod, row_mask(torch.rand(mod.weight.shape if isinstance(mod, nn.Linear) else (5, 6)), 0.5))
    masks = collect_masks(src)
    dst = nn.Sequential(nn.Linear(6, 4), Conv1D(5, 6))
    load_masks(dst, masks)
    for name, mask in collect_masks(dst).items():
        assert torch.equal(mask, masks[name])
        assert (dict(dst.named_modules())[name].weight[~mask] == 0).all()

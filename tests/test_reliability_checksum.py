"""Mask checksums: exact bit packing, sensitive to every bit, and a cross-rank check that stops on a mismatch."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from tiny_models import tiny_model, token_batches
from tplo import PruneConfig, collect_masks, prune
from tplo.callbacks.rank_sync import same_masks_on_every_rank
from tplo.mask_checksum import (check_same_across_ranks, checksum_from_tensor, checksum_tensor, mask_checksum,
                                pack_bits, pack_masks)


@pytest.mark.parametrize("shape", [(8, 16), (37, 13), (5,)])
def test_pack_bits_matches_numpy_packbits(shape):
    mask = torch.rand(shape, generator=torch.Generator().manual_seed(0)) > 0.5
    assert np.array_equal(pack_bits(mask).numpy(), np.packbits(mask.numpy().reshape(-1)))


def test_checksum_sees_every_bit_name_and_shape_but_not_dict_order():
    g = torch.Generator().manual_seed(1)
    masks = {"a.weight": torch.rand(8, 8, generator=g) > 0.5, "b.weight": torch.rand(4, 16, generator=g) > 0.5}
    reference = mask_checksum(masks)
    assert mask_checksum(dict(reversed(masks.items()))) == reference
    flipped = {k: v.clone() for k, v in masks.items()}
    flipped["b.weight"][3, 15] ^= True
    assert mask_checksum(flipped) != reference
    assert mask_checksum({"a.weight": masks["a.weight"], "c.weight": masks["b.weight"]}) != reference
    assert mask_checksum({"a.weight": masks["a.weight"], "b.weight": masks["b.weight"].reshape(16, 4)}) != reference
    assert checksum_from_tensor(checksum_tensor(reference)) == reference


def test_mismatched_ranks_are_named():
    check_same_across_ranks(["ab" * 32] * 3)
    with pytest.raises(RuntimeError, match=r"rank\(s\) \[2\] disagree with rank 0.*Rank 0 prunes and sends its masks"):
        check_same_across_ranks(["ab" * 32, "ab" * 32, "cd" * 32])


def fake_trainer(other_rank_masks: dict[str, torch.Tensor] | None):
    """A trainer of world size 2 whose all_gather returns this rank's digest and another rank's."""
    def all_gather(tensor):
        other = tensor if other_rank_masks is None else checksum_tensor(mask_checksum(other_rank_masks))
        return torch.stack([tensor, other])

    return SimpleNamespace(world_size=2, strategy=SimpleNamespace(root_device=torch.device("cpu"),
                                                                  all_gather=all_gather))


def test_callback_compares_the_gathered_checksums():
    model = tiny_model("llama")
    prune(model, token_batches(), None, PruneConfig(method="uniform"), progress=False)
    masks = collect_masks(model)
    assert same_masks_on_every_rank(fake_trainer(None), pack_masks(masks)) == mask_checksum(masks)
    other = {name: mask.clone() for name, mask in masks.items()}
    other["model.layers.0.self_attn.q_proj"][0, 0] ^= True
    with pytest.raises(RuntimeError, match=r"rank\(s\) \[1\] disagree"):
        same_masks_on_every_rank(fake_trainer(other), pack_masks(masks))

"""Under DDP, rank 0 prunes and the other processes receive its result: the report, the bit-packed masks and,
when pruning changed the kept weights (SparseGPT), those weights. A checksum gathered from every rank proves
that all of them hold the same masks."""

from __future__ import annotations

import torch
import torch.distributed as dist
from lightning.pytorch import Trainer
from lightning.pytorch.utilities import rank_zero_info
from torch import nn

from tplo.mask_checksum import (PackedMask, check_same_across_ranks, checksum_from_tensor, checksum_tensor,
                                pack_bits, packed_checksum, unpack_bits)
from tplo.masks import collect_masks, load_masks
from tplo.pruning_report import PruneReport


def broadcast_pruning(trainer: Trainer, backbone: nn.Module, report: PruneReport | None,
                      with_weights: bool) -> PruneReport:
    """Send rank 0's report and masks (and, with `with_weights`, the masked modules' weights) to every rank.

    Rank 0 passes its report, the others None. Tensors travel one module at a time on the strategy's root
    device (NCCL needs CUDA tensors), so no process holds more than one module's copy in transit.
    """
    strategy = trainer.strategy
    header = strategy.broadcast(None if report is None else (report.to_dict(), sorted(collect_masks(backbone))), src=0)
    report_dict, names = header
    device = strategy.root_device
    for name in names:
        module = backbone.get_submodule(name)
        shape = list(module.weight.shape)
        if trainer.is_global_zero:
            bits = pack_bits(module.weight_mask).to(device)
        else:
            bits = torch.empty((module.weight.numel() + 7) // 8, dtype=torch.uint8, device=device)
        dist.broadcast(bits, src=0)
        if with_weights:
            weight = module.weight.detach().to(device)
            dist.broadcast(weight, src=0)
            if not trainer.is_global_zero:
                with torch.no_grad():
                    module.weight.copy_(weight)
        if not trainer.is_global_zero:
            load_masks(backbone, {name: unpack_bits(bits, shape)})
    return PruneReport.from_dict(report_dict)


def same_masks_on_every_rank(trainer: Trainer, packed: dict[str, PackedMask]) -> str:
    """The SHA-256 of the packed masks, gathered from every rank; raises if any rank differs."""
    checksum = packed_checksum(packed)
    if trainer.world_size > 1:
        gathered = trainer.strategy.all_gather(checksum_tensor(checksum).to(trainer.strategy.root_device))
        check_same_across_ranks([checksum_from_tensor(row) for row in gathered.reshape(trainer.world_size, -1)])
    rank_zero_info(f"TPLOCallback: mask checksum sha256:{checksum[:16]}, identical on all {trainer.world_size} "
                   "process(es).")
    return checksum

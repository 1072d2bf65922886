"""Compact forms of a pruned model: bit-packed masks, their checksum, and moments of the pruned weights.

Packed masks (1 bit per weight) are what checkpoints and other processes receive. A SHA-256 over them
proves that two processes, or a model before and after a resume, hold the same masks without moving
gigabytes; the per-tensor moments of the weights show that a rebuilt backbone has the same weights.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import nn

from tplo.blocks import stored_weight

DIGEST_BYTES = 32
_BIT_WEIGHTS = torch.tensor([128, 64, 32, 16, 8, 4, 2, 1], dtype=torch.uint8)

PackedMask = tuple[list[int], torch.Tensor]
"""(shape, uint8 bits): a bool mask packed 8 values per byte."""


def pack_bits(mask: torch.Tensor) -> torch.Tensor:
    """A bool tensor as uint8 bytes, 8 values per byte, most significant bit first (`numpy.packbits`
    order), computed on the mask's own device."""
    flat = mask.reshape(-1).to(torch.uint8)
    pad = (-flat.numel()) % 8
    if pad:
        flat = torch.cat([flat, flat.new_zeros(pad)])
    return (flat.view(-1, 8) * _BIT_WEIGHTS.to(flat.device)).sum(1, dtype=torch.uint8)


def unpack_bits(bits: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Inverse of `pack_bits`: a bool tensor of `shape` on the CPU."""
    count = math.prod(shape)
    return torch.from_numpy(np.unpackbits(bits.cpu().numpy(), count=count).astype(bool)).reshape(list(shape))


def pack_masks(masks: Mapping[str, torch.Tensor]) -> dict[str, PackedMask]:
    """Name -> (shape, bits on the CPU) for every mask."""
    return {name: (list(mask.shape), pack_bits(mask.bool()).cpu()) for name, mask in masks.items()}


def unpack_masks(packed: Mapping[str, PackedMask]) -> dict[str, torch.Tensor]:
    """Name -> bool mask on the CPU."""
    return {name: unpack_bits(bits, shape) for name, (shape, bits) in packed.items()}


def packed_checksum(packed: Mapping[str, PackedMask]) -> str:
    """SHA-256 (hex) over every packed mask's name, shape and bits, in name order."""
    digest = hashlib.sha256()
    for name in sorted(packed):
        shape, bits = packed[name]
        digest.update(f"{name}:{tuple(shape)};".encode())
        digest.update(bits.cpu().numpy().tobytes())
    return digest.hexdigest()


def mask_checksum(masks: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 (hex) over every mask's name, shape and bits, in name order."""
    return packed_checksum({name: (list(mask.shape), pack_bits(mask.bool())) for name, mask in masks.items()})


def checksum_tensor(checksum: str) -> torch.Tensor:
    """A hex SHA-256 as an int64 tensor [32] (one byte per element), for a collective all_gather."""
    return torch.tensor(list(bytes.fromhex(checksum)), dtype=torch.int64)


def checksum_from_tensor(values: torch.Tensor) -> str:
    """Inverse of `checksum_tensor`."""
    return bytes(int(v) for v in values.tolist()).hex()


def check_same_across_ranks(checksums: Sequence[str]) -> None:
    """Raise when the ranks' mask checksums differ (index = rank), naming the ranks that disagree with rank 0."""
    differ = [rank for rank, checksum in enumerate(checksums) if checksum != checksums[0]]
    if differ:
        raise RuntimeError(
            f"pruning masks differ across processes: rank(s) {differ} disagree with rank 0 "
            f"({checksums[differ[0]][:12]} vs {checksums[0][:12]}). Rank 0 prunes and sends its masks to the others, "
            "so this means a broadcast or a model that differs across processes; run with one device to compare."
        )


@torch.no_grad()
def weight_moments(model: nn.Module, names: Sequence[str]) -> dict[str, list[float]]:
    """[sum, sum of squares] in float64 of the weight of every named module, computed where the weight lives."""
    out = {}
    for name in names:
        weight = stored_weight(model.get_submodule(name)).detach().double()
        out[name] = [float(weight.sum()), float((weight * weight).sum())]
    return out


def moments_differ(expected: Mapping[str, Sequence[float]], actual: Mapping[str, Sequence[float]],
                   rel_tol: float = 1e-6) -> list[str]:
    """Names whose moments differ beyond `rel_tol` (float sums differ slightly between devices), or are missing."""
    return [name for name, values in expected.items()
            if name not in actual or not all(math.isclose(a, b, rel_tol=rel_tol, abs_tol=1e-9)
                                             for a, b in zip(values, actual[name]))]

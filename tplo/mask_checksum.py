"""A fingerprint of a model's pruning masks, to prove that every process holds the same masks.

Under DDP every rank prunes the same model on the same calibration data; gathering one 32-byte
digest per rank proves that the masks agree without moving gigabytes of masks between GPUs.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence

import torch

DIGEST_BYTES = 32
_BIT_WEIGHTS = torch.tensor([128, 64, 32, 16, 8, 4, 2, 1], dtype=torch.uint8)


def pack_bits(mask: torch.Tensor) -> torch.Tensor:
    """A bool tensor as uint8 bytes, 8 values per byte, most significant bit first (`numpy.packbits`
    order), computed on the mask's own device."""
    flat = mask.reshape(-1).to(torch.uint8)
    pad = (-flat.numel()) % 8
    if pad:
        flat = torch.cat([flat, flat.new_zeros(pad)])
    return (flat.view(-1, 8) * _BIT_WEIGHTS.to(flat.device)).sum(1, dtype=torch.uint8)


def mask_checksum(masks: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 (hex) over every mask's name, shape and bits, in name order."""
    digest = hashlib.sha256()
    for name in sorted(masks):
        mask = masks[name]
        digest.update(f"{name}:{tuple(mask.shape)};".encode())
        digest.update(pack_bits(mask.bool()).cpu().numpy().tobytes())
    return digest.hexdigest()


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
            f"({checksums[differ[0]][:12]} vs {checksums[0][:12]}). Every rank must prune the same model on the same "
            "calibration data: give the datamodule a fixed seed, load the model in the same dtype everywhere, and "
            "for GPU kernels set torch.use_deterministic_algorithms(True); or run with one device."
        )

"""Test-only Lightning callback: every process writes what it ended with, so a test can compare DDP ranks.

Used by test_reliability_ddp.py through a YAML `class_path: rank_recorder.RankRecorder` (tests/ on PYTHONPATH).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from lightning.pytorch import Callback, LightningModule, Trainer

from tplo.callbacks import TPLOCallback
from tplo.mask_checksum import mask_checksum
from tplo.masks import collect_masks, model_sparsity


class RankRecorder(Callback):
    """Writes `rank_<global rank>.json` to `out_dir` at fit end.

    Args:
        out_dir: folder for the per-rank files.
    """

    def __init__(self, out_dir: str) -> None:
        self.out_dir = Path(out_dir)
        self.local: list[dict[str, list]] = []

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Keep this rank's own predictions per layer (callbacks run before the module computes and resets)."""
        self.local = []
        for metrics in pl_module.val_metrics:
            auroc = metrics["auroc"]
            self.local.append({"preds": torch.cat(auroc.preds).tolist(), "target": torch.cat(auroc.target).tolist()})

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        tplo_callback = next(cb for cb in trainer.callbacks if isinstance(cb, TPLOCallback))
        backbone = pl_module.backbone
        masks = tplo_callback.masks()
        masked_nonzero = sum(int(torch.count_nonzero(backbone.get_submodule(n).weight[~m])) for n, m in masks.items())
        params = hashlib.sha256()
        for name, value in sorted(pl_module.named_parameters()):  # DDP keeps parameters equal, not BN buffers
            params.update(name.encode() + value.detach().cpu().contiguous().numpy().tobytes())
        record = {
            "rank": trainer.global_rank,
            "world_size": trainer.world_size,
            "mask_checksum": mask_checksum(masks),
            "callback_checksum": tplo_callback.mask_checksum,
            "pruned_here": tplo_callback.pruned_here,
            "mask_buffers": len(collect_masks(backbone)),
            "sparsity": model_sparsity(backbone),
            "masked_nonzero": masked_nonzero,
            "parameters_checksum": params.hexdigest(),
            "exported": None if tplo_callback.exported is None else str(tplo_callback.exported),
            "val_statements": len(trainer.datamodule.frames["val"]),
            "val_local": self.local,
            "val_logged": {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")},
        }
        self.out_dir.mkdir(parents=True, exist_ok=True)
        (self.out_dir / f"rank_{trainer.global_rank}.json").write_text(json.dumps(record, indent=2))

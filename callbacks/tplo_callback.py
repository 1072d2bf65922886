"""`TPLOCallback`: prune a LightningModule's Hugging Face model once at fit start, keep it sparse while
training, log the allocation, and export the pruned model at fit end (atomically, from rank 0 only)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.strategies import DeepSpeedStrategy, FSDPStrategy, ModelParallelStrategy, Strategy
from lightning.pytorch.utilities import rank_zero_info
from matplotlib.figure import Figure
from rich.console import Console
from torch import nn
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from tplo.blocks import find_blocks
from tplo.config import Method, PruneConfig, Scorer, Structure
from tplo.data.calibration import CalibrationSource, build_calibration, calibration_batches
from tplo.export import REPORT_FILE, check_export_dir, export_pretrained
from tplo.mask_checksum import (check_same_across_ranks, checksum_from_tensor, checksum_tensor, mask_checksum,
                                pack_bits)
from tplo.masks import apply_masks, collect_masks, load_masks, mask_gradients, masked_modules, model_sparsity
from tplo.pruning import prune
from tplo.pruning_report import PruneReport
from tplo.model_source import resolve_model_path


@dataclass
class Calibration:
    """Calibration text the callback builds itself, instead of asking the datamodule.

    Args:
        sources: calibration sources with their window counts (see `tplo.data.CalibrationSource`),
            e.g. 64 C4 windows + 64 enriched TruthfulQA windows.
        seqlen: tokens per calibration window.
        batch_size: windows per forward pass.
        seed: seed of the source shuffling and mixing.
    """

    sources: list[CalibrationSource] = field(default_factory=lambda: [CalibrationSource()])
    seqlen: int = 2048
    batch_size: int = 8
    seed: int = 0


class TPLOCallback(Callback):
    """Prune the LightningModule's Hugging Face model with TPLO (or a baseline) before training starts.

    Backbone protocol: the LightningModule exposes the model to prune as attribute `backbone` (a
    Hugging Face `PreTrainedModel`), or returns it from a method `get_backbone()`.

    Data protocol (checked in this order):
        calibration: the callback's `calibration` sources, tokenised with the tokenizer found as below;
            else `trainer.datamodule.calibration_batches()` (a list of dicts with `input_ids`,
            `attention_mask`), which `tplo.data.StatementDataModule` provides.
        statements (methods swl, tplo, tplo_blend): `trainer.datamodule.truth_batches()`, batches with
            `input_ids`, `attention_mask`, `labels`, `topics`, `negated`.
        tokenizer (for `calibration` and the export): the callback's `tokenizer`, else a `tokenizer`
            attribute of the LightningModule, else of the datamodule.

    Settings, backbone, blocks, pivot and export folder are checked in `__init__` and `setup`, before any
    calibration runs. On resume (`ckpt_path`), masks and report come from the checkpoint and nothing is
    pruned again. Under DDP every rank prunes the same model on the same calibration data and the ranks
    compare a SHA-256 of their masks (32 bytes each, not the masks), stopping if they differ; only rank 0
    writes files. Strategies that shard parameters (FSDP, DeepSpeed, ModelParallel) are refused in `setup`.

    Args:
        sparsity: target fraction of pruned weights over all block linears.
        method: per-block allocation: uniform, owl, swl, tplo or tplo_blend.
        scorer: weight importance: magnitude or wanda.
        structure: mask pattern: unstructured, 2:4 or 4:8 (N:M needs sparsity 1 - N/M).
        owl_m: OWL outlier threshold M (multiple of the block's mean score).
        owl_lambda: OWL lambda: densities spread over (1 - sparsity) +- lambda.
        beta: weight of the truth-separation term (swl, tplo, tplo_blend).
        pivot: TPLO splice block, or auto (= max(0, argmax(p) - 2)).
        s_min: lowest per-block sparsity.
        s_max: highest per-block sparsity.
        sequential: prune block by block on the outputs of the already pruned blocks.
        offload: keep blocks on CPU and move one at a time to the trainer's device.
        blocks: attribute path of the backbone's ModuleList of blocks (e.g. model.layers); None finds it.
        pooling: statement feature for the truth separation: auto, last or mean.
        calibration: calibration text to build here; None takes the datamodule's calibration_batches().
        tokenizer: Hugging Face id or folder of the tokenizer, when neither the LightningModule nor the
            datamodule has a `tokenizer` attribute.
        keep_masks: keep masked weights exactly zero during training (gradients masked before and
            weights re-zeroed after every optimizer step).
        export_dir: where the pruned model is saved at fit end; None means `<log_dir>/pruned_model`. The
            export is written to a temporary folder next to it and renamed when complete.
        overwrite: replace an existing export at `export_dir` (only once the new one is complete); without
            it a non-empty `export_dir` is refused before pruning starts.
    """

    def __init__(
        self,
        sparsity: float = 0.5,
        method: Method = "tplo",
        scorer: Scorer = "wanda",
        structure: Structure = "unstructured",
        owl_m: float = 5.0,
        owl_lambda: float = 0.08,
        beta: float = 0.04,
        pivot: int | Literal["auto"] = "auto",
        s_min: float = 0.0,
        s_max: float = 0.99,
        sequential: bool = True,
        offload: bool = False,
        blocks: str | None = None,
        pooling: Literal["auto", "last", "mean"] = "auto",
        calibration: Calibration | None = None,
        tokenizer: str | None = None,
        keep_masks: bool = True,
        export_dir: str | None = None,
        overwrite: bool = False,
    ) -> None:
        self.config = PruneConfig(sparsity=sparsity, method=method, scorer=scorer, structure=structure, owl_m=owl_m,
                                  owl_lambda=owl_lambda, beta=beta, pivot=pivot, s_min=s_min, s_max=s_max,
                                  sequential=sequential, offload=offload, blocks=blocks, pooling=pooling)
        self.calibration = calibration
        self.tokenizer = tokenizer
        self.keep_masks = keep_masks
        self.export_dir = export_dir
        self.overwrite = overwrite
        if export_dir is not None:
            check_export_dir(export_dir, overwrite)
        self.report: PruneReport | None = None
        self.mask_checksum: str | None = None
        self.exported: Path | None = None
        self._log_dir: Path | None = None
        self._backbone: nn.Module | None = None
        self._restored_masks: dict[str, torch.Tensor] | None = None
        self._hooks: list[Any] = []

    # ------------------------------------------------------------------ hooks

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """Check what can be checked before any calibration: strategy, backbone, blocks, pivot, export folder."""
        if stage != "fit":
            return
        check_strategy(trainer.strategy)
        _, blocks = find_blocks(get_backbone(pl_module), self.config.blocks)
        self.config.check_blocks(len(blocks))
        self._log_dir = Path(trainer.log_dir)  # a collective under DDP: every rank must ask
        check_export_dir(self._export_path(), self.overwrite)

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Prune (or restore the checkpoint's masks), check them across ranks, log the allocation, and arm
        the mask hooks."""
        backbone = self._backbone = get_backbone(pl_module)
        if self._restored_masks is not None:
            load_masks(backbone, self._restored_masks)
            self._restored_masks = None
            rank_zero_info(f"TPLOCallback: restored masks from the checkpoint (sparsity {model_sparsity(backbone):.4f}); "
                           "not pruning again.")
        elif self.report is None:
            self.report = prune(backbone, self._calibration_batches(trainer, pl_module),
                                self._statements(trainer), self.config, device=trainer.strategy.root_device,
                                progress=trainer.is_global_zero)
        self.mask_checksum = same_masks_on_every_rank(trainer, backbone)
        if trainer.is_global_zero:
            self.report.save(self._log_dir / REPORT_FILE)
            Console().print(self.report.rich_table())
        self._log(trainer)
        if self.keep_masks:
            masked = list(masked_modules(backbone).values())
            self._hooks = [opt.register_step_post_hook(lambda opt, *_: _rezero(opt, masked)) for opt in trainer.optimizers]

    def on_before_optimizer_step(self, trainer: Trainer, pl_module: LightningModule,
                                 optimizer: torch.optim.Optimizer) -> None:
        if self.keep_masks:
            mask_gradients(get_backbone(pl_module))

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Export the pruned model with its report and tokenizer (rank 0 only, atomically)."""
        self._remove_hooks()
        backbone = get_backbone(pl_module)
        for logger in trainer.loggers:
            logger.log_metrics({"prune/global_sparsity": model_sparsity(backbone)}, step=trainer.global_step)
        if not trainer.is_global_zero:
            return
        tokenizer = self._tokenizer(trainer, pl_module)
        self.exported = export_pretrained(backbone, self._export_path(), self.report, tokenizer, self.overwrite)
        rank_zero_info(f"TPLOCallback: report in {self._log_dir / REPORT_FILE}; pruned model in {self.exported}"
                       + ("" if tokenizer is not None else " (no tokenizer found to save with it)"))

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        self._remove_hooks()

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._remove_hooks()

    def state_dict(self) -> dict[str, Any]:
        """The report and the masks (bit-packed) of the pruned backbone."""
        if self.report is None or self._backbone is None:
            return {}
        masks = collect_masks(self._backbone)
        return {"report": self.report.to_dict(),
                "masks": {name: {"shape": list(mask.shape), "bits": pack_bits(mask).cpu()}
                          for name, mask in masks.items()}}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Keep the checkpoint's report and masks; `on_fit_start` applies them instead of pruning."""
        if not state_dict:
            return
        self.report = PruneReport.from_dict(state_dict["report"])
        self._restored_masks = {name: _unpack(m["bits"], m["shape"]) for name, m in state_dict["masks"].items()}

    # ------------------------------------------------------------------ helpers

    def _export_path(self) -> Path:
        return Path(self.export_dir) if self.export_dir else self._log_dir / "pruned_model"

    def _calibration_batches(self, trainer: Trainer, pl_module: LightningModule) -> list[dict[str, torch.Tensor]]:
        if self.calibration is not None:
            tokenizer = self._tokenizer(trainer, pl_module)
            if tokenizer is None:
                raise ValueError("TPLOCallback: calibration text needs a tokenizer; set the callback's `tokenizer`, "
                                 "or give the LightningModule or datamodule a `tokenizer` attribute.")
            frames = getattr(trainer.datamodule, "frames", None)
            ids = build_calibration(self.calibration.sources, tokenizer, self.calibration.seqlen, self.calibration.seed,
                                    statements=frames.get("train") if isinstance(frames, dict) else None)
            return calibration_batches(ids, self.calibration.batch_size)
        if hasattr(trainer.datamodule, "calibration_batches"):
            return list(trainer.datamodule.calibration_batches())
        raise ValueError("TPLOCallback: no calibration data. Set the callback's `calibration` sources, or use a "
                         "datamodule with calibration_batches() such as tplo.data.StatementDataModule.")

    def _statements(self, trainer: Trainer) -> list[dict[str, Any]] | None:
        if not self.config.needs_statements:
            return None
        if hasattr(trainer.datamodule, "truth_batches"):
            return list(trainer.datamodule.truth_batches())
        raise ValueError(f"TPLOCallback: method {self.config.method!r} needs labelled statements from the "
                         "datamodule's truth_batches() (tplo.data.StatementDataModule has it); without them use "
                         "method 'owl' or 'uniform'.")

    def _tokenizer(self, trainer: Trainer, pl_module: LightningModule) -> PreTrainedTokenizerBase | None:
        if self.tokenizer is not None:
            return AutoTokenizer.from_pretrained(resolve_model_path(self.tokenizer))
        for owner in (pl_module, trainer.datamodule):
            tokenizer = getattr(owner, "tokenizer", None)
            if isinstance(tokenizer, PreTrainedTokenizerBase):
                return tokenizer
        return None

    def _log(self, trainer: Trainer) -> None:
        """Per-block scalars to every logger; figure and table to TensorBoard."""
        metrics = {"prune/global_sparsity": self.report.global_sparsity}
        for layer in self.report.layers:
            metrics[f"prune/sparsity/layer_{layer.index:02d}"] = layer.achieved_sparsity
            if layer.outlier_ratio is not None:
                metrics[f"prune/outlier_ratio/layer_{layer.index:02d}"] = layer.outlier_ratio
            if layer.truth_separation is not None:
                metrics[f"prune/truth_separation/layer_{layer.index:02d}"] = layer.truth_separation
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)
            if isinstance(logger, TensorBoardLogger) and trainer.is_global_zero:
                logger.experiment.add_figure("prune/allocation", allocation_figure(self.report), trainer.global_step)
                logger.experiment.add_text("prune/report", self.report.markdown(), trainer.global_step)

    def _remove_hooks(self) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks = []


def get_backbone(pl_module: LightningModule) -> nn.Module:
    """The model to prune: `pl_module.backbone`, else `pl_module.get_backbone()`."""
    backbone = getattr(pl_module, "backbone", None)
    if backbone is None and callable(getattr(pl_module, "get_backbone", None)):
        backbone = pl_module.get_backbone()
    if not isinstance(backbone, nn.Module):
        raise AttributeError(f"TPLOCallback cannot find the model to prune on {type(pl_module).__name__}: give it an "
                             "attribute `backbone` holding the Hugging Face model, or a method `get_backbone()` "
                             "that returns it.")
    return backbone


def check_strategy(strategy: Strategy) -> None:
    """Refuse strategies that shard parameters: scores and masks need each block's full weights."""
    if isinstance(strategy, (FSDPStrategy, DeepSpeedStrategy, ModelParallelStrategy)):
        raise ValueError(f"TPLOCallback does not support {type(strategy).__name__}: it shards the parameters, and "
                         "pruning needs every block's full weights in each process. Use strategy: ddp (one full "
                         "model per GPU) or a single device.")


def same_masks_on_every_rank(trainer: Trainer, backbone: nn.Module) -> str:
    """The SHA-256 of the backbone's masks, gathered from every rank; raises if any rank differs."""
    checksum = mask_checksum(collect_masks(backbone))
    if trainer.world_size > 1:
        gathered = trainer.strategy.all_gather(checksum_tensor(checksum).to(trainer.strategy.root_device))
        check_same_across_ranks([checksum_from_tensor(row) for row in gathered.reshape(trainer.world_size, -1)])
    rank_zero_info(f"TPLOCallback: mask checksum sha256:{checksum[:16]}, identical on all {trainer.world_size} "
                   "process(es).")
    return checksum


def allocation_figure(report: PruneReport) -> Figure:
    """Bar chart of the per-block sparsity, with the outlier ratio and truth separation below it."""
    index = [layer.index for layer in report.layers]
    fig = Figure(figsize=(max(6.0, 0.3 * len(index)), 5.0), tight_layout=True)
    top, bottom = fig.subplots(2, 1, sharex=True)
    top.bar(index, [layer.achieved_sparsity for layer in report.layers], color="tab:blue", label="achieved")
    top.axhline(report.sparsity, color="black", linestyle="--", linewidth=1, label=f"target {report.sparsity:g}")
    top.set_ylabel("sparsity")
    top.set_title(f"{report.method} / {report.scorer}: global sparsity {report.global_sparsity:.4f}")
    top.legend(loc="lower right")
    for name, label, color in (("outlier_ratio", "outlier ratio D (%)", "tab:orange"),
                               ("truth_separation", "truth separation p", "tab:green")):
        values = [getattr(layer, name) for layer in report.layers]
        if all(v is not None for v in values):
            axis = bottom if name == "outlier_ratio" else bottom.twinx()
            axis.plot(index, values, marker="o", color=color)
            axis.set_ylabel(label, color=color)
    bottom.set_xlabel("block")
    return fig


def _rezero(optimizer: torch.optim.Optimizer, masked: list[nn.Module]) -> None:
    """Re-zero the masked weights this optimizer holds (a frozen backbone costs nothing)."""
    held = {id(p) for group in optimizer.param_groups for p in group["params"]}
    for module in masked:
        if id(module.weight) in held:
            apply_masks(module)


def _unpack(bits: torch.Tensor, shape: list[int]) -> torch.Tensor:
    count = math.prod(shape)
    return torch.from_numpy(np.unpackbits(bits.numpy(), count=count).astype(bool)).reshape(shape)

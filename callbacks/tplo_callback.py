"""`TPLOCallback`: prune a LightningModule's Hugging Face model once, before the strategy moves it to the device,
keep it sparse while training, log the allocation, and export the pruned model at fit end (atomically, from
rank 0 only)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.strategies import DeepSpeedStrategy, FSDPStrategy, ModelParallelStrategy, Strategy
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from matplotlib.figure import Figure
from rich.console import Console
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from transformers import PreTrainedTokenizerBase

from tplo.blocks import find_blocks
from tplo.callbacks.rank_sync import broadcast_pruning, same_masks_on_every_rank
from tplo.config import Method, PruneConfig, Scorer, Structure
from tplo.data.calibration import CalibrationSource, build_calibration, calibration_batches
from tplo.export import REPORT_FILE, check_export_dir, export_pretrained
from tplo.loading import load_tokenizer
from tplo.mask_checksum import (PackedMask, moments_differ, pack_masks, packed_checksum, unpack_masks,
                                weight_moments)
from tplo.masks import (MASK, apply_masks, collect_masks, drop_masks, load_masks, mask_gradients, masked_modules,
                        model_sparsity)
from tplo.pruning import prune
from tplo.pruning_report import PruneReport


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
        statements (methods swl, tplo, tplo_blend, truth_prefix): `trainer.datamodule.truth_batches()`, batches with
            `input_ids`, `attention_mask`, `labels`, `topics`, `negated`.
        tokenizer (for `calibration` and the export): the callback's `tokenizer`, else a `tokenizer`
            attribute of the LightningModule, else of the datamodule.

    When: pruning runs in `setup`, before the strategy moves the model to the device, so with `offload` only the
    block being pruned is on the device. Settings, backbone, blocks, pivot and export folder are checked first.
    A LightningModule that needs something from the dense model defines `on_before_prune()`, called just before.

    Masks: with a backbone that trains (any masked weight requires grad) they stay on the model as bool buffers,
    and `keep_masks` re-applies them around every optimizer step. With a frozen backbone the pruned weights are
    zero and stay zero, so the buffers are dropped and the masks kept bit-packed on the CPU (1 bit per weight).

    Checkpoints hold the report, the packed masks and their checksum; for a frozen backbone also the moments of
    the pruned weights and, with SparseGPT, the reconstructed weights (a module that leaves its frozen backbone
    out of checkpoints, like `tplo.TruthProbe`, does not save them). Resuming applies them to the backbone
    as loaded and checks that masks and weights are exactly the checkpoint's. To skip pruning on resume, the
    callback must know in `setup` that a checkpoint is coming: `train.py` tells it; in your own code set
    `trainer.ckpt_path = path` before `trainer.fit(...)` (with `fit(ckpt_path=...)` pruning runs once more
    first, and the checkpoint's masks then replace its result).

    Under DDP rank 0 prunes and broadcasts the report and packed masks (and reconstructed weights); all ranks
    then compare a SHA-256 of their masks and stop if they differ. Only rank 0 writes files. Strategies that
    shard parameters (FSDP, DeepSpeed, ModelParallel) are refused in `setup`.

    Args:
        sparsity: target fraction of pruned weights over all block linears.
        method: per-block allocation: uniform, owl, swl, tplo, tplo_blend or truth_prefix.
        scorer: weight importance: magnitude, wanda or sparsegpt (which also reconstructs the kept weights).
        structure: mask pattern: unstructured, 2:4 or 4:8 (N:M needs sparsity 1 - N/M).
        owl_m: OWL outlier threshold M (multiple of the block's mean score).
        owl_lambda: OWL lambda: densities spread over (1 - sparsity) +- lambda.
        beta: weight of the truth-separation term (swl, tplo, tplo_blend).
        pivot: TPLO splice block, or auto (= max(0, argmax(p) - 2)).
        prefix_shift: truth_prefix: density added up to the peak-separation block, taken from the blocks after it.
        block_sparsities: your own per-block sparsities (one per block) instead of the method's.
        s_min: lowest per-block sparsity.
        s_max: highest per-block sparsity.
        sequential: prune block by block on the outputs of the already pruned blocks.
        blocksize: SparseGPT columns per lazy-update block.
        percdamp: SparseGPT dampening, as a fraction of the mean Hessian diagonal.
        offload: keep blocks on CPU and move one at a time to the trainer's device while pruning.
        blocks: attribute path of the backbone's ModuleList of blocks (e.g. model.layers); None finds it.
        pooling: statement feature for the truth separation: auto, last or mean.
        calibration: calibration text to build here; None takes the datamodule's calibration_batches().
        tokenizer: model source (Hugging Face id, folder, .gguf or bundled name) whose tokenizer to use, when
            neither the LightningModule nor the datamodule has a `tokenizer` attribute.
        keep_masks: keep masked weights exactly zero while the backbone trains (gradients masked before and
            weights re-zeroed after every optimizer step).
        export_dir: where the pruned model is saved at fit end; None means `<log_dir>/pruned_model`. The
            export is written to a temporary folder next to it and renamed when complete.
        export: save the pruned model at fit end (false: keep it in memory only, e.g. to evaluate it in place).
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
        prefix_shift: float = 0.05,
        block_sparsities: list[float] | None = None,
        s_min: float = 0.0,
        s_max: float = 0.99,
        sequential: bool = True,
        blocksize: int = 128,
        percdamp: float = 0.01,
        offload: bool = False,
        blocks: str | None = None,
        pooling: Literal["auto", "last", "mean"] = "auto",
        calibration: Calibration | None = None,
        tokenizer: str | None = None,
        keep_masks: bool = True,
        export_dir: str | None = None,
        export: bool = True,
        overwrite: bool = False,
    ) -> None:
        self.config = PruneConfig(sparsity=sparsity, method=method, scorer=scorer, structure=structure, owl_m=owl_m,
                                  owl_lambda=owl_lambda, beta=beta, pivot=pivot, prefix_shift=prefix_shift,
                                  block_sparsities=block_sparsities,
                                  s_min=s_min, s_max=s_max,
                                  sequential=sequential, blocksize=blocksize, percdamp=percdamp, offload=offload,
                                  blocks=blocks, pooling=pooling)
        self.calibration = calibration
        self.tokenizer = tokenizer
        self.keep_masks = keep_masks
        self.export_dir = export_dir
        self.export = export
        self.overwrite = overwrite
        if export and export_dir is not None:
            check_export_dir(export_dir, overwrite)
        self.report: PruneReport | None = None
        self.mask_checksum: str | None = None
        self.exported: Path | None = None
        self.pruned_here = False
        """Whether this process ran the pruning (under DDP only rank 0 does)."""
        self._backbone: nn.Module | None = None
        self._packed: dict[str, PackedMask] = {}
        self._moments: dict[str, list[float]] = {}
        self._trainable = False
        self._restored: dict[str, Any] | None = None
        self._log_dir: Path | None = None
        self._hooks: list[Any] = []

    # ------------------------------------------------------------------ hooks

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        """Check strategy, backbone, blocks, pivot and export folder, then prune (unless a checkpoint will
        provide the masks), before the strategy moves the model to the device."""
        check_strategy(trainer.strategy)
        _, blocks = find_blocks(get_backbone(pl_module), self.config.blocks)
        self.config.check_blocks(len(blocks))
        if stage != "fit":
            return
        self._log_dir = Path(trainer.log_dir)  # a collective under DDP: every rank must ask
        if self.export:
            check_export_dir(self._export_path(), self.overwrite)
        if self.report is None and trainer.ckpt_path is None:
            self._prune(trainer, pl_module)

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Apply a checkpoint's masks if one was loaded, and arm the mask hooks of a training backbone."""
        self._apply_restored(trainer, pl_module)
        if self.report is None:
            raise RuntimeError("TPLOCallback: the checkpoint being resumed holds no TPLOCallback state (it was written "
                               "by a run without this callback), so there are no masks to restore; start a fresh run "
                               "to prune, or resume from a checkpoint of a pruned run.")
        if self.keep_masks and self._trainable:
            masked = list(masked_modules(get_backbone(pl_module)).values())
            self._hooks = [opt.register_step_post_hook(lambda opt, *_: _rezero(opt, masked)) for opt in trainer.optimizers]

    def on_validation_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._apply_restored(trainer, pl_module)

    def on_test_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._apply_restored(trainer, pl_module)

    def on_predict_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._apply_restored(trainer, pl_module)

    def on_before_optimizer_step(self, trainer: Trainer, pl_module: LightningModule,
                                 optimizer: torch.optim.Optimizer) -> None:
        if self.keep_masks and self._trainable:
            mask_gradients(get_backbone(pl_module))

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Export the pruned model with its report and tokenizer (rank 0 only, atomically)."""
        self._remove_hooks()
        backbone = get_backbone(pl_module)
        for logger in trainer.loggers:
            logger.log_metrics({"prune/global_sparsity": model_sparsity(backbone, list(self._packed))},
                               step=trainer.global_step)
        if not trainer.is_global_zero or not self.export:
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
        """What rebuilds the pruned backbone from the model as loaded: report, packed masks, checksum, weight
        moments, and the reconstructed weights when pruning changed them and the backbone is frozen."""
        if self.report is None or self._restored is not None:
            return self._restored or {}
        state = {"report": self.report.to_dict(), "masks": self._packed, "checksum": self.mask_checksum,
                 "moments": self._moments}
        if self.config.scorer == "sparsegpt" and not self._trainable:
            backbone = self._backbone
            state["weights"] = {name: backbone.get_submodule(name).weight.detach().cpu() for name in self._packed}
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Keep the checkpoint's state; the next stage start applies it to the backbone instead of pruning."""
        if not state_dict:
            return
        if self.pruned_here:
            rank_zero_warn("TPLOCallback: pruning ran before the checkpoint was restored, whose masks now replace its "
                           "result; set trainer.ckpt_path before fit (train.py does) to skip it.")
        self.report = PruneReport.from_dict(state_dict["report"])
        self._restored = state_dict

    def masks(self) -> dict[str, torch.Tensor]:
        """The keep-masks (bool, weight layout, on the CPU) of the pruned backbone, by module name."""
        return unpack_masks(self._packed)

    # ------------------------------------------------------------------ helpers

    def _prune(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Prune on rank 0 (on the strategy's root device), share the result, keep the masks, log."""
        backbone = get_backbone(pl_module)
        if callable(getattr(pl_module, "on_before_prune", None)):
            pl_module.on_before_prune()  # e.g. TruthProbe records the dense features it distills towards
        report = None
        if trainer.is_global_zero:
            report = prune(backbone, self._calibration_batches(trainer, pl_module), self._statements(trainer),
                           self.config, device=trainer.strategy.root_device, progress=True)
            self.pruned_here = True
        if trainer.world_size > 1:
            report = broadcast_pruning(trainer, backbone, report, with_weights=self.config.scorer == "sparsegpt")
        self.report = report
        self._keep(trainer, backbone, collect_masks(backbone))
        if trainer.is_global_zero:
            self.report.save(self._log_dir / REPORT_FILE)
            Console().print(self.report.rich_table())
        self._log(trainer)

    def _keep(self, trainer: Trainer, backbone: nn.Module, masks: dict[str, torch.Tensor]) -> None:
        """Pack the masks and check them across ranks; for a frozen backbone note the weights' moments (what a
        resume must rebuild) and drop the buffers."""
        self._backbone = backbone
        self._packed = pack_masks(masks)
        self._trainable = any(backbone.get_submodule(name).weight.requires_grad for name in masks)
        self.mask_checksum = same_masks_on_every_rank(trainer, self._packed)
        self._moments = {} if self._trainable else weight_moments(backbone, sorted(masks))
        if not self._trainable:
            drop_masks(backbone)
        elif trainer.world_size > 1:  # every rank holds the same masks (checked above): DDP need not sync them
            prefix = next(name for name, module in trainer.lightning_module.named_modules() if module is backbone)
            ignored = getattr(trainer.lightning_module, "_ddp_params_and_buffers_to_ignore", [])
            DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(
                trainer.lightning_module, [*ignored, *(f"{prefix}.{name}.{MASK}".lstrip(".") for name in masks)])

    def _apply_restored(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Rebuild the pruned backbone from a loaded checkpoint: weights (if saved), masks, then checks."""
        if self._restored is None:
            return
        state, self._restored = self._restored, None
        backbone = get_backbone(pl_module)
        if "weights" in state:
            with torch.no_grad():
                for name, weight in state["weights"].items():
                    backbone.get_submodule(name).weight.copy_(weight)
        load_masks(backbone, unpack_masks(state["masks"]))
        if packed_checksum(state["masks"]) != state["checksum"]:
            raise RuntimeError("TPLOCallback: the checkpoint's masks do not match their checksum; the file is damaged.")
        differ = moments_differ(state["moments"], weight_moments(backbone, sorted(state["masks"])))
        if differ:
            raise RuntimeError(
                f"TPLOCallback: after applying the checkpoint's masks, the weights of {len(differ)} module(s) (first: "
                f"{differ[0]}) differ from the pruned backbone the checkpoint was saved with. The model loaded now is "
                "not the one pruned then: load the same model_name_or_path and dtype as that run.")
        self._keep(trainer, backbone, collect_masks(backbone))
        rank_zero_info(f"TPLOCallback: restored masks and weights from the checkpoint (sparsity "
                       f"{model_sparsity(backbone, list(self._packed)):.4f}); not pruning again.")

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
            return load_tokenizer(self.tokenizer)
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

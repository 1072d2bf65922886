"""Truth-feature distillation: the loss against a hand computation, and the fine-tune option of TruthProbe:
the pruned model's features move back towards the dense ones, the masks hold, and runs are deterministic."""

import lightning as L
import pytest
import torch

from test_reliability_checkpoints import DATA
from tplo.callbacks import TPLOCallback
from tplo.data import StatementDataModule
from tplo.distillation import distillation_loss, feature_scales
from tplo.masks import collect_masks
from tplo.truth_probe import TruthProbe


def test_loss_and_scales_by_hand():
    dense = torch.tensor([[[1.0, 0.0], [2.0, 2.0]], [[1.0, 0.0], [0.0, 2.0]]])  # [N=2, L+1=2, H=2]
    scales = feature_scales(dense)  # layer 0: mean(1, 1) = 1 (no spread, still a scale); layer 1: mean(8, 4) = 6
    assert scales.tolist() == [1.0, 6.0]
    dense = dense * torch.tensor([1.0, 10.0])[None, :, None]  # a layer 10 times larger weighs the same
    assert feature_scales(dense).tolist() == [1.0, 600.0]
    pruned = dense + torch.tensor([[[1.0, 0.0], [0.0, 30.0]], [[0.0, 0.0], [0.0, 0.0]]])
    # statement 0: layer 0 off by 1 (1/1), layer 1 off by 30 (900/600); statement 1 exact; mean over 4 terms
    assert distillation_loss(pruned, dense, feature_scales(dense)).item() == pytest.approx((1 + 1.5) / 4)


def finetune(tmp_path, folder, distill_weight, steps=6):
    L.seed_everything(0)
    model = TruthProbe(folder, finetune=True, finetune_lr=1e-3, lm_loss_weight=0.0, distill_weight=distill_weight)
    distances = []

    class Watch(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            distances.append(float(trainer.callback_metrics.get("train/distill_loss", float("nan"))))

    trainer = L.Trainer(accelerator="cpu", max_steps=steps, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False, limit_val_batches=0,
                        default_root_dir=tmp_path, callbacks=[TPLOCallback(method="uniform", sparsity=0.6), Watch()])
    trainer.fit(model, datamodule=StatementDataModule(folder, **DATA))
    return model, distances


def test_distillation_pulls_the_pruned_features_back_and_keeps_the_masks(tmp_path, tiny_llama):
    folder = tiny_llama
    model, distances = finetune(tmp_path / "a", folder, distill_weight=1.0)
    assert distances[-1] < 0.8 * distances[0]  # the features move back towards the dense model's
    for name, mask in collect_masks(model.backbone).items():
        assert torch.count_nonzero(model.backbone.get_submodule(name).weight[~mask]) == 0, name
    again, _ = finetune(tmp_path / "b", folder, distill_weight=1.0)
    for (name, a), b in zip(model.backbone.named_parameters(), again.backbone.parameters()):
        assert torch.equal(a, b), name  # deterministic given the seed


def test_distillation_needs_its_dense_record_and_finetuning(tmp_path, tiny_llama):
    folder = tiny_llama
    with pytest.raises(ValueError, match="needs finetune: true"):  # before any model is loaded
        TruthProbe(str(tmp_path / "never-loaded"), distill_weight=1.0)
    model = TruthProbe(folder, finetune=True, distill_weight=1.0)
    trainer = L.Trainer(accelerator="cpu", max_steps=1, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False, default_root_dir=tmp_path)
    with pytest.raises(ValueError, match="recorded before pruning: attach TPLOCallback"):
        trainer.fit(model, datamodule=StatementDataModule(folder, **DATA))

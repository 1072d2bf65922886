"""What an 8B run needs from the Lightning side: pruning before the strategy moves the model, no frozen backbone
in checkpoints (and an exact rebuild on resume), masks off the model when nothing trains, gradient
checkpointing that keeps the masks, and the best validation layer kept for `test`."""

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.strategies import SingleDeviceStrategy

import tplo.callbacks.tplo_callback as tplo_callback
import tplo.pruning as pruning
from test_reliability_ddp import tiny_llama_folder
from tplo.callbacks import TPLOCallback
from tplo.data import StatementDataModule
from tplo.masks import collect_masks
from tplo.truth_probe import TruthProbe

DATA = dict(statements="generated:capitals,inventors", max_statements_per_topic=48, batch_size=8,
            truth_statements_per_dataset=8, calibration=[{"kind": "statements", "count": 4}], calibration_seqlen=32,
            calibration_batch_size=4)


@pytest.fixture
def folder(tiny_llama):
    return tiny_llama


def fit(tmp_path, folder, callbacks, max_epochs=1, ckpt_path=None, **probe):
    model = TruthProbe(folder, **probe)
    trainer = L.Trainer(accelerator="cpu", max_epochs=max_epochs, callbacks=callbacks, logger=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    trainer.ckpt_path = ckpt_path
    trainer.fit(model, datamodule=StatementDataModule(folder, **DATA))
    return model, trainer


def test_pruning_runs_before_the_strategy_moves_the_model_and_offload_moves_one_block_at_a_time(tmp_path, folder,
                                                                                               monkeypatch):
    events, inside = [], set()
    real_prune, real_on_device = tplo_callback.prune, pruning.on_device

    def recording_prune(model, *args, **kwargs):
        events.append(("prune", {str(p.device) for p in model.model.layers.parameters()}, kwargs["device"]))
        return real_prune(model, *args, **kwargs)

    class on_device:  # the context that moves one block to the compute device
        def __init__(self, module, device):
            self.inner = real_on_device(module, device)
            self.module = module

        def __enter__(self):
            inside.add(id(self.module))
            events.append(("block", len(inside)))
            return self.inner.__enter__()

        def __exit__(self, *exc):
            inside.discard(id(self.module))
            return self.inner.__exit__(*exc)

    monkeypatch.setattr(tplo_callback, "prune", recording_prune)
    monkeypatch.setattr(pruning, "on_device", on_device)
    real_setup = SingleDeviceStrategy.setup
    monkeypatch.setattr(SingleDeviceStrategy, "setup",
                        lambda self, trainer: events.append(("strategy.setup",)) or real_setup(self, trainer))
    fit(tmp_path, folder, [TPLOCallback(method="tplo", offload=True)])
    names = [e[0] for e in events]
    assert names.index("prune") < names.index("strategy.setup")
    prune_event = events[names.index("prune")]
    assert prune_event[1] == {"cpu"} and prune_event[2] == torch.device("cpu")  # blocks where the user put them
    blocks = [e for e in events if e[0] == "block"]
    assert blocks and max(depth for _, depth in blocks) == 1  # one block at a time


def test_a_frozen_backbone_is_not_checkpointed_and_resumes_exactly(tmp_path, folder, monkeypatch):
    checkpoints = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    callback = TPLOCallback(method="tplo")
    model, _ = fit(tmp_path, folder, [callback, checkpoints])
    assert not collect_masks(model.backbone)  # nothing trains: no mask buffers travel with the model
    masks = callback.masks()
    weights = {n: model.backbone.get_submodule(n).weight.detach().clone() for n in masks}
    assert all(torch.count_nonzero(weights[n][~masks[n]]) == 0 for n in masks)
    state = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=False)
    assert not [k for k in state["state_dict"] if k.startswith("backbone.")]
    assert {k.split(".")[0] for k in state["state_dict"]} == {"norms", "probes"}

    monkeypatch.setattr(tplo_callback, "prune", lambda *a, **k: pytest.fail("pruned again on resume"))
    resumed_callback = TPLOCallback(method="tplo", overwrite=True)  # the same folder: replace the first export
    resumed, trainer = fit(tmp_path, folder, [resumed_callback], max_epochs=2, ckpt_path=tmp_path / "ckpt" / "last.ckpt")
    assert trainer.current_epoch == 2 and resumed_callback.mask_checksum == callback.mask_checksum
    for name, weight in weights.items():
        assert torch.equal(resumed.backbone.get_submodule(name).weight, weight)


def test_resuming_on_another_backbone_is_refused(tmp_path, folder):
    checkpoints = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    fit(tmp_path, folder, [TPLOCallback(method="uniform"), checkpoints])
    other = str(tiny_llama_folder(tmp_path / "other", seed=1))
    with pytest.raises(RuntimeError, match="differ from the pruned backbone the checkpoint was saved with"):
        fit(tmp_path, other, [TPLOCallback(method="uniform", overwrite=True)], max_epochs=2,
            ckpt_path=tmp_path / "ckpt" / "last.ckpt")


def test_sparsegpt_weights_of_a_frozen_backbone_travel_in_the_callback_state(tmp_path, folder):
    checkpoints = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    model, _ = fit(tmp_path, folder, [TPLOCallback(method="uniform", scorer="sparsegpt"), checkpoints])
    reconstructed = {n: p.detach().clone() for n, p in model.backbone.named_parameters()}
    resumed, _ = fit(tmp_path, folder, [TPLOCallback(method="uniform", scorer="sparsegpt", overwrite=True)], max_epochs=2,
                     ckpt_path=tmp_path / "ckpt" / "last.ckpt")
    for name, param in resumed.backbone.named_parameters():
        assert torch.equal(param, reconstructed[name]), name


def test_gradient_checkpointing_recomputes_blocks_and_the_masks_hold(tmp_path, folder):
    calls = {True: 0, False: 0}  # runs of block 1's MLP with autograd on: training forwards and recomputations
    for checkpointing in (False, True):
        model = TruthProbe(folder, finetune=True, finetune_lr=0.05, gradient_checkpointing=checkpointing)
        model.backbone.model.layers[1].mlp.register_forward_pre_hook(  # inside the block: recomputations run it too
            lambda *a, c=checkpointing: calls.__setitem__(c, calls[c] + torch.is_grad_enabled()))
        callback = TPLOCallback(method="uniform")
        trainer = L.Trainer(accelerator="cpu", max_steps=3, callbacks=[callback], logger=False,
                            enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
                            default_root_dir=tmp_path / str(checkpointing), limit_val_batches=0)
        trainer.fit(model, datamodule=StatementDataModule(folder, **DATA))
        for name, mask in collect_masks(model.backbone).items():
            assert torch.count_nonzero(model.backbone.get_submodule(name).weight[~mask]) == 0, name
    assert calls == {False: 3, True: 6}  # 3 steps; with checkpointing each recomputes block 1 in its backward
    with pytest.raises(ValueError, match="gradient_checkpointing: true .* needs finetune: true"):
        TruthProbe(str(tmp_path / "never-loaded"), gradient_checkpointing=True)  # before any model is loaded


def test_the_best_validation_layer_is_checkpointed_for_test(tmp_path, folder):
    checkpoints = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    model, _ = fit(tmp_path, folder, [TPLOCallback(method="uniform"), checkpoints])
    fresh = TruthProbe(folder)
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[TPLOCallback(method="uniform")])
    metrics = trainer.test(fresh, datamodule=StatementDataModule(folder, **DATA),
                           ckpt_path=tmp_path / "ckpt" / "last.ckpt", verbose=False)[0]
    assert fresh.best_layer == model.best_layer is not None
    assert metrics["test/acc/best_val_layer"] == metrics[f"test/acc/layer_{model.best_layer:02d}"]
    assert not collect_masks(fresh.backbone)  # frozen: masks applied, then dropped
    assert fresh.backbone.model.layers[0].mlp.up_proj.weight.eq(0).float().mean() == pytest.approx(0.5, abs=0.01)

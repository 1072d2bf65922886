"""Nothing lost: a pruning run that fails halfway leaves the model as it was (and a retry gives the masks of a
clean run), a callback crash leaves no files, and sparse fine-tuning resumed from a checkpoint keeps its zeros."""

import importlib

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

import tplo.callbacks.tplo_callback as tplo_callback
from test_lightning_callback import UserData, UserModel, trainer
from tiny_models import tiny_model, token_batches
from tplo import PruneConfig, collect_masks, prune
from tplo.callbacks import TPLOCallback
from tplo.mask_checksum import mask_checksum
from tplo.masks import masked_modules

core = importlib.import_module("tplo.pruning")
BLOCK_2_FIRST_LINEAR = 2 * 7  # a Llama block has 7 linears; row_mask is called once per linear in pass 2


def fail_on_call(monkeypatch, name: str, call: int, error: BaseException):
    """Make `tplo.pruning.<name>` raise `error` on its `call`-th call (0-based)."""
    original, calls = getattr(core, name), []

    def wrapper(*args, **kwargs):
        calls.append(1)
        if len(calls) > call:
            raise error
        return original(*args, **kwargs)

    monkeypatch.setattr(core, name, wrapper)


def assert_untouched(model, before: dict[str, torch.Tensor]) -> None:
    """Same weights bit for bit, no masks, no hooks and no patched forward left on any module."""
    state = model.state_dict()
    assert state.keys() == before.keys() and all(torch.equal(state[k], before[k]) for k in before)
    assert not masked_modules(model)
    for module in model.modules():
        assert "forward" not in module.__dict__
        assert not module._forward_hooks and not module._forward_pre_hooks


def clean_masks(config: PruneConfig, batches) -> dict[str, torch.Tensor]:
    model = tiny_model("llama")
    prune(model, batches, None, config, progress=False)
    return collect_masks(model)


@pytest.mark.parametrize("where, name, call, error", [
    ("pass 1", "outlier_ratio", 2, RuntimeError("CUDA error: an illegal memory access")),
    ("pass 2", "row_mask", BLOCK_2_FIRST_LINEAR, RuntimeError("CUDA out of memory")),
    ("pass 2, Ctrl-C", "row_mask", BLOCK_2_FIRST_LINEAR, KeyboardInterrupt()),
])
@pytest.mark.parametrize("offload", [False, True])
def test_failed_pruning_leaves_the_model_as_it_was(monkeypatch, where, name, call, error, offload):
    config, batches = PruneConfig(sparsity=0.5, method="owl", offload=offload), token_batches(pad_last=3)
    model = tiny_model("llama")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with monkeypatch.context() as patch:
        fail_on_call(patch, name, call, error)
        with pytest.raises(type(error)):
            prune(model, batches, None, config, device="cpu", progress=False)
    assert_untouched(model, before)
    prune(model, batches, None, config, device="cpu", progress=False)
    expected, got = clean_masks(config, batches), collect_masks(model)
    assert mask_checksum(got) == mask_checksum(expected)


def test_callback_crash_during_pruning_writes_nothing_and_a_second_run_matches_a_clean_one(tmp_path, monkeypatch):
    model = UserModel()
    before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    with monkeypatch.context() as patch:
        fail_on_call(patch, "row_mask", BLOCK_2_FIRST_LINEAR, RuntimeError("CUDA out of memory"))
        with pytest.raises(RuntimeError, match="out of memory"):
            trainer(tmp_path, [TPLOCallback(sparsity=0.5, method="owl")], max_steps=1).fit(model, datamodule=UserData())
    assert not list(tmp_path.rglob("pruning_report.json")) and not list(tmp_path.rglob("pruned_model"))
    assert not [p for p in tmp_path.rglob(".*") if p.is_dir()]
    assert_untouched(model.backbone, before)

    callback = TPLOCallback(sparsity=0.5, method="owl")
    trainer(tmp_path, [callback], max_steps=1).fit(model, datamodule=UserData())
    expected = clean_masks(PruneConfig(sparsity=0.5, method="owl"), UserData().calibration_batches())
    assert callback.mask_checksum == mask_checksum(expected) == mask_checksum(collect_masks(model.backbone))


class ZeroPatternWatch(L.Callback):
    """After every optimizer step: the masks are the expected ones and every masked weight is exactly zero."""

    def __init__(self, expected: str | None = None):
        self.expected = expected
        self.steps: list[int] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        masks = collect_masks(pl_module.backbone)
        self.expected = self.expected or mask_checksum(masks)
        assert mask_checksum(masks) == self.expected, f"masks changed at step {trainer.global_step}"
        for name, mask in masks.items():
            weight = pl_module.backbone.get_submodule(name).weight
            assert torch.count_nonzero(weight[~mask]) == 0, f"{name} revived pruned weights at {trainer.global_step}"
        self.steps.append(trainer.global_step)


def test_sparse_finetuning_resumed_from_a_checkpoint_keeps_its_zero_pattern(tmp_path, monkeypatch):
    first, watch = UserModel(), ZeroPatternWatch()
    checkpoints = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=3, save_top_k=-1)
    trainer(tmp_path, [TPLOCallback(sparsity=0.5, method="owl"), watch, checkpoints], max_steps=3).fit(
        first, datamodule=UserData())
    assert watch.steps == [1, 2, 3]
    at_checkpoint = {k: v.clone() for k, v in first.backbone.state_dict().items()}

    monkeypatch.setattr(tplo_callback, "prune", lambda *a, **k: pytest.fail("pruned again on resume"))
    resumed, watch2 = UserModel(tiny_model("llama", seed=1)), ZeroPatternWatch(watch.expected)
    second = trainer(tmp_path, [TPLOCallback(sparsity=0.5, method="owl"), watch2], max_steps=6)
    second.ckpt_path = tmp_path / "ckpt" / "epoch=0-step=3.ckpt"
    second.fit(resumed, datamodule=UserData())
    assert watch2.steps == [4, 5, 6]
    state = resumed.backbone.state_dict()
    assert any(not torch.equal(state[k], at_checkpoint[k]) for k in state), "the resumed run did not train"

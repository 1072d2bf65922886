"""Pruning under SDPA attention and in bfloat16, and sparse training with gradient accumulation."""

import copy
import math
from dataclasses import replace

import lightning as L
import pytest
import torch
from transformers import AutoModelForCausalLM

import tplo.callbacks
import tplo.pruning
from test_core_prune import assert_recorded_calls_reproduce, one_pass_masks, statement_batches
from test_lightning_callback import UserData, UserModel, masked_weights, trainer
from tiny_models import CONFIGS, tiny_model, token_batches
from tplo import PruneConfig, collect_masks, prune
from tplo.blocks import find_blocks, prunable_linears
from tplo.masks import masked_modules

DECODERS = ["llama", "qwen2"]


def tiny_sdpa(arch: str, seed: int = 0):
    """`tiny_model(arch, seed)` with PyTorch's scaled_dot_product_attention instead of eager attention."""
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(CONFIGS[arch](), attn_implementation="sdpa").eval()
    assert model.config._attn_implementation == "sdpa"
    return model


@pytest.mark.parametrize("arch", DECODERS)
def test_sdpa_gives_the_masks_of_eager_attention(arch):
    """Padded batches: SDPA must exclude padding from the statistics exactly as eager attention does."""
    for method in ("tplo", "owl", "uniform"):
        eager, sdpa = tiny_model(arch), tiny_sdpa(arch)
        assert eager.config._attn_implementation == "eager"
        reports = [prune(m, token_batches(pad_last=5), statement_batches(), PruneConfig(sparsity=0.5, method=method),
                         progress=False) for m in (eager, sdpa)]
        a, b = collect_masks(eager), collect_masks(sdpa)
        assert a.keys() == b.keys() and len(a) == 28
        assert all(torch.equal(a[k], b[k]) for k in a), method
        eager_layers, sdpa_layers = reports[0].layers, reports[1].layers
        assert [x.outlier_ratio for x in eager_layers] == [x.outlier_ratio for x in sdpa_layers]
        for name in ("target_sparsity", "truth_separation"):  # the features agree to float rounding
            assert [getattr(x, name) for x in eager_layers] == pytest.approx([getattr(x, name) for x in sdpa_layers],
                                                                             abs=1e-6), (method, name)


@pytest.mark.parametrize("arch", DECODERS)
def test_sdpa_statistics_leave_out_padding(arch):
    """One-pass masks under SDPA equal the hand computation over non-padding tokens, whatever ids the padding has."""
    batches = token_batches(pad_last=5)
    for b in batches:
        b["input_ids"][b["attention_mask"] == 0] = 77
    dense, model = tiny_sdpa(arch), tiny_sdpa(arch)
    prune(model, batches, None, PruneConfig(method="uniform", sequential=False), progress=False)
    masks, expected = collect_masks(model), one_pass_masks(dense, batches, 0.5)
    assert masks.keys() == expected.keys() and all(torch.equal(masks[k], expected[k]) for k in masks)


@pytest.mark.parametrize("arch", DECODERS)
def test_recorded_block_calls_reproduce_the_model_under_sdpa(arch):
    assert_recorded_calls_reproduce(tiny_sdpa(arch), token_batches(2, pad_last=5), rtol=0, atol=0)


def test_bfloat16_model_prunes_with_fp32_statistics(monkeypatch):
    stats = []

    class Spy(tplo.pruning.InputStats):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            stats.append(self)

    monkeypatch.setattr(tplo.pruning, "InputStats", Spy)
    model = tiny_model("llama").to(torch.bfloat16)
    dense = copy.deepcopy(model)
    batches = token_batches(pad_last=3)
    prune(model, batches, None, PruneConfig(method="uniform", sequential=False), progress=False)
    assert stats and all(sq.dtype == torch.float32 for s in stats for sq in s.sq_norms.values())
    masks = collect_masks(model)
    # bf16 activations squared and summed in fp32 (a bf16 sum keeps 8 bits and picks other weights)
    expected = one_pass_masks(dense, batches, 0.5)
    assert masks.keys() == expected.keys() and all(torch.equal(masks[k], expected[k]) for k in masks)
    for module in masked_modules(model).values():
        assert module.weight_mask.dtype == torch.bool and module.weight.dtype == torch.bfloat16
        assert not module.weight[~module.weight_mask].any()
    assert torch.isfinite(model(**token_batches(1)[0]).logits).all()


def test_bfloat16_global_sparsity_is_that_of_fp32_within_a_weight_per_row():
    reports = []
    for dtype in (torch.float32, torch.bfloat16, torch.bfloat16):
        model = tiny_model("llama").to(dtype)
        reports.append(prune(model, token_batches(pad_last=3), statement_batches(), PruneConfig(method="tplo"),
                             progress=False))
    fp32, bf16, again = reports
    linears = [m for b in find_blocks(model)[1] for m in prunable_linears(b).values()]
    rows, total = sum(m.weight.shape[0] for m in linears), sum(m.weight.numel() for m in linears)
    assert abs(bf16.global_sparsity - fp32.global_sparsity) * total <= rows
    assert abs(bf16.global_sparsity - 0.5) * total <= rows
    # deterministic: the same report (allocation, truth separation) twice, timings aside
    assert replace(bf16, timings={}) == replace(again, timings={})
    assert all(math.isfinite(x.outlier_ratio) and math.isfinite(x.truth_separation) for x in bf16.layers)


class StepRecorder(L.Callback):
    """After every batch: optimizer steps so far and the nonzero count of the masked weights."""

    def __init__(self):
        self.steps, self.after_batch, self.start = 0, [], None

    def on_train_start(self, trainer, pl_module):
        self.start = {n: p.detach().clone() for n, p in pl_module.backbone.named_parameters()}
        trainer.optimizers[0].register_step_post_hook(lambda *_: setattr(self, "steps", self.steps + 1))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.after_batch.append((self.steps, trainer.global_step, int(torch.count_nonzero(masked_weights(pl_module)))))


def test_gradient_accumulation_keeps_masked_weights_zero_after_every_step(tmp_path):
    model, recorder = UserModel(), StepRecorder()
    callback = tplo.callbacks.TPLOCallback(sparsity=0.5, method="owl", keep_masks=True)
    trainer(tmp_path, [callback, recorder], max_steps=3, accumulate_grad_batches=2).fit(model, datamodule=UserData())
    assert [steps for steps, _, _ in recorder.after_batch] == [0, 1, 1, 2, 2, 3]  # one step per two batches
    assert [global_step for _, global_step, _ in recorder.after_batch] == [0, 1, 1, 2, 2, 3]
    assert [nonzero for _, _, nonzero in recorder.after_batch] == [0] * 6
    assert len(masked_weights(model)) > 0
    changed = [n for n, p in model.backbone.named_parameters() if not torch.equal(recorder.start[n], p.detach())]
    assert any("layers" in n for n in changed), "the masked linears' kept weights did not train"

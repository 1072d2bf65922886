"""`scorer: sparsegpt` in the whole pipeline: every allocation and architecture, the sequential hand-off of
reconstructed blocks, exact counts, N:M, the export and a failing Hessian."""

import math

import pytest
import torch
from torch import nn

from test_core_prune import METHODS, statement_batches
from tiny_models import CONFIGS, tiny_model, token_batches
from tplo import PruneConfig, collect_masks, export_pretrained, prune
from tplo.blocks import find_blocks, prunable_linears, stores_transposed, weight_rows
from tplo.sequential import record_block_calls, run_block
from tplo.sparsegpt import HessianError, sparsegpt_prune


def expected_pruned(d_out: int, d_in: int, sparsity: float, blocksize: int = 128) -> int:
    """The reference's count: per column block, floor(numel * s) + 1 (no ties among random scores)."""
    if sparsity == 0:
        return 0
    return sum(math.floor(d_out * (min(i + blocksize, d_in) - i) * sparsity) + 1 for i in range(0, d_in, blocksize))


@pytest.mark.parametrize("sparsity", [0.5, 0.7])
@pytest.mark.parametrize("arch, method", [(a, "tplo") for a in sorted(CONFIGS)] + [("llama", m) for m in METHODS])
def test_every_allocation_and_architecture_prunes_the_reference_count(arch, method, sparsity):
    model = tiny_model(arch)
    report = prune(model, token_batches(pad_last=3), statement_batches(),
                   PruneConfig(sparsity=sparsity, method=method, scorer="sparsegpt"), progress=False)
    assert report.scorer == "sparsegpt" and report.sparsegpt["raised_percdamp"] == {}
    _, blocks = find_blocks(model)
    removed = total = 0
    for layer, block in zip(report.layers, blocks):
        for module in prunable_linears(block).values():
            rows = weight_rows(module)
            keep = weight_rows_mask(module)
            assert int((~keep).sum()) == expected_pruned(*rows.shape, layer.target_sparsity)
            assert torch.all(rows[~keep] == 0) and torch.isfinite(rows).all()
            removed, total = removed + int((~keep).sum()), total + keep.numel()
    assert report.global_sparsity == pytest.approx(removed / total)
    assert abs(report.global_sparsity - sparsity) < 0.01


def weight_rows_mask(module: nn.Module) -> torch.Tensor:
    """The keep-mask [d_out, d_in] (GPT-2's Conv1D stores it transposed, like its weight)."""
    return module.weight_mask.t() if stores_transposed(module) else module.weight_mask


def test_each_block_is_reconstructed_on_the_outputs_of_the_reconstructed_blocks_before_it():
    """The same model pruned by hand: block by block, Hessians from the inputs the already pruned blocks give."""
    model, by_hand = tiny_model("llama"), tiny_model("llama")
    batches = token_batches(pad_last=3)
    prune(model, batches, None, PruneConfig(method="uniform", scorer="sparsegpt"), progress=False)
    _, blocks = find_blocks(by_hand)
    rec = record_block_calls(by_hand, blocks, batches, torch.device("cpu"))
    hidden = rec.hidden
    with torch.no_grad():
        for l, block in enumerate(blocks):
            inputs: dict[str, list[torch.Tensor]] = {}
            hooks = [m.register_forward_pre_hook(lambda mod, args, name=name: inputs.setdefault(name, []).append(args[0]))
                     for name, m in prunable_linears(block).items()]
            for b, h in enumerate(hidden):
                run_block(block, h, rec.calls[l][b])
            for hook in hooks:
                hook.remove()
            for name, module in prunable_linears(block).items():
                x = torch.cat([a[m] for a, m in zip(inputs[name], rec.token_masks)]).double()  # padding excluded
                hessian = 2 / len(x) * x.T @ x
                result = sparsegpt_prune(module.weight, hessian.float(), 0.5)
                module.weight.copy_(result.weight)
            hidden = [run_block(block, h, rec.calls[l][b]) for b, h in enumerate(hidden)]
    expected = dict(by_hand.named_parameters())
    for name, param in model.named_parameters():
        torch.testing.assert_close(param, expected[name], rtol=1e-4, atol=1e-5)


def test_reconstruction_changes_the_kept_weights_and_the_export_holds_them(tmp_path):
    dense, model = tiny_model("llama"), tiny_model("llama")
    report = prune(model, token_batches(), None, PruneConfig(method="uniform", scorer="sparsegpt"), progress=False)
    masks = collect_masks(model)
    weight = model.model.layers[2].mlp.down_proj.weight
    keep = masks["model.layers.2.mlp.down_proj"]
    assert not torch.allclose(weight[keep], dense.model.layers[2].mlp.down_proj.weight[keep])
    export_pretrained(model, tmp_path / "out", report)
    reloaded = type(model).from_pretrained(tmp_path / "out")
    for name, param in model.named_parameters():
        assert torch.equal(param, dict(reloaded.named_parameters())[name])
    assert torch.all(reloaded.model.layers[2].mlp.down_proj.weight[~keep] == 0)


@pytest.mark.parametrize("structure, n, m", [("2:4", 2, 4), ("4:8", 4, 8)])
def test_nm_keeps_exactly_n_of_every_m(structure, n, m):
    model = tiny_model("llama")
    prune(model, token_batches(), None, PruneConfig(structure=structure, scorer="sparsegpt", method="uniform"),
          progress=False)
    for name, mask in collect_masks(model).items():
        assert (mask.reshape(mask.shape[0], -1, m).sum(-1) == n).all(), name


def test_a_hessian_that_cannot_be_factorised_names_block_and_linear_and_leaves_the_model(monkeypatch):
    model = tiny_model("llama")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    real = torch.linalg.cholesky_ex

    def failing(matrix, *args, **kwargs):
        lower, info = real(matrix, *args, **kwargs)
        return lower, torch.ones_like(info)

    monkeypatch.setattr(torch.linalg, "cholesky_ex", failing)
    with pytest.raises(HessianError, match=r"block 0, self_attn.q_proj: the Hessian is not positive definite"):
        prune(model, token_batches(), None, PruneConfig(method="uniform", scorer="sparsegpt"), progress=False)
    assert not collect_masks(model)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())

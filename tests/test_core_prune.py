"""The whole engine on every supported architecture, built tiny and random inside the test."""

import pytest
import torch
from torch import nn

from tiny_models import BLOCK_PATHS, CONFIGS, LINEARS_PER_BLOCK, tiny_model, token_batches
from tplo import PruneConfig, collect_masks, model_sparsity, prune
from tplo.blocks import UnsupportedModelError, find_blocks, prunable_linears
from tplo.sequential import record_block_calls, run_block

METHODS = ["uniform", "owl", "swl", "tplo", "tplo_blend"]


def statement_batches(n_batches: int = 2, seed: int = 5) -> list[dict]:
    batches = token_batches(n_batches, 8, 10, seed=seed, pad_last=2)
    for b in batches:
        b["labels"] = torch.tensor([0, 1] * 4)
        b["topics"] = ["cities"] * 4 + ["elements"] * 4
        b["negated"] = torch.tensor([False, False, True, True] * 2)
    return batches


@pytest.mark.parametrize("arch", sorted(CONFIGS))
def test_blocks_and_linears_are_what_the_architecture_has(arch):
    model = tiny_model(arch)
    path, blocks = find_blocks(model)
    assert path == BLOCK_PATHS[arch] and len(blocks) == 4
    assert all(len(prunable_linears(b)) == LINEARS_PER_BLOCK[arch] for b in blocks)


@pytest.mark.parametrize("arch", sorted(CONFIGS))
def test_recorded_block_calls_reproduce_the_model(arch):
    """Running the blocks one at a time on recorded arguments gives the model's own hidden states."""
    model = tiny_model(arch)
    _, blocks = find_blocks(model)
    batches = token_batches(2, pad_last=3)
    rec = record_block_calls(model, blocks, batches, torch.device("cpu"))
    for b, batch in enumerate(batches):
        expected = []
        hooks = [blk.register_forward_hook(lambda m, a, o: expected.append(o[0] if isinstance(o, tuple) else o))
                 for blk in blocks]
        with torch.no_grad():
            model(**batch)
        for h in hooks:
            h.remove()
        hidden = rec.hidden[b]
        for l, block in enumerate(blocks):
            with torch.no_grad():
                hidden = run_block(block, hidden, rec.calls[l][b])
            torch.testing.assert_close(hidden, expected[l])


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("arch", sorted(CONFIGS))
def test_prune_hits_global_sparsity_on_every_architecture(arch, method):
    model = tiny_model(arch)
    report = prune(model, token_batches(pad_last=3), statement_batches(), PruneConfig(sparsity=0.5, method=method),
                   progress=False)
    _, blocks = find_blocks(model)
    rows = sum(m.weight.numel() // (m.weight.shape[1] if isinstance(m, nn.Linear) else m.weight.shape[0])
               for b in blocks for m in prunable_linears(b).values())
    total = sum(layer.params for layer in report.layers)
    assert abs(report.global_sparsity - 0.5) * total <= rows  # within one weight per row
    assert model_sparsity(model) == pytest.approx(report.global_sparsity)
    for layer in report.layers:
        assert layer.achieved_sparsity == pytest.approx(layer.target_sparsity, abs=1 / 32)
    assert torch.isfinite(model(**token_batches(1)[0]).last_hidden_state if arch == "bert"
                          else model(**token_batches(1)[0]).logits).all()


def test_report_json_has_the_agreed_keys(tmp_path):
    report = prune(tiny_model("llama"), token_batches(), statement_batches(), PruneConfig(method="tplo"),
                   progress=False)
    data = report.to_dict()
    for key in ("method", "scorer", "structure", "sparsity", "owl_m", "owl_lambda", "beta", "pivot",
                "global_sparsity", "timings", "layers"):
        assert key in data
    assert isinstance(data["pivot"], int)
    assert set(data["layers"][0]) >= {"index", "params", "outlier_ratio", "truth_separation", "target_sparsity",
                                      "achieved_sparsity"}
    path = report.save(tmp_path / "pruning_report.json")
    assert type(report).load(path) == report


@pytest.mark.parametrize("structure, n, m", [("2:4", 2, 4), ("4:8", 4, 8)])
def test_nm_structure_keeps_n_of_m_in_every_row(structure, n, m):
    model = tiny_model("llama")
    prune(model, token_batches(), None, PruneConfig(method="uniform", structure=structure), progress=False)
    for mask in collect_masks(model).values():
        assert (mask.reshape(mask.shape[0], -1, m).sum(-1) == n).all()


def test_same_seed_and_data_give_identical_masks():
    masks = []
    for _ in range(2):
        model = tiny_model("qwen2", seed=3)
        prune(model, token_batches(seed=1), statement_batches(), PruneConfig(method="tplo"), progress=False)
        masks.append(collect_masks(model))
    assert masks[0].keys() == masks[1].keys()
    assert all(torch.equal(masks[0][k], masks[1][k]) for k in masks[0])


def test_padding_tokens_do_not_change_the_masks():
    clean, noisy = token_batches(pad_last=4), token_batches(pad_last=4)
    for b in noisy:
        b["input_ids"][b["attention_mask"] == 0] = 77  # different token ids under the padding
    masks = []
    for batches in (clean, noisy):
        model = tiny_model("llama")
        prune(model, batches, None, PruneConfig(method="owl"), progress=False)
        masks.append(collect_masks(model))
    assert all(torch.equal(masks[0][k], masks[1][k]) for k in masks[0])


def test_one_pass_differs_from_sequential_and_magnitude_needs_no_second_pass():
    seq, one = tiny_model("llama"), tiny_model("llama")
    prune(seq, token_batches(), None, PruneConfig(method="uniform"), progress=False)
    prune(one, token_batches(), None, PruneConfig(method="uniform", sequential=False), progress=False)
    a, b = collect_masks(seq), collect_masks(one)
    first = [k for k in a if k.startswith("model.layers.0.")]
    assert all(torch.equal(a[k], b[k]) for k in first)  # block 0 sees the same inputs in both
    assert any(not torch.equal(a[k], b[k]) for k in a)


def test_offload_gives_the_same_masks():
    ref, off = tiny_model("llama"), tiny_model("llama")
    prune(ref, token_batches(), statement_batches(), PruneConfig(), progress=False)
    prune(off, token_batches(), statement_batches(), PruneConfig(offload=True), device="cpu", progress=False)
    a, b = collect_masks(ref), collect_masks(off)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_truth_methods_need_statements():
    with pytest.raises(ValueError, match="needs labelled statements"):
        prune(tiny_model("llama"), token_batches(), None, PruneConfig(method="tplo"), progress=False)


def test_explicit_pivot_beyond_blocks_is_rejected():
    with pytest.raises(ValueError, match="beyond the model's 4 blocks"):
        prune(tiny_model("llama"), token_batches(), statement_batches(), PruneConfig(pivot=9), progress=False)


def test_nonfinite_activations_name_block_and_linear():
    model = tiny_model("llama")
    with torch.no_grad():
        model.model.layers[1].mlp.up_proj.weight[0, 0] = float("nan")
    with pytest.raises(FloatingPointError, match="block 1, linear 'mlp.down_proj'"):
        prune(model, token_batches(), None, PruneConfig(method="uniform"), progress=False)


class Block(nn.Module):
    def __init__(self, dim: int, plant: float = 0.0):
        super().__init__()
        self.mix = nn.Linear(dim, dim)
        self.plant = plant

    def forward(self, h, attention_mask=None):
        out = h + 0.01 * self.mix(h)
        return out + self.plant * h[..., 1:2] * torch.nn.functional.one_hot(torch.tensor(0), h.shape[-1])


class Planted(nn.Module):
    """Token 5/6 carry a faint label signal in channel 1; block 2 writes it, x20, into channel 0 and
    block 3 removes it again, so the truth separation must peak at block 2."""

    def __init__(self, dim: int = 16):
        super().__init__()
        self.embed = nn.Embedding(8, dim)
        with torch.no_grad():
            self.embed.weight[:, 1] = 0
            self.embed.weight[5, 1], self.embed.weight[6, 1] = 1.0, -1.0
        self.stack = nn.ModuleList([Block(dim), Block(dim), Block(dim, 20.0), Block(dim, -20.0)])

    def forward(self, input_ids, attention_mask=None, use_cache=False):
        h = self.embed(input_ids)
        for block in self.stack:
            h = block(h, attention_mask=attention_mask)
        return h


def test_planted_truth_direction_peaks_at_its_block():
    torch.manual_seed(0)
    model = Planted()
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 2, (64,))
    ids = torch.randint(0, 5, (64, 6), generator=g)
    ids[:, -1] = torch.where(labels == 1, 5, 6)
    statements = [{"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}]
    report = prune(model, [{"input_ids": ids}], statements, PruneConfig(method="tplo", pooling="mean"),
                   progress=False)
    p = [layer.truth_separation for layer in report.layers]
    assert max(range(4), key=p.__getitem__) == 2
    assert sum(p) == pytest.approx(1.0)
    assert report.pivot == 0 and report.blocks == "stack"


def test_unsupported_model_error_says_what_was_found_and_how_to_override():
    model = nn.Sequential(nn.Embedding(4, 4), nn.ModuleList([nn.ReLU(), nn.Tanh()]))
    with pytest.raises(UnsupportedModelError, match=r"found 1 \(2 x ReLU/Tanh\).*blocks='model.layers'"):
        find_blocks(model)
    with pytest.raises(UnsupportedModelError, match="does not name a submodule"):
        find_blocks(tiny_model("llama"), "model.blocks")
    path, blocks = find_blocks(tiny_model("gpt2"), "transformer.h")
    assert path == "transformer.h" and len(blocks) == 4


def test_one_class_statement_dataset_is_rejected_before_any_forward():
    statements = statement_batches(1)
    statements[0]["labels"] = torch.tensor([1, 1, 1, 1, 0, 1, 0, 1])  # cities: all true
    model = tiny_model("llama")
    calls = []
    model.model.embed_tokens.register_forward_hook(lambda *a: calls.append(1))
    with pytest.raises(ValueError, match="'cities' has 2 true and 0 false"):
        prune(model, token_batches(), statements, PruneConfig(method="swl"), progress=False)
    assert not calls


def test_empty_calibration_is_rejected():
    with pytest.raises(ValueError, match="non-empty list of dicts with input_ids"):
        prune(tiny_model("llama"), [], None, PruneConfig(method="uniform"), progress=False)

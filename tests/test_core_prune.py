"""The whole engine on every supported architecture, built tiny and random inside the test."""

import json
import math
from contextlib import contextmanager

import pytest
import torch
from torch import nn

import tplo.pruning
import tplo.sequential
from tiny_models import BLOCK_PATHS, CONFIGS, LINEARS_PER_BLOCK, tiny_model, token_batches
from tplo import PruneConfig, collect_masks, model_sparsity, prune
from tplo.blocks import UnsupportedModelError, find_blocks, prunable_linears
from tplo.sequential import on_device as on_device_as_built
from tplo.sequential import record_block_calls, run_block

METHODS = ["uniform", "owl", "swl", "tplo", "tplo_blend", "truth_prefix"]


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
    assert_recorded_calls_reproduce(tiny_model(arch), token_batches(2, pad_last=3))


def assert_recorded_calls_reproduce(model, batches, **tolerance):
    """Blocks run one at a time on `record_block_calls`' arguments give the hidden states of the model's forward."""
    _, blocks = find_blocks(model)
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
            torch.testing.assert_close(hidden, expected[l], **tolerance)


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


def block_linears(model) -> list[list[nn.Linear]]:
    """Every nn.Linear inside each block of a tiny Llama, found without tplo."""
    return [[m for m in block.modules() if isinstance(m, nn.Linear)] for block in model.model.layers]


def test_report_values_match_the_pruned_model_and_survive_json(tmp_path):
    model = tiny_model("llama")
    report = prune(model, token_batches(pad_last=3), statement_batches(), PruneConfig(method="tplo"), progress=False)
    layers = block_linears(model)
    params = [sum(m.weight.numel() for m in lin) for lin in layers]
    zeros = [sum(int((m.weight == 0).sum()) for m in lin) for lin in layers]
    assert [x.index for x in report.layers] == [0, 1, 2, 3]
    assert [x.params for x in report.layers] == params
    assert [x.achieved_sparsity for x in report.layers] == pytest.approx([z / n for z, n in zip(zeros, params)],
                                                                         abs=1e-12)
    assert report.global_sparsity == pytest.approx(sum(zeros) / sum(params), abs=1e-12)
    weighted = sum(x.achieved_sparsity * x.params for x in report.layers) / sum(params)
    assert report.global_sparsity == pytest.approx(weighted, abs=1e-12)
    targets = sum(x.target_sparsity * x.params for x in report.layers) / sum(params)
    assert targets == pytest.approx(0.5, abs=1e-9)  # the allocation keeps the global target
    p = [x.truth_separation for x in report.layers]
    assert sum(p) == pytest.approx(1.0, abs=1e-12) and min(p) >= 0
    assert isinstance(report.pivot, int) and report.pivot == max(0, max(range(4), key=p.__getitem__) - 2)
    assert report.truth_statements == {"cities": 4, "elements": 4, "neg_cities": 4, "neg_elements": 4}
    assert (report.method, report.scorer, report.structure, report.sparsity) == ("tplo", "wanda", "unstructured", 0.5)
    assert (report.owl_m, report.owl_lambda, report.beta) == (5.0, 0.08, 0.04)
    data = report.to_dict()
    assert set(data["layers"][0]) == {"index", "params", "outlier_ratio", "truth_separation", "target_sparsity",
                                      "achieved_sparsity"}
    assert json.loads(json.dumps(data)) == data
    path = report.save(tmp_path / "pruning_report.json")
    assert type(report).load(path) == report
    assert json.loads(path.read_text()) == data


def test_uniform_report_targets_the_sparsity_in_every_block():
    report = prune(tiny_model("llama"), token_batches(), None, PruneConfig(method="uniform", sparsity=0.25),
                   progress=False)
    assert [x.target_sparsity for x in report.layers] == [0.25] * 4
    assert [x.achieved_sparsity for x in report.layers] == [0.25] * 4  # every d_in (32, 64) splits exactly
    assert report.pivot is None and report.global_sparsity == 0.25


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


def sq_input_norms(model, batches, names) -> dict[str, torch.Tensor]:
    """n_j = sum of squared inputs over non-padding tokens of each named linear, from whole-model forwards
    (fp32 sums per batch, added over batches)."""
    modules, sums, state = dict(model.named_modules()), {}, {}

    def hook(name):
        def record(_module, args):
            rows = args[0].detach()[state["keep"]].float()
            sums[name] = (rows * rows).sum(0) + sums.get(name, 0)
        return record

    handles = [modules[n].register_forward_pre_hook(hook(n)) for n in names]
    with torch.no_grad():
        for batch in batches:
            state["keep"] = batch["attention_mask"].bool()
            model(**batch)
    for h in handles:
        h.remove()
    return sums


def hand_row_mask(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Keep-mask dropping the floor(d_in * s) lowest scores per row, lowest index first among ties, by ranking
    every pair of entries (no sort)."""
    d_in = scores.shape[1]
    idx = torch.arange(d_in)
    before = (scores[:, None, :] < scores[:, :, None]) | (
        (scores[:, None, :] == scores[:, :, None]) & (idx[None, None, :] < idx[None, :, None]))
    return before.sum(2) >= math.floor(d_in * sparsity)


def linear_names(model, block: int | None = None) -> list[str]:
    prefix = "model.layers." if block is None else f"model.layers.{block}."
    return [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and n.startswith(prefix)]


def one_pass_masks(model, batches, sparsity, names=None) -> dict[str, torch.Tensor]:
    """Wanda masks |W| * sqrt(n_j) of the named linears, statistics from one forward of `model` as it is."""
    names = names or linear_names(model)
    norms = sq_input_norms(model, batches, names)
    modules = dict(model.named_modules())
    return {n: hand_row_mask(modules[n].weight.detach().float().abs() * norms[n].sqrt(), sparsity) for n in names}


def test_one_pass_masks_equal_a_hand_computation():
    dense, model, batches = tiny_model("llama"), tiny_model("llama"), token_batches(pad_last=3)
    prune(model, batches, None, PruneConfig(method="uniform", sequential=False), progress=False)
    expected, masks = one_pass_masks(dense, batches, 0.5), collect_masks(model)
    assert masks.keys() == expected.keys() and len(masks) == 28
    assert all(torch.equal(masks[k], expected[k]) for k in masks)


def test_sequential_masks_use_the_outputs_of_the_pruned_blocks():
    """Block 0 sees the dense inputs; block l the outputs of blocks < l pruned with their own (hand) masks."""
    dense, model, batches = tiny_model("llama"), tiny_model("llama"), token_batches(pad_last=3)
    prune(model, batches, None, PruneConfig(method="uniform"), progress=False)
    masks, one_pass = collect_masks(model), one_pass_masks(dense, batches, 0.5)
    modules, expected = dict(dense.named_modules()), {}
    for l in range(4):
        expected.update(one_pass_masks(dense, batches, 0.5, linear_names(dense, l)))
        with torch.no_grad():  # prune block l by hand before computing the inputs of block l + 1
            for name in linear_names(dense, l):
                modules[name].weight.masked_fill_(~expected[name], 0)
    assert masks.keys() == expected.keys()
    assert all(torch.equal(masks[k], expected[k]) for k in masks)
    assert all(torch.equal(masks[k], one_pass[k]) for k in linear_names(dense, 0))
    later = [k for k in masks if not k.startswith("model.layers.0.")]
    assert any(not torch.equal(masks[k], one_pass[k]) for k in later)  # the second pass did change something


def test_magnitude_masks_are_abs_weight_row_masks_without_a_second_pass(monkeypatch):
    recordings = []
    real = tplo.pruning.record_block_calls
    monkeypatch.setattr(tplo.pruning, "record_block_calls", lambda *a, **k: recordings.append(1) or real(*a, **k))
    dense, model = tiny_model("llama"), tiny_model("llama")
    prune(model, token_batches(), None, PruneConfig(method="uniform", scorer="magnitude"), progress=False)
    assert len(recordings) == 1  # the calibration recording of pass 1 only; sequential=True is moot
    modules, masks = dict(dense.named_modules()), collect_masks(model)
    assert masks.keys() == set(linear_names(dense))
    for name, mask in masks.items():
        assert torch.equal(mask, hand_row_mask(modules[name].weight.abs(), 0.5)), name


def test_offload_moves_each_block_only_while_it_runs_and_gives_the_same_masks(monkeypatch):
    """on_device (as tplo.pruning and tplo.sequential call it) is tracked; every block linear checks it runs
    inside its own block's placement, and no two blocks are ever placed at once."""
    results = {}
    for offload in (False, True):
        model = tiny_model("llama")
        blocks = list(model.model.layers)
        events, placed, runs = [], [], []

        def tracked(caller):
            @contextmanager
            def on_device(module, device):
                l = next(i for i, b in enumerate(blocks) if b is module)
                assert not placed, f"block {l} moved while block {placed} is on the device"
                home = [p.device for p in module.parameters()]
                events.append((caller, l, torch.device(device)))
                placed.append(l)
                runs_before = len(runs)
                with on_device_as_built(module, device):
                    assert all(p.device == torch.device(device) for p in module.parameters())
                    yield
                placed.pop()
                assert [p.device for p in module.parameters()] == home
                assert len(runs) > runs_before, f"block {l} was moved but did not run"
            return on_device

        monkeypatch.setattr(tplo.pruning, "on_device", tracked("prune"))
        monkeypatch.setattr(tplo.sequential, "on_device", tracked("record"))
        for l, block in enumerate(blocks):
            for linear in prunable_linears(block).values():
                linear.register_forward_pre_hook(lambda *_, l=l: runs.append((l, list(placed))))
        homes = {n: p.device for n, p in model.named_parameters()}
        prune(model, token_batches(), statement_batches(), PruneConfig(offload=offload), device="cpu", progress=False)
        assert {n: p.device for n, p in model.named_parameters()} == homes
        assert all(device == torch.device("cpu") for *_, device in events)
        # recording learns once whether block 0 returns a tuple, by running it where the model computes
        assert events[0][:2] == ("record", 0) and [e for e in events if e[0] == "record"] == [events[0]]
        moves = [l for caller, l, _ in events if caller == "prune"]
        if offload:
            assert moves == [0, 1, 2, 3, 0, 1, 2, 3]  # pass 1, then the sequential pass 2
            assert all(where == [l] for l, where in runs)
        else:
            assert moves == [] and len(events) == 1
            assert all(where == [] or (l, where) == (0, [0]) for l, where in runs)  # only the probe is placed
        results[offload] = collect_masks(model)
    a, b = results[False], results[True]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


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

"""Models dispatched by accelerate keep their hooks and placement through `prune` (CPU offload included), and
models whose blocks cannot run one after another get `UnsupportedModelError` with its advice."""

import pytest
import torch
from accelerate import cpu_offload, dispatch_model
from transformers import AlbertConfig, AutoModel, DebertaV2Config

from tiny_models import tiny_model, token_batches
from tplo import PruneConfig, collect_masks, model_sparsity, prune
from tplo.blocks import UnsupportedModelError


def own_forwards(model):
    """Each module's own `forward` attribute (accelerate's dispatch wrapper where it added one)."""
    return {name: module.__dict__.get("forward") for name, module in model.named_modules()}


DISPATCH = {
    "dispatch_model": lambda m: dispatch_model(m, device_map={"": "cpu"}, force_hooks=True),
    "cpu_offload": lambda m: cpu_offload(m, execution_device=torch.device("cpu")),
}


@pytest.mark.parametrize("how", sorted(DISPATCH))
def test_a_dispatched_model_keeps_its_hooks_and_prunes_like_the_plain_one(how):
    plain = tiny_model("llama")
    prune(plain, token_batches(pad_last=3), None, PruneConfig(method="owl"), progress=False)
    model = DISPATCH[how](tiny_model("llama"))
    before = own_forwards(model)
    assert sum(f is not None for f in before.values()) > 4  # accelerate wrapped the blocks (and more)
    report = prune(model, token_batches(pad_last=3), None, PruneConfig(method="owl"), progress=False)
    after = own_forwards(model)
    assert after.keys() == before.keys() and all(after[name] is before[name] for name in before)
    expected, masks = collect_masks(plain), collect_masks(model)
    assert masks.keys() == expected.keys() and all(torch.equal(masks[k].cpu(), expected[k]) for k in expected)
    assert model_sparsity(model) == pytest.approx(report.global_sparsity)
    batch = token_batches(1, seed=9)[0]
    with torch.no_grad():
        torch.testing.assert_close(model(**batch).logits, plain(**batch).logits)
    if how == "cpu_offload":  # the weights stay offloaded: accelerate still loads them for every forward
        assert model.model.layers[0].mlp.up_proj.weight.device.type == "meta"


def test_weights_offloaded_to_disk_are_refused_with_what_to_do(tmp_path):
    model = tiny_model("llama")
    device_map = {"model.embed_tokens": "cpu", "model.layers.0": "cpu", "model.layers.1": "cpu",
                  "model.layers.2": "cpu", "model.layers.3": "disk", "model.norm": "cpu", "model.rotary_emb": "cpu",
                  "lm_head": "cpu"}
    model = dispatch_model(model, device_map=device_map, offload_dir=str(tmp_path))
    with pytest.raises(UnsupportedModelError, match="offloaded to disk by accelerate"):
        prune(model, token_batches(), None, PruneConfig(method="uniform"), progress=False)
    assert not collect_masks(model)


def test_tplo_offload_on_a_dispatched_model_is_refused():
    model = DISPATCH["dispatch_model"](tiny_model("llama"))
    with pytest.raises(ValueError, match="dispatched by accelerate.*set offload: false"):
        prune(model, token_batches(), None, PruneConfig(method="uniform", offload=True), progress=False)


def test_shared_blocks_and_hidden_states_changed_between_blocks_are_unsupported_models():
    albert = AutoModel.from_config(AlbertConfig(vocab_size=128, embedding_size=16, hidden_size=32, num_hidden_layers=4,
                                                num_attention_heads=4, intermediate_size=64)).eval()
    with pytest.raises(UnsupportedModelError, match="runs more than once in one forward pass.*as in ALBERT"):
        prune(albert, token_batches(), None, PruneConfig(method="uniform"), progress=False)
    deberta = dict(vocab_size=128, hidden_size=32, num_hidden_layers=4, num_attention_heads=4, intermediate_size=64,
                   relative_attention=True, position_buckets=8, max_relative_positions=16, pos_att_type=["p2c", "c2p"])
    with_conv = AutoModel.from_config(DebertaV2Config(**deberta, conv_kernel_size=3)).eval()
    with pytest.raises(UnsupportedModelError, match="changes the hidden states between block 0 and block 1"):
        prune(with_conv, token_batches(), None, PruneConfig(method="uniform"), progress=False)
    for model in (albert, with_conv):  # refused before anything changed
        assert not collect_masks(model) and all("forward" not in m.__dict__ for m in model.modules())
    plain = AutoModel.from_config(DebertaV2Config(**deberta)).eval()  # no convolution: blocks pass outputs on
    report = prune(plain, token_batches(), None, PruneConfig(method="uniform"), progress=False)
    assert report.global_sparsity == pytest.approx(0.5)

"""Atomic export: a failed export keeps the previous one, leaves no temporary folder, and a finished one
reloads with identical logits, zero pattern and report."""

import json
import os

import pytest
import torch
from transformers import AutoModel, AutoModelForCausalLM

import tplo.export as export
from tiny_models import tiny_model, token_batches
from tplo import PruneConfig, PruneReport, collect_masks, prune
from tplo.export import atomic_directory, check_export_dir, export_pretrained
from tplo.mask_checksum import mask_checksum


@pytest.fixture(scope="module")
def pruned():
    """A tiny Llama pruned with OWL at 60%, and its report."""
    model = tiny_model("llama")
    report = prune(model, token_batches(), None, PruneConfig(sparsity=0.6, method="owl"), progress=False)
    return model, report


def hidden_entries(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def snapshot(folder):
    return {p.name: p.read_bytes() for p in folder.iterdir()}


def test_round_trip_gives_identical_logits_zero_pattern_and_report(tmp_path, pruned):
    model, report = pruned
    target = export_pretrained(model, tmp_path / "export", report)
    assert hidden_entries(tmp_path) == []
    masks = collect_masks(model)
    ids = token_batches(1, pad_last=3)[0]

    causal = AutoModelForCausalLM.from_pretrained(target, attn_implementation="eager").eval()
    reloaded = causal.state_dict()
    assert all(torch.equal(reloaded[name], value) for name, value in model.state_dict().items())
    with torch.no_grad():
        torch.testing.assert_close(causal(**ids).logits, model(**ids).logits, rtol=0, atol=0)
    zeros = {name: causal.get_submodule(name).weight == 0 for name in masks}
    assert mask_checksum(zeros) == mask_checksum({name: ~mask for name, mask in masks.items()})

    base = AutoModel.from_pretrained(target, attn_implementation="eager").eval()
    with torch.no_grad():
        torch.testing.assert_close(base(**ids).last_hidden_state, model.model(**ids).last_hidden_state, rtol=0, atol=0)

    saved = PruneReport.load(target / "pruning_report.json")
    assert saved == report
    weights = [causal.get_submodule(name).weight for name in masks]
    recomputed = sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights)
    assert recomputed == pytest.approx(saved.global_sparsity, abs=1e-12)


def test_refuses_a_non_empty_folder_unless_overwrite(tmp_path):
    folder = tmp_path / "export"
    folder.mkdir()
    check_export_dir(folder)  # empty: fine
    check_export_dir(tmp_path / "new")  # absent: fine
    (folder / "config.json").write_text("{}")
    with pytest.raises(FileExistsError, match="exists and is not empty.*set overwrite: true"):
        check_export_dir(folder)
    check_export_dir(folder, overwrite=True)
    with pytest.raises(FileExistsError, match="is a file; set export_dir to a folder"):
        check_export_dir(folder / "config.json", overwrite=True)


def test_overwrite_never_deletes_a_folder_that_is_not_an_export(tmp_path):
    (tmp_path / "notes.txt").write_text("my work")
    with pytest.raises(FileExistsError, match="is not a model export.*will not delete it"):
        check_export_dir(tmp_path, overwrite=True)
    assert (tmp_path / "notes.txt").read_text() == "my work"


def test_interrupted_export_keeps_the_previous_one_and_leaves_no_temp_folder(tmp_path, pruned, monkeypatch):
    model, report = pruned
    target = export_pretrained(model, tmp_path / "export", report)
    before = snapshot(target)

    def save_half_then_fail(self, folder, **kwargs):
        (folder / "model.safetensors").write_bytes(b"half a model")
        raise OSError("No space left on device")

    monkeypatch.setattr(type(model), "save_pretrained", save_half_then_fail)
    with pytest.raises(OSError, match="No space left"):
        export_pretrained(model, target, report, overwrite=True)
    assert snapshot(target) == before
    assert hidden_entries(tmp_path) == []
    with pytest.raises(OSError, match="No space left"):
        export_pretrained(model, tmp_path / "fresh", report)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]


def test_overwrite_replaces_only_once_the_new_export_is_complete(tmp_path):
    target = tmp_path / "export"
    target.mkdir()
    (target / "config.json").write_text('{"old": true}')
    (target / "stale.bin").write_text("from the previous export")
    with atomic_directory(target, overwrite=True) as staging:
        (staging / "config.json").write_text('{"old": false}')
        assert json.loads((target / "config.json").read_text()) == {"old": True}  # still the previous export
    assert sorted(p.name for p in target.iterdir()) == ["config.json"]
    assert json.loads((target / "config.json").read_text()) == {"old": False}
    assert hidden_entries(tmp_path) == []


def test_a_failed_final_rename_puts_the_previous_export_back(tmp_path, monkeypatch):
    target = tmp_path / "export"
    target.mkdir()
    (target / "config.json").write_text("previous")
    rename = os.rename

    def refuse_staging(src, dst):
        if ".tmp-" in str(src):
            raise OSError("rename failed")
        rename(src, dst)

    monkeypatch.setattr(export.os, "rename", refuse_staging)
    with pytest.raises(OSError, match="rename failed"):
        with atomic_directory(target, overwrite=True) as staging:
            (staging / "config.json").write_text("new")
    assert (target / "config.json").read_text() == "previous"
    assert hidden_entries(tmp_path) == []

"""Feature cache: computed once, reused, and keyed by everything that changes the features."""

import json
import os

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from tplo.eval.feature_cache import cache_path, cached_features, model_fingerprint, statements_fingerprint
from tplo.features import extract_features
from tiny_models import tiny_model, token_batches


def test_second_call_is_a_hit_and_returns_identical_features(tmp_path):
    model = tiny_model("llama")
    batches = token_batches(pad_last=3)
    calls = []

    def compute():
        calls.append(1)
        return extract_features(model, batches)

    parts = {"model": "tiny", "statements": "abc", "pooling": "auto", "max_length": 16}
    first, hit1 = cached_features(tmp_path, parts, compute)
    second, hit2 = cached_features(tmp_path, parts, compute)
    assert (hit1, hit2, len(calls)) == (False, True, 1)
    assert first.shape == (8, 5, 32)
    torch.testing.assert_close(first, second, rtol=0, atol=0)
    assert list(tmp_path.iterdir()) == [cache_path(tmp_path, parts)]  # no temp files left behind
    _, hit3 = cached_features(tmp_path, {**parts, "pooling": "mean"}, compute)
    assert not hit3 and len(calls) == 2


def test_failed_compute_leaves_no_entry(tmp_path):
    def boom():
        raise RuntimeError("oom")

    with pytest.raises(RuntimeError):
        cached_features(tmp_path, {"k": 1}, boom)
    assert not any(tmp_path.iterdir())


def test_model_fingerprint_tracks_weight_files_not_other_outputs(tmp_path):
    model = tiny_model("gpt2")
    model.save_pretrained(tmp_path)
    before = model_fingerprint(tmp_path)
    (tmp_path / "evaluation.json").write_text("{}")
    assert model_fingerprint(tmp_path) == before
    weights = tmp_path / "model.safetensors"
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))
    assert model_fingerprint(tmp_path) != before
    hub = model_fingerprint("org/name", {"hidden_size": 32})
    assert hub == {"id": "org/name", "config": {"hidden_size": 32}}


def test_statements_fingerprint_depends_on_content_and_order():
    base = statements_fingerprint(["a", "b"], [1, 0], ["t", "t"], [False, True])
    assert base == statements_fingerprint(["a", "b"], [1, 0], ["t", "t"], [False, True])
    assert base != statements_fingerprint(["b", "a"], [0, 1], ["t", "t"], [True, False])
    assert base != statements_fingerprint(["a", "b"], [0, 0], ["t", "t"], [False, True])


def test_cache_file_stores_fp32_and_records_its_key_parts(tmp_path):
    parts = {"model": "x", "n": 2}
    cached_features(tmp_path, parts, lambda: torch.ones(2, 3, 4, dtype=torch.bfloat16))
    path = cache_path(tmp_path, parts)
    stored = load_file(path)["features"]
    assert stored.dtype == torch.float32 and stored.shape == (2, 3, 4)
    with safe_open(path, "pt") as f:
        assert json.loads(f.metadata()["parts"]) == parts

"""The benchmark scripts run end to end at toy sizes and print the JSON their readers rely on."""

import json
import math
import subprocess
import sys
from pathlib import Path

import torch
from torch.nn.utils import prune as torch_prune

from tiny_models import tiny_model, token_batches
from tplo import PruneConfig, prune
from tplo.masks import masked_modules

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def last_json_line(script: str, *args: str) -> dict:
    done = subprocess.run([sys.executable, str(BENCHMARKS / script), *args], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_speed_benchmark_reports_consistent_timings_and_the_requested_sparsity():
    out = last_json_line("prune_speed.py", "--hidden", "64", "--layers", "2", "--vocab", "128", "--samples", "16",
                         "--seqlen", "64", "--batch-size", "8", "--statements", "16", "--repeats", "3")
    h, ffn, vocab, layers = 64, 170, 128, 2  # intermediate int(64 * 8 / 3); one head, so k/v are h x h
    block = 4 * h * h + 3 * h * ffn
    assert out["model"] == "llama h64 L2 V128"
    assert out["params"] == 2 * vocab * h + layers * (block + 2 * h) + h  # untied embeddings, RMSNorm weights
    assert out["calib_tokens"] == 16 * 64
    # the reported pair is the run with the median ratio, and ratio = prune_s / dense_forward_s (up to rounding)
    assert len(out["ratios"]) == len(out["floor_ratios"]) == 3
    assert out["ratio"] == sorted(out["ratios"])[1] and out["floor_ratio"] == sorted(out["floor_ratios"])[1]
    p, d, r = out["prune_s"], out["dense_forward_s"], 5e-4
    assert d > 0 and (p - r) / (d + r) - r <= out["ratio"] <= (p + r) / (d - r) + r
    assert out["ratio"] > out["floor_ratio"] > 0  # at toy sizes tplo's bookkeeping outweighs the forwards
    t = out["timings"]
    assert t["statistics_s"] + t["pruning_s"] <= t["total_s"] + 2 * r and t["total_s"] <= p + 2 * r
    # tplo's per-block targets keep 0.5 overall; row masks round each row down, so within one weight per row
    rows = layers * (4 * h + 2 * ffn + h)
    assert abs(out["global_sparsity"] - 0.5) <= rows / (layers * block) + 5e-5


def test_memory_benchmark_reports_what_masks_occupy_on_a_pruned_model():
    out = last_json_line("prune_memory.py", "--blocks", "1", "2", "--hidden", "128")
    assert out["blocks"] == [1, 2]
    assert out["weight_gb"][1] > out["weight_gb"][0]
    assert all(peak >= weights for peak, weights in zip(out["peak_rss_gb"], out["weight_gb"]))
    assert math.isfinite(out["slope"])
    # tplo: one bool buffer next to each pruned weight, counted on a pruned tiny model
    model = tiny_model("llama")
    prune(model, token_batches(), None, PruneConfig(method="uniform"), progress=False)
    masked = list(masked_modules(model).values())
    assert len(masked) == 28
    mask_bytes = sum(m.weight_mask.element_size() * m.weight_mask.numel() for m in masked)
    assert out["tplo_mask_bytes_per_param"] == mask_bytes / sum(m.weight.numel() for m in masked)
    # torch.nn.utils.prune on the same linears: every tensor it holds, beyond the one weight tplo keeps
    other = tiny_model("llama")
    linears = [m for block in other.model.layers for m in block.modules() if isinstance(m, torch.nn.Linear)]
    dense_bytes = sum(m.weight.nbytes for m in linears)
    for m in linears:
        torch_prune.l1_unstructured(m, "weight", amount=0.5)
    held = sum(t.nbytes for m in linears for t in [*m.parameters(), *m.buffers(), m.weight])
    n = sum(m.weight.numel() for m in linears)
    assert out["torch_prune_extra_bytes_per_param"] == (held - dense_bytes) / n


def test_gpu_benchmark_refuses_a_machine_without_cuda():
    done = subprocess.run([sys.executable, str(BENCHMARKS / "prune_8b_gpu.py")], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode != 0
    assert "needs a CUDA GPU" in done.stderr

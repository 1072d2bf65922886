"""The benchmark scripts run end to end at toy sizes and print the JSON their readers rely on."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def last_json_line(script: str, *args: str) -> dict:
    done = subprocess.run([sys.executable, str(BENCHMARKS / script), *args], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_speed_benchmark_prints_the_agreed_keys():
    out = last_json_line("prune_speed.py", "--hidden", "64", "--layers", "2", "--vocab", "128", "--samples", "4",
                         "--seqlen", "16", "--batch-size", "2", "--statements", "16", "--repeats", "1")
    for key in ("model", "params", "calib_tokens", "dense_forward_s", "prune_s", "ratio", "peak_rss_gb"):
        assert key in out
    assert out["calib_tokens"] == 4 * 16
    assert out["ratio"] > out["floor_ratio"] > 0  # at toy sizes tplo's bookkeeping outweighs the forwards
    assert out["global_sparsity"] == pytest.approx(0.5, abs=0.01)


def test_memory_benchmark_compares_mask_storage():
    out = last_json_line("prune_memory.py", "--blocks", "1", "2", "--hidden", "128")
    assert out["blocks"] == [1, 2]
    assert out["weight_gb"][1] > out["weight_gb"][0]
    assert out["tplo_mask_bytes_per_param"] == 1.0
    assert out["torch_prune_extra_bytes_per_param"] == 8.0


def test_gpu_benchmark_refuses_a_machine_without_cuda():
    done = subprocess.run([sys.executable, str(BENCHMARKS / "prune_8b_gpu.py")], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode != 0
    assert "needs a CUDA GPU" in done.stderr

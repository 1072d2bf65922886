"""benchmarks/truth_retention.py at toy size on a tiny GGUF model: the table, the figure and the JSON keys."""

import importlib.util
import json
import sys

import pytest

from test_lightning_cli import ROOT
from tiny_gguf import write_tiny_gguf


def load_benchmark():
    spec = importlib.util.spec_from_file_location("truth_retention", ROOT / "benchmarks" / "truth_retention.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


CASES = {  # calibration, extra arguments, the runs they give as (method, scorer)
    "scorers": ("mix", ["--methods", "uniform", "tplo", "--scorers", "wanda", "sparsegpt"],
                [("dense", "-"), ("uniform", "wanda"), ("tplo", "wanda"), ("uniform", "sparsegpt"), ("tplo", "sparsegpt")]),
    "experiments": ("statements", ["--methods", "uniform", "truth_prefix", "feedback"],
                    [("dense", "-"), ("uniform", "wanda"), ("truth_prefix", "wanda"), ("feedback", "wanda")]),
    "distillation": ("statements", ["--methods", "uniform", "--finetunes", "none", "distill", "--finetune-steps", "2"],
                     [("dense", "-"), ("uniform", "wanda"), ("uniform+distill", "wanda")]),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_truth_retention_prints_the_table_and_the_agreed_keys(tmp_path, monkeypatch, capsys, case):
    benchmark = load_benchmark()
    calibration, extra, expected = CASES[case]
    if calibration == "mix" and not benchmark.SHARED.is_dir():
        pytest.skip("the mix calibration needs ../shared/data/TruthfulQA.csv")
    monkeypatch.setenv("TPLO_CACHE", str(tmp_path / "cache"))
    write_tiny_gguf(tmp_path / "tiny.gguf")
    out = tmp_path / "out"
    result = benchmark.main(["--model", str(tmp_path / "tiny.gguf"), "--sparsities", "0.5", "--calibration",
                             calibration, "--windows", "4", "--seqlen", "32", "--eval-per-topic", "24",
                             "--truth-per-dataset", "8", "--seeds", "2", "--repeats", "1", "--ppl-windows", "2",
                             "--out", str(out), *extra])
    printed = capsys.readouterr().out.strip().splitlines()
    assert json.loads(printed[-1]) == json.loads(json.dumps(result))
    runs = result["runs"]
    assert [(r["method"], r["scorer"]) for r in runs] == expected
    for run in runs:
        assert {"method", "sparsity", "best_acc", "best_layer", "mean_acc", "cross_topic_acc", "perplexity"} <= set(run)
        assert 0 <= run["best_acc"] <= 1 and 0 <= run["cross_topic_acc"] <= 1 and run["perplexity"] > 1
        assert len(run["layer_acc"]) == 5  # embeddings + 4 blocks
    for run in runs[1:]:
        assert run["prune_s"] > 0 and abs(run["global_sparsity"] - 0.5) < 0.02
        assert "recovery" in run and (run["method"] != "uniform" or run["recovery"] in (0.0, None))
        assert ("finetune_s" in run) == ("+" in run["method"])
    assert (out / "truth_retention.md").read_text().count("\n") == len(runs) + 2
    assert (out / "accuracy_per_layer.png").stat().st_size > 10_000
    assert len((out / "runs.jsonl").read_text().splitlines()) == len(runs)

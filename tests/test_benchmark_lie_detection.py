"""The lie-detection speed benchmark runs end to end at toy size and prints the JSON its readers rely on."""

import importlib.util
import json
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "lie_detection_speed.py"


def load_benchmark():
    spec = importlib.util.spec_from_file_location("lie_detection_speed", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_lie_detection_benchmark_compares_tplo_with_scikit_learn_at_toy_size(capsys):
    load_benchmark().main(["--layers", "2", "--hidden", "16", "--repeats", "2", "--size-scale", "0.05",
                           "--sklearn-fits", "3"])
    lines = capsys.readouterr().out.strip().splitlines()
    out = json.loads(lines[-1])
    assert out["fits"] == 2 * 6 * 2 and out["pairs"] == 6 and out["sklearn_fits"] == 3
    assert out["rows"] == 2 * sum(max(4, round(n * 0.05)) for n in (1496, 354, 406, 164, 186, 561))
    assert out["compared_accuracies"] == 3 * 2 * 2  # LR and TTPD on both held-out datasets of each fit
    assert out["max_accuracy_diff_points"] <= 100 / 8  # at most one statement of the smallest test set
    assert out["tplo_s_per_fit"] > 0 and out["sklearn_s_per_fit"] > 0
    assert abs(out["ratio"] - out["sklearn_s_per_fit"] / out["tplo_s_per_fit"]) <= 0.01 * out["ratio"] + 0.01
    assert 0.5 < out["best_layer_accuracy"]["ttpd"] <= 1
    assert any("ratio" in line for line in lines[:-1])

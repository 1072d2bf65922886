"""`python -m tplo.eval` end to end on tiny saved models (causal LM and encoder): lie detection with the reference
protocol, lm-eval-harness tasks on local files, perplexity, the feature cache."""

import json

import pytest

from conftest import HARNESS_TASKS as TASKS
from tiny_models import tiny_model
from tiny_tokenizers import char_tokenizer
from tplo.eval.evaluate import main, select_layers
from tplo.eval.harness import run_harness
from tplo.loading import load_model, load_tokenizer

FACTS = {"cities": [("Paris", "France", "Spain"), ("Rome", "Italy", "Peru"), ("Oslo", "Norway", "Chad"),
                    ("Lima", "Peru", "Italy"), ("Cairo", "Egypt", "Norway"), ("Quito", "Ecuador", "Egypt")],
         "capitals": [("France", "Paris", "Rome"), ("Italy", "Rome", "Lima"), ("Peru", "Lima", "Oslo"),
                      ("Norway", "Oslo", "Cairo"), ("Egypt", "Cairo", "Quito"), ("Chad", "Ndjamena", "Paris")]}


def write_statements(folder):
    """Two topic pairs as CSVs in the published format (cities.csv, neg_cities.csv, ...)."""
    folder.mkdir()
    for topic, rows in FACTS.items():
        aff, neg = ["statement,label"], ["statement,label"]
        for subject, right, wrong in rows:
            aff += [f"{subject} goes with {right}.,1", f"{subject} goes with {wrong}.,0"]
            neg += [f"{subject} does not go with {right}.,0", f"{subject} does not go with {wrong}.,1"]
        (folder / f"{topic}.csv").write_text("\n".join(aff) + "\n")
        (folder / f"neg_{topic}.csv").write_text("\n".join(neg) + "\n")
    return folder


def save_model(arch, folder):
    tiny_model(arch).save_pretrained(folder)
    char_tokenizer().save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    (root / "heldout.txt").write_text("Some held-out text to score. " * 4)
    return {"root": root, "statements": write_statements(root / "statements"),
            "text": root / "heldout.txt",
            "llama": save_model("llama", root / "llama"), "bert": save_model("bert", root / "bert")}


def run(files, model, out, *extra):
    return main([str(files[model]), "--out", str(out), "--statements", str(files["statements"]), "--repeats", "2",
                 "--batch-size", "8", "--cache-dir", str(files["root"] / "cache"), *extra])


def test_causal_lm_gets_every_part_and_reuses_its_features(files, tmp_path, task_dir):
    extra = ["--tasks", ",".join(TASKS), "--task-path", task_dir, "--no-builtin-tasks", "--perplexity-text",
             str(files["text"]), "--seqlen", "32"]
    assert run(files, "llama", tmp_path / "a", *extra) == 0
    result = json.loads((tmp_path / "a" / "evaluation.json").read_text())
    assert result["causal_lm"] and result["num_layers"] == 5 and result["paper_layer"] == 4
    lie = result["lie_detection"]
    assert lie["protocol"] == "reference" and lie["layers"] == [0, 1, 2, 3, 4] and lie["pairs"] == ["capitals", "cities"]
    assert set(lie["lr"]["per_pair"]) == {"capitals", "cities"}
    assert set(lie["ttpd"]["per_dataset"]) == {"capitals", "neg_capitals", "cities", "neg_cities"}
    assert len(lie["ttpd"]["mean"]) == 5 and lie["paper"]["lr"]["layer"] == 4
    assert not lie["feature_cache"]["hit"]
    assert result["statements"]["datasets"] == {"capitals": 12, "neg_capitals": 12, "cities": 12, "neg_cities": 12}
    harness = run_harness(load_model(str(files["llama"])), load_tokenizer(str(files["llama"])), TASKS, batch_size=8,
                          include_path=task_dir, include_defaults=False)
    assert result["harness"]["results"] == harness["results"]  # the harness's own numbers, as it computes them
    assert set(result["harness"]["results"]) == set(TASKS) and 0 <= result["harness"]["results"][TASKS[1]]["acc"] <= 1
    assert result["perplexity"]["seqlen"] == 32 and result["perplexity"]["perplexity"] > 1
    assert result["skipped"] == {} and result["config"]["repeats"] == 2
    assert list((tmp_path / "a").glob("events.out.tfevents.*"))
    assert not list((tmp_path / "a").glob("*.tmp"))

    assert run(files, "llama", tmp_path / "b", "--layer", "2,4") == 0
    again = json.loads((tmp_path / "b" / "evaluation.json").read_text())
    assert again["lie_detection"]["feature_cache"]["hit"]
    assert again["lie_detection"]["lr"]["mean"] == [lie["lr"]["mean"][2], lie["lr"]["mean"][4]]
    assert again["skipped"] == {"harness": "no --tasks given", "perplexity": "no --perplexity-text given"}


def test_encoder_skips_harness_and_perplexity(files, tmp_path, task_dir):
    extra = ["--tasks", TASKS[0], "--task-path", task_dir, "--no-builtin-tasks", "--perplexity-text",
             str(files["text"]), "--layer", "paper"]
    assert run(files, "bert", tmp_path, *extra) == 0
    result = json.loads((tmp_path / "evaluation.json").read_text())
    assert not result["causal_lm"] and result["lie_detection"]["layers"] == [4]
    assert result["harness"] is None and "encoder" in result["skipped"]["harness"]
    assert result["perplexity"] is None and "encoder" in result["skipped"]["perplexity"]


def test_bad_inputs_are_clear_errors_before_the_model_loads(files, tmp_path, capsys, task_dir):
    assert main([str(tmp_path / "nope"), "--out", str(tmp_path / "out")]) == 2
    assert "no such folder or file" in capsys.readouterr().err
    assert main([str(files["llama"]), "--out", str(tmp_path / "out"), "--tasks", "truthfulqa_mc3", "--task-path",
                 task_dir, "--no-builtin-tasks"]) == 2
    assert "unknown lm-eval task(s): 'truthfulqa_mc3'" in capsys.readouterr().err
    assert main([str(files["llama"]), "--out", str(tmp_path / "out"), "--perplexity-text", "nope.txt"]) == 2
    assert "neither a file nor one of" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_select_layers():
    assert select_layers("all", 3, 2) == [0, 1, 2]
    assert select_layers("paper", 3, 2) == [2]
    assert select_layers("2,0,2", 3, 2) == [0, 2]
    with pytest.raises(ValueError, match="out of range"):
        select_layers("3", 3, 2)
    with pytest.raises(ValueError, match="comma-separated"):
        select_layers("last", 3, 2)

"""`python -m tplo.evaluate` end to end on tiny saved models (causal LM and encoder)."""

import json

import pytest

from tplo.eval.evaluate import main, select_layers
from tiny_tokenizers import char_tokenizer
from tiny_models import tiny_model

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


def write_truthfulqa(path):
    path.write_text(
        "Type,Category,Question,Best Answer,Correct Answers,Incorrect Answers,Source\n"
        "Adversarial,Misc,Is ice cold?,Yes,Yes; It is cold,No; It is hot,x\n"
        "Adversarial,Misc,Do fish fly?,Mostly not,Mostly not; No,Yes; Always,x\n")
    return path


def save_model(arch, folder):
    tiny_model(arch).save_pretrained(folder)
    char_tokenizer().save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    (root / "heldout.txt").write_text("Some held-out text to score. " * 4)
    return {"root": root, "statements": write_statements(root / "statements"),
            "tqa": write_truthfulqa(root / "TruthfulQA.csv"), "text": root / "heldout.txt",
            "llama": save_model("llama", root / "llama"), "bert": save_model("bert", root / "bert")}


def run(files, model, out, *extra):
    return main([str(files[model]), "--out", str(out), "--statements", str(files["statements"]), "--repeats", "2",
                 "--jobs", "1", "--batch-size", "8", "--cache-dir", str(files["root"] / "cache"), *extra])


def test_causal_lm_gets_every_part_and_reuses_its_features(files, tmp_path):
    extra = ["--truthfulqa", str(files["tqa"]), "--perplexity-text", str(files["text"]), "--seqlen", "32"]
    assert run(files, "llama", tmp_path / "a", *extra) == 0
    result = json.loads((tmp_path / "a" / "evaluation.json").read_text())
    assert result["causal_lm"] and result["num_layers"] == 5 and result["paper_layer"] == 4
    lie = result["lie_detection"]
    assert lie["layers"] == [0, 1, 2, 3, 4] and lie["pairs"] == ["capitals", "cities"]
    assert set(lie["lr"]["per_pair"]) == {"capitals", "cities"}
    assert set(lie["ttpd"]["per_dataset"]) == {"capitals", "neg_capitals", "cities", "neg_cities"}
    assert len(lie["ttpd"]["mean"]) == 5 and lie["paper"]["lr"]["layer"] == 4
    assert not lie["feature_cache"]["hit"]
    assert result["statements"]["datasets"] == {"capitals": 12, "neg_capitals": 12, "cities": 12, "neg_cities": 12}
    assert result["truthfulqa"]["n"] == 2 and result["truthfulqa"]["mc1"] in (0.0, 0.5, 1.0)
    assert 0 < result["truthfulqa"]["mc2"] < 1
    assert result["perplexity"]["seqlen"] == 32 and result["perplexity"]["perplexity"] > 1
    assert result["skipped"] == {} and result["config"]["repeats"] == 2
    assert list((tmp_path / "a").glob("events.out.tfevents.*"))
    assert not list((tmp_path / "a").glob("*.tmp"))

    assert run(files, "llama", tmp_path / "b", "--layer", "2,4") == 0
    again = json.loads((tmp_path / "b" / "evaluation.json").read_text())
    assert again["lie_detection"]["feature_cache"]["hit"]
    assert again["lie_detection"]["lr"]["mean"] == [lie["lr"]["mean"][2], lie["lr"]["mean"][4]]
    assert again["skipped"] == {"truthfulqa": "no --truthfulqa given", "perplexity": "no --perplexity-text given"}


def test_encoder_skips_truthfulqa_and_perplexity(files, tmp_path):
    extra = ["--truthfulqa", str(files["tqa"]), "--perplexity-text", str(files["text"]), "--layer", "paper"]
    assert run(files, "bert", tmp_path, *extra) == 0
    result = json.loads((tmp_path / "evaluation.json").read_text())
    assert not result["causal_lm"] and result["lie_detection"]["layers"] == [4]
    assert result["truthfulqa"] is None and "encoder" in result["skipped"]["truthfulqa"]
    assert result["perplexity"] is None and "encoder" in result["skipped"]["perplexity"]


def test_missing_model_directory_is_a_clear_error(files, tmp_path, capsys):
    assert main([str(tmp_path / "nope"), "--out", str(tmp_path / "out")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_select_layers():
    assert select_layers("all", 3, 2) == [0, 1, 2]
    assert select_layers("paper", 3, 2) == [2]
    assert select_layers("2,0,2", 3, 2) == [0, 2]
    with pytest.raises(ValueError, match="out of range"):
        select_layers("3", 3, 2)
    with pytest.raises(ValueError, match="comma-separated"):
        select_layers("last", 3, 2)

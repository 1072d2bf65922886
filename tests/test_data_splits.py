"""Splits never share a statement or a subject; leave-one-topic-out tests exactly the held-out pair."""

from pathlib import Path

import pandas as pd
import pytest

from tplo.data.generated import generate_statements
from tplo.data.schema import StatementDataError, typed_table
from tplo.data.splits import leave_one_out_split, random_split, split_groups, subsample
from tplo.data.statements import load_statements

SHARED = Path(__file__).parents[2] / "shared" / "data"


@pytest.fixture(scope="module")
def generated() -> pd.DataFrame:
    return generate_statements(seed=0)


@pytest.fixture(scope="module")
def published() -> pd.DataFrame:
    if not SHARED.is_dir():
        pytest.skip("../shared/data is absent")
    return pd.concat([load_statements(str(SHARED / f"{n}.csv"))
                      for n in ("cities", "neg_cities", "sp_en_trans", "neg_sp_en_trans")], ignore_index=True)


def table(rows: list[tuple]) -> pd.DataFrame:
    return typed_table(pd.DataFrame(rows, columns=["statement", "label", "topic", "negated", "subject"]))


def assert_disjoint(splits: dict[str, pd.DataFrame], key: str) -> None:
    names = list(splits)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            common = set(splits[a][key]) & set(splits[b][key]) - {""}
            assert not common, (a, b, sorted(common)[:5])


def assert_city_split_holds(splits: dict[str, pd.DataFrame]) -> None:
    cities = {name: set(f.loc[f["topic"] == "cities", "subject"]) for name, f in splits.items()}
    assert not cities["train"] & cities["test"] and not cities["train"] & cities["val"]


def test_groups_join_statements_and_subjects_transitively():
    frame = table([("a.", 1, "t", False, "x"), ("b.", 0, "t", True, "x"), ("c.", 1, "t", False, ""),
                   ("c.", 1, "u", False, "y"), ("d.", 0, "u", False, "y"), ("e.", 0, "u", False, "x")])
    groups = split_groups(frame)
    assert groups[0] == groups[1]  # same topic and subject
    assert groups[2] == groups[3] == groups[4]  # same statement, then same subject
    assert groups[5] != groups[0]  # subject "x" but another topic
    assert groups.tolist() == [0, 0, 1, 1, 1, 2]


def test_random_split_has_no_overlap_and_right_sizes(generated):
    splits = random_split(generated, 0.1, 0.2, seed=0)
    assert sum(map(len, splits.values())) == len(generated)
    assert_disjoint(splits, "statement")
    assert_city_split_holds(splits)
    for topic, rows in generated.groupby("topic"):
        test = splits["test"]
        assert abs((test["topic"] == topic).sum() / len(rows) - 0.2) < 0.03, topic
        assert set(splits["val"]["topic"]) == set(generated["topic"])
    for frame in splits.values():
        assert (frame.groupby(["topic", "negated"])["label"].mean() == 0.5).all()


def test_random_split_is_deterministic(generated):
    a, b = random_split(generated, 0.1, 0.2, seed=3), random_split(generated, 0.1, 0.2, seed=3)
    for name in a:
        pd.testing.assert_frame_equal(a[name], b[name])
    assert set(random_split(generated, 0.1, 0.2, seed=4)["test"]["statement"]) != set(a["test"]["statement"])


@pytest.mark.parametrize("held_out", ["cities", "inventors"])
def test_leave_one_out_tests_the_held_out_pair_only(generated, held_out):
    splits = leave_one_out_split(generated, held_out, 0.1, seed=0)
    test = splits["test"]
    assert set(test["topic"]) == {held_out} and set(test["negated"]) == {True, False}
    assert len(test) == (generated["topic"] == held_out).sum()
    assert held_out not in set(splits["train"]["topic"]) | set(splits["val"]["topic"])
    assert set(splits["train"]["topic"]) == set(generated["topic"]) - {held_out}
    assert_disjoint(splits, "statement")


def test_leave_one_out_drops_training_rows_that_repeat_a_test_statement():
    frame = table([("a.", 1, "t", False, ""), ("b.", 0, "t", False, ""), ("a.", 1, "u", False, ""),
                   ("c.", 0, "u", False, ""), ("d.", 1, "u", False, "")])
    splits = leave_one_out_split(frame, "t", 0.0, seed=0)
    assert splits["test"]["statement"].tolist() == ["a.", "b."]
    assert splits["train"]["statement"].tolist() == ["c.", "d."]


def test_published_splits_keep_cities_apart(published):
    splits = random_split(published, 0.1, 0.2, seed=0)
    assert_disjoint(splits, "statement")
    assert_city_split_holds(splits)
    spanish = {n: set(f.loc[f["topic"] == "sp_en_trans", "subject"]) for n, f in splits.items()}
    assert not spanish["train"] & spanish["test"]
    loo = leave_one_out_split(published, "sp_en_trans", 0.1, seed=0)
    assert_disjoint(loo, "statement")
    assert set(loo["test"]["topic"]) == {"sp_en_trans"} and len(loo["test"]) == 708
    assert_city_split_holds(loo)


def test_leave_one_out_errors(generated):
    with pytest.raises(StatementDataError, match=r"held_out topic 'planets' is not in the statements; topics: "
                                                 r"\['animal_class', 'capitals'"):
        leave_one_out_split(generated, "planets", 0.1, seed=0)
    with pytest.raises(StatementDataError, match="at least two topics"):
        leave_one_out_split(generated[generated["topic"] == "cities"], "cities", 0.1, seed=0)


def test_subsample_caps_topics_and_keeps_balance(generated):
    small = subsample(generated, 100, seed=0)
    sizes = small.groupby("topic").size()
    assert (sizes <= 100).all() and (sizes >= 92).all(), sizes
    assert (small.groupby(["topic", "negated"])["label"].mean() == 0.5).all()
    assert set(small["statement"]) <= set(generated["statement"])
    pd.testing.assert_frame_equal(subsample(generated, 100, seed=0), small)
    pd.testing.assert_frame_equal(subsample(generated, None, seed=0), generated)

"""tplo's generated statements: sizes, balance, determinism, no accidental truths, correct negations."""

import re

import pandas as pd
import pytest

from tplo.data.generated import TOPICS, generate_statements, read_fact_table, relation_facts, right_objects, topic_rng
from tplo.data.statements import StatementDataError, load_statements

NEGATIONS = ((" is not ", " is "), (" does not mean ", " means "), (" was not invented ", " was invented "))


@pytest.fixture(scope="module")
def statements() -> pd.DataFrame:
    return generate_statements(seed=0)


def test_at_least_six_topics_with_enough_facts(statements):
    facts = statements.groupby("topic").size() // 4  # four statements per fact
    assert len(facts) >= 6
    assert set(facts.index) == set(TOPICS)
    assert (facts >= 150).all(), facts
    assert facts["cities"] >= 400


def test_columns_and_types(statements):
    assert list(statements.columns[:4]) == ["statement", "label", "topic", "negated"]
    assert set(statements["label"]) == {0, 1}
    assert statements["negated"].dtype == bool
    assert statements["statement"].map(lambda s: s[0].isupper() and s.endswith(".") and "{" not in s).all()
    assert not statements["statement"].duplicated().any()


def test_balanced_per_topic_and_dataset(statements):
    means = statements.groupby(["topic", "negated"])["label"].mean()
    assert (means == 0.5).all(), means
    sizes = statements.groupby(["topic", "negated"]).size().unstack()
    assert (sizes[True] == sizes[False]).all()


def test_deterministic_and_seeded(statements):
    pd.testing.assert_frame_equal(generate_statements(seed=0), statements)
    other = generate_statements(seed=1)
    assert (other["statement"] != statements["statement"]).any()
    assert sorted(other.loc[other["label"] == 1, "statement"]) != sorted(statements.loc[statements["label"] == 1,
                                                                                        "statement"])


def test_a_topic_does_not_depend_on_the_others(statements):
    alone = generate_statements(["inventors"], seed=0)
    pd.testing.assert_frame_equal(alone, statements[statements["topic"] == "inventors"].reset_index(drop=True))
    pd.testing.assert_frame_equal(load_statements("generated:inventors"), alone)


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("topic", list(TOPICS))
def test_wrong_objects_are_never_right(topic, seed):
    rng = topic_rng(topic, seed)
    for relation in TOPICS[topic]:
        facts = relation_facts(relation, rng)
        right = right_objects(read_fact_table(relation.table), relation)
        assert (facts["wrong"] != facts["object"]).all()
        assert not [s for s, w in zip(facts["subject"], facts["wrong"]) if w in right[s]]


def test_known_namesakes_are_excluded():
    cities = read_fact_table("cities.csv")
    spanish = read_fact_table("sp_en_trans.csv")
    assert set(cities.loc[cities["city"] == "Alexandria", "also_in"]) == {"the United States;Romania"}
    assert set(spanish.loc[spanish["spanish"] == "vino", "also_means"]) == {"to come"}
    statements = pd.concat([generate_statements(["cities", "sp_en_trans"], seed=s) for s in range(20)])
    false = statements.loc[(statements["label"] == 0) & ~statements["negated"], "statement"]
    assert not false.str.match(r"The city of Alexandria is in (the United States|Romania)\.").any()
    assert not false.str.contains("'vino' means 'to come'").any()


def test_false_statements_never_repeat_a_true_one(statements):
    affirmative = statements[~statements["negated"]]
    assert not set(affirmative.loc[affirmative["label"] == 0, "statement"]) & set(
        affirmative.loc[affirmative["label"] == 1, "statement"])


def test_city_statements_match_the_table(statements):
    cities = read_fact_table("cities.csv")
    country = dict(zip(cities["city"], cities["country"]))
    also = {c: set(filter(None, a.split(";"))) for c, a in zip(cities["city"], cities["also_in"])}
    rows = statements[(statements["topic"] == "cities") & ~statements["negated"]]
    for text, label in zip(rows["statement"], rows["label"]):
        city, named = re.fullmatch(r"The city of (.+) is in (.+)\.", text).groups()
        assert (named == country[city]) == bool(label), text
        assert named not in also[city] or label, text


def test_negations_flip_the_label(statements):
    affirmative = dict(zip(statements.loc[~statements["negated"], "statement"],
                           statements.loc[~statements["negated"], "label"]))
    negated = statements[statements["negated"]]
    assert len(negated) == len(affirmative)
    for text, label in zip(negated["statement"], negated["label"]):
        plain = next(text.replace(n, p, 1) for n, p in NEGATIONS if n in text)
        assert affirmative[plain] == 1 - label, text


def test_fact_tables_are_consistent():
    cities = read_fact_table("cities.csv")
    assert not cities["city"].duplicated().any()
    elements = read_fact_table("elements.csv")
    assert len(elements) == 118 and not elements["symbol"].duplicated().any()
    assert elements["atomic_number"].astype(int).tolist() == list(range(1, 119))
    known = {"hydrogen": ("H", "1"), "iron": ("Fe", "26"), "gold": ("Au", "79"), "tungsten": ("W", "74"),
             "lead": ("Pb", "82"), "uranium": ("U", "92")}
    for name, expected in known.items():
        row = elements[elements["element"] == name].iloc[0]
        assert (row["symbol"], row["atomic_number"]) == expected
    for table, column in (("capitals.csv", "country"), ("capitals.csv", "capital"), ("animals.csv", "animal"),
                          ("sp_en_trans.csv", "spanish"), ("sp_en_trans.csv", "english"),
                          ("inventors.csv", "invention")):
        assert not read_fact_table(table)[column].duplicated().any(), (table, column)
    inventors = read_fact_table("inventors.csv")["inventor"]
    people = inventors.map(lambda s: set(re.split(r", | and ", s)))
    single = {next(iter(p)) for p in people if len(p) == 1}
    assert not [p for p in people if len(p) > 1 and p & single]


def test_unknown_topic_is_an_error():
    with pytest.raises(ValueError, match="unknown generated topic 'planets'"):
        generate_statements(["planets"])
    with pytest.raises(StatementDataError, match="unknown generated topic"):
        load_statements("generated:cities,planets")

"""tplo's own true/false statements, generated from the fact tables in `facts/`.

Every fact gives four labelled statements: the affirmative with the right object (true), the
affirmative with a wrong object drawn from the same table (false), and the negations of both
(false, true). A wrong object is never one that is also right for the subject: the tables list such
objects in an `also_*` column (a city name that exists in another country, a Spanish word with a
second meaning) and the sampler excludes them, together with every object the table gives the subject.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from tplo.data.schema import COLUMNS, typed_table

FACTS_DIR = Path(__file__).with_name("facts")


@dataclass(frozen=True)
class Relation:
    """One kind of fact in a fact table and the sentences that state it.

    Args:
        table: CSV file under `facts/`.
        subject: column holding what the statement is about.
        object: column holding the right answer.
        affirmative: template with {subject} and {object}; the first letter is capitalised.
        negated: the same sentence negated.
        also: column of further right answers separated by ';' (never used as wrong objects).
    """

    table: str
    subject: str
    object: str
    affirmative: str
    negated: str
    also: str | None = None


TOPICS: dict[str, tuple[Relation, ...]] = {
    "cities": (Relation("cities.csv", "city", "country", "The city of {subject} is in {object}.",
                        "The city of {subject} is not in {object}.", also="also_in"),),
    "capitals": (Relation("capitals.csv", "country", "capital", "The capital of {subject} is {object}.",
                          "The capital of {subject} is not {object}."),),
    "elements": (Relation("elements.csv", "element", "symbol", "The chemical symbol of {subject} is {object}.",
                          "The chemical symbol of {subject} is not {object}."),
                 Relation("elements.csv", "element", "atomic_number", "The atomic number of {subject} is {object}.",
                          "The atomic number of {subject} is not {object}.")),
    "animal_class": (Relation("animals.csv", "animal", "class", "The {subject} is {object}.",
                              "The {subject} is not {object}."),),
    "sp_en_trans": (Relation("sp_en_trans.csv", "spanish", "english", "The Spanish word '{subject}' means '{object}'.",
                             "The Spanish word '{subject}' does not mean '{object}'.", also="also_means"),),
    "inventors": (Relation("inventors.csv", "invention", "inventor", "{subject} was invented by {object}.",
                           "{subject} was not invented by {object}."),),
}


def read_fact_table(name: str) -> pd.DataFrame:
    """A fact table from `facts/`, every cell a string ("" where empty)."""
    return pd.read_csv(FACTS_DIR / name, dtype=str, keep_default_na=False)


def right_objects(table: pd.DataFrame, relation: Relation) -> dict[str, set[str]]:
    """Every object that makes a statement about each subject true: its rows plus its `also` list."""
    also = table[relation.also] if relation.also else [""] * len(table)
    right: dict[str, set[str]] = {}
    for subject, obj, more in zip(table[relation.subject], table[relation.object], also):
        right.setdefault(subject, set()).update([obj], (o.strip() for o in more.split(";") if o.strip()))
    return right


def relation_facts(relation: Relation, rng: np.random.Generator) -> pd.DataFrame:
    """Columns `subject`, `object`, `wrong`: each fact with a wrong object drawn uniformly from the
    table's objects that are not right for that subject."""
    table = read_fact_table(relation.table)
    right = right_objects(table, relation)
    candidates = sorted(set(table[relation.object]))
    wrong = []
    for subject in table[relation.subject]:
        choices = [o for o in candidates if o not in right[subject]]
        wrong.append(choices[rng.integers(len(choices))])
    return pd.DataFrame({"subject": table[relation.subject], "object": table[relation.object], "wrong": wrong})


def topic_rng(topic: str, seed: int) -> np.random.Generator:
    """A generator that depends on the seed and the topic only, so a topic's statements do not change
    with the other topics requested."""
    return np.random.default_rng([seed, zlib.crc32(topic.encode())])


def sentence(template: str, subject: str, obj: str) -> str:
    """Fill a template and capitalise the first letter."""
    text = template.format(subject=subject, object=obj)
    return text[:1].upper() + text[1:]


def topic_statements(topic: str, seed: int = 0) -> pd.DataFrame:
    """The statement table of one generated topic: per fact, affirmative true and false, then the
    negated forms (the negation of the right object is false, of the wrong object true)."""
    if topic not in TOPICS:
        raise ValueError(f"unknown generated topic {topic!r}; available: {', '.join(TOPICS)}")
    rng = topic_rng(topic, seed)
    rows = []
    for relation in TOPICS[topic]:
        facts = relation_facts(relation, rng)
        for negated, template in ((False, relation.affirmative), (True, relation.negated)):
            for subject, obj, wrong in zip(facts["subject"], facts["object"], facts["wrong"]):
                rows.append((sentence(template, subject, obj), int(not negated), topic, negated, subject))
                rows.append((sentence(template, subject, wrong), int(negated), topic, negated, subject))
    return typed_table(pd.DataFrame(rows, columns=COLUMNS))


def generate_statements(topics: list[str] | None = None, seed: int = 0) -> pd.DataFrame:
    """Statements of the given generated topics (default: all), deterministic given the seed."""
    names = list(TOPICS) if topics is None else list(topics)
    if not names:
        raise ValueError(f"no topics requested; available: {', '.join(TOPICS)}")
    return typed_table(pd.concat([topic_statements(t, seed) for t in names], ignore_index=True))

"""TruthfulQA: the question table, and the "enriched" calibration paragraphs built from it.

Enriched TruthfulQA (TPLO paper, section 3.8 of DESIGN.md) turns every answer of every question into
a paragraph that states the answer and clarifies whether it is true, naming the best answer when it
is false. The wording is three format strings with named fields (see `enriched_paragraphs`).
"""

from __future__ import annotations

import string
from pathlib import Path

import pandas as pd

from tplo.data.schema import StatementDataError

HUB_NAME = "truthfulqa/truthful_qa"
COLUMNS = ["question", "best_answer", "correct_answers", "incorrect_answers", "category"]
FIELDS = {"question", "answer", "best_answer", "category"}
DEFAULT_TEMPLATE = "Question: {question}\nAnswer: {answer}\n{clarification}"
DEFAULT_TRUE_CLARIFICATION = "This answer is true."
DEFAULT_FALSE_CLARIFICATION = "This answer is false. The best answer is: {best_answer}."


def split_answers(text: str) -> list[str]:
    """Answers of the CSV format, separated by ';' (empty pieces from trailing ';' dropped)."""
    return [a.strip() for a in text.split(";") if a.strip()]


def unique(answers: list[str]) -> list[str]:
    """Answers without repeats, in their first order."""
    return list(dict.fromkeys(answers))


def normalise_columns(frame: pd.DataFrame) -> pd.DataFrame:
    """"Best Answer" (CSV) and "best_answer" (Hub) both become "best_answer"."""
    return frame.rename(columns=lambda c: str(c).strip().lower().replace(" ", "_"))


def read_truthfulqa_csv(path: Path) -> pd.DataFrame:
    """The TruthfulQA CSV release: answers in one cell, separated by '; '."""
    try:
        frame = normalise_columns(pd.read_csv(path, dtype=str, keep_default_na=False))
    except pd.errors.EmptyDataError:
        raise StatementDataError(f"{path}: the file is empty") from None
    missing = [c for c in COLUMNS[:4] if c not in frame.columns]
    if missing:
        raise StatementDataError(f"{path}: missing TruthfulQA column(s) {missing}; found {list(frame.columns)}")
    for column in ("correct_answers", "incorrect_answers"):
        frame[column] = frame[column].map(split_answers)
    return frame


def read_truthfulqa_hub(name: str) -> pd.DataFrame:
    """The "generation" configuration of a TruthfulQA dataset on the Hugging Face Hub."""
    try:
        import datasets

        frame = datasets.load_dataset(name, "generation", split="validation").to_pandas()
    except Exception as error:  # any failure (offline, unknown name) means the same to the user
        raise StatementDataError(f"{name!r} is not a local file, and loading it from the Hugging Face Hub failed "
                                 f"({type(error).__name__}: {error}). Offline, give the path of TruthfulQA.csv."
                                 ) from error
    frame = normalise_columns(frame)
    for column in ("correct_answers", "incorrect_answers"):
        frame[column] = frame[column].map(lambda answers: [str(a).strip() for a in answers if str(a).strip()])
    return frame


def load_truthfulqa(source: str = HUB_NAME) -> pd.DataFrame:
    """TruthfulQA as a table with `question`, `best_answer`, `correct_answers` (list[str], always
    including the best answer), `incorrect_answers` (list[str]) and `category`.

    Args:
        source: the path of TruthfulQA.csv or a Hugging Face dataset name such as "truthfulqa/truthful_qa".
    """
    path = Path(source).expanduser()
    frame = read_truthfulqa_csv(path) if path.is_file() else read_truthfulqa_hub(source)
    if "category" not in frame.columns:
        frame["category"] = ""
    frame = frame[COLUMNS].reset_index(drop=True)
    for column in ("question", "best_answer"):
        frame[column] = frame[column].astype(str).str.strip()
        blank = frame.index[frame[column] == ""]
        if len(blank):
            raise StatementDataError(f"{source}, row {blank[0] + 2} (the header is row 1): empty {column}")
    frame["correct_answers"] = [unique([best, *answers]) for best, answers in zip(frame["best_answer"],
                                                                                  frame["correct_answers"])]
    frame["incorrect_answers"] = frame["incorrect_answers"].map(unique)
    return frame


def check_template(template: str, fields: set[str], what: str) -> str:
    """Raise if a format string uses a field outside `fields`; return it unchanged."""
    try:
        used = {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
    except ValueError as error:
        raise ValueError(f"{what} {template!r} is not a valid format string: {error}") from None
    unknown = used - fields
    if unknown:
        raise ValueError(f"{what} {template!r} uses unknown field(s) {sorted(unknown)}; "
                         f"available: {sorted(fields)}")
    return template


def enriched_paragraphs(frame: pd.DataFrame, template: str = DEFAULT_TEMPLATE,
                        true_clarification: str = DEFAULT_TRUE_CLARIFICATION,
                        false_clarification: str = DEFAULT_FALSE_CLARIFICATION) -> list[str]:
    """One paragraph per answer (correct answers first, then incorrect ones, row by row).

    Args:
        frame: a table from `load_truthfulqa`.
        template: the paragraph; fields {question}, {answer}, {best_answer}, {category} and
            {clarification}.
        true_clarification: the clarification of a correct answer (same fields but {clarification}).
        false_clarification: the clarification of an incorrect answer, naming {best_answer}.
    """
    check_template(template, FIELDS | {"clarification"}, "template")
    check_template(true_clarification, FIELDS, "true_clarification")
    check_template(false_clarification, FIELDS, "false_clarification")
    paragraphs = []
    for row in frame.itertuples(index=False):
        for answers, clarification in ((row.correct_answers, true_clarification),
                                       (row.incorrect_answers, false_clarification)):
            for answer in answers:
                fields = {"question": row.question, "answer": answer, "best_answer": row.best_answer,
                          "category": row.category}
                paragraphs.append(template.format(clarification=clarification.format(**fields), **fields))
    return paragraphs

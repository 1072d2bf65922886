"""Load labelled statements from CSV files, folders, the Hugging Face Hub or tplo's own generator.

CSV files need the columns `statement` and `label` (1 true, 0 false), the format of the
"Geometry of Truth" and "Truth is Universal" sets. The topic is the file name ("cities.csv" ->
"cities"); a `neg_` prefix marks negated statements ("neg_cities.csv" -> topic "cities", negated).
Optional columns: `topic` (a per-row dataset name, "neg_" prefix allowed), `negated` (0/1),
`subject` or `city` (what the statement is about; splits keep one subject on one side).
Problems are reported with the file and the row as a spreadsheet shows it (the header is row 1).
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import pandas as pd

from tplo.data.generated import TOPICS, generate_statements
from tplo.data.schema import StatementDataError, dataset_name, empty_table, parse_dataset_name, typed_table

__all__ = ["StatementDataError", "dataset_name", "generate_statements", "load_statements", "read_statement_csv",
           "validate_statements"]

GENERATED = "generated"
BOOLEANS = {"0": 0, "1": 1, "0.0": 0, "1.0": 1, "false": 0, "true": 1}
SUBJECT_PATTERNS = (re.compile(r"^The city of (.+?) is (?:not )?in "),
                    re.compile(r"^The Spanish word '(.+?)' (?:does not )?mean"))


def row_error(where: str, rows: pd.Index, problem: str) -> StatementDataError:
    """An error naming the source, the first bad row (spreadsheet numbering) and the problem."""
    more = f" (and {len(rows) - 1} more rows)" if len(rows) > 1 else ""
    return StatementDataError(f"{where}, row {rows[0] + 2} (the header is row 1): {problem}{more}")


def parse_flags(values: pd.Series, where: str, column: str) -> pd.Series:
    """Parse a 0/1 column (also accepts true/false and 0.0/1.0); raise on anything else."""
    parsed = values.str.strip().str.lower().map(BOOLEANS)
    bad = parsed.index[parsed.isna()]
    if len(bad):
        raise row_error(where, bad, f"{column} must be 0 or 1, got {values[bad[0]]!r}")
    return parsed.astype("int64")


def statement_subject(statement: str) -> str:
    """The subject of a statement in a known published format (city, Spanish word), else ""."""
    for pattern in SUBJECT_PATTERNS:
        match = pattern.match(statement)
        if match:
            return match.group(1)
    return ""


def validate_statements(frame: pd.DataFrame, where: str, default_dataset: str) -> pd.DataFrame:
    """Check a raw table of strings and turn it into a statement table.

    `where` names the source in error messages; `default_dataset` ("neg_cities") gives the topic and
    negation of rows without a `topic` column.
    """
    frame = frame.reset_index(drop=True)
    missing = [c for c in ("statement", "label") if c not in frame.columns]
    if missing:
        raise StatementDataError(f"{where}: missing column(s) {', '.join(missing)}; found {list(frame.columns)}. "
                                 "A statement file needs at least the columns 'statement' and 'label'.")
    if frame.empty:
        raise StatementDataError(f"{where}: the file is empty (a header but no statements)")
    statements = frame["statement"].str.strip()
    blank = statements.index[statements == ""]
    if len(blank):
        raise row_error(where, blank, "empty statement")
    labels = parse_flags(frame["label"], where, "label")
    datasets = frame["topic"].str.strip() if "topic" in frame.columns else pd.Series(default_dataset, index=frame.index)
    datasets = datasets.where(datasets != "", default_dataset)
    parsed = [parse_dataset_name(d) for d in datasets]
    negated = pd.Series([n for _, n in parsed], index=frame.index)
    if "negated" in frame.columns:
        negated = parse_flags(frame["negated"], where, "negated").astype(bool)
    subject_column = next((c for c in ("subject", "city") if c in frame.columns), None)
    subjects = frame[subject_column].str.strip() if subject_column else statements.map(statement_subject)
    return typed_table(pd.DataFrame({"statement": statements, "label": labels, "topic": [t for t, _ in parsed],
                                     "negated": negated, "subject": subjects}))


def read_statement_csv(path: Path) -> pd.DataFrame:
    """One statement CSV; its name gives the topic ("neg_" prefix: negated)."""
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except pd.errors.EmptyDataError:
        raise StatementDataError(f"{path}: the file is empty") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as error:
        raise StatementDataError(f"{path}: not a readable UTF-8 CSV file ({error})") from None
    return validate_statements(frame, str(path), path.stem)


def has_statement_header(path: Path) -> bool:
    """Whether a CSV's header has a `statement` or a `label` column (other CSVs are not statement files)."""
    with open(path, encoding="utf-8", errors="replace") as handle:
        header = handle.readline()
    return bool({"statement", "label"} & {c.strip().strip('"') for c in header.strip().split(",")})


def read_statement_folder(folder: Path) -> pd.DataFrame:
    """Every statement CSV in a folder (not recursive), in name order. CSVs with neither a `statement`
    nor a `label` column (such as TruthfulQA.csv) are skipped with a warning; empty files are errors."""
    files = sorted(folder.glob("*.csv"))
    skipped = [f for f in files if f.stat().st_size and not has_statement_header(f)]
    if skipped:
        warnings.warn(f"{folder}: skipping {[f.name for f in skipped]}: no 'statement' or 'label' column", stacklevel=2)
    files = [f for f in files if f not in skipped]
    if not files:
        raise StatementDataError(f"{folder}: no statement .csv files in this folder")
    return typed_table(pd.concat([read_statement_csv(f) for f in files], ignore_index=True))


def read_statement_hub(name: str, split: str) -> pd.DataFrame:
    """A statement set from the Hugging Face Hub (needs network or a filled local cache)."""
    try:
        import datasets

        frame = datasets.load_dataset(name, split=split).to_pandas()
    except Exception as error:  # any failure (offline, unknown name, bad split) means the same to the user
        raise StatementDataError(
            f"{name!r} is not a local file or folder, and loading it as a Hugging Face dataset failed "
            f"({type(error).__name__}: {error}). Offline, use a CSV file, a folder of CSVs or 'generated'.") from error
    frame = frame.fillna("").astype(str)
    return validate_statements(frame, f"{name} (split {split})", name.rstrip("/").split("/")[-1])


def looks_like_path(source: str) -> bool:
    """Whether a source that does not exist was meant as a local path rather than a Hub name."""
    return source.endswith(".csv") or source.startswith((".", "/", "~")) or "\\" in source


def load_statements(source: str, seed: int = 0, split: str = "train") -> pd.DataFrame:
    """Load a statement table.

    Args:
        source: a CSV file, a folder of CSV files, "generated" (all of tplo's generated topics),
            "generated:cities,inventors" (some of them) or a Hugging Face dataset name.
        seed: seed of the generated statements.
        split: split of a Hugging Face dataset.
    """
    if source == GENERATED or source.startswith(GENERATED + ":"):
        names = [t.strip() for t in source.partition(":")[2].split(",") if t.strip()] or None
        unknown = sorted(set(names or []) - set(TOPICS))
        if unknown:
            raise StatementDataError(f"{source!r}: unknown generated topic(s) {unknown}; available: {list(TOPICS)}")
        return generate_statements(names, seed)
    path = Path(source).expanduser()
    if path.is_dir():
        return read_statement_folder(path)
    if path.is_file():
        return read_statement_csv(path)
    if looks_like_path(source):
        raise StatementDataError(f"{source}: no such file or folder")
    return read_statement_hub(source, split)


def load_all_statements(sources: list[str], seed: int = 0, split: str = "train") -> pd.DataFrame:
    """Several sources in one table, in the order given."""
    frames = [load_statements(s, seed, split) for s in sources]
    return typed_table(pd.concat(frames, ignore_index=True)) if frames else empty_table()

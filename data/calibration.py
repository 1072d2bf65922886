"""Calibration token windows for pruning, mixed from several text sources.

Every source gives paragraphs; each paragraph is tokenised on its own (no special tokens) and
followed by the tokenizer's EOS token (or SEP for encoders); the token streams are concatenated and
cut into `seqlen` windows, `count` of them per source. Local sources are shuffled with the seed and
repeated, with a warning, when they hold fewer tokens than asked for; Hub sources are streamed.
The paper's setting is 64 windows of C4 plus 64 of enriched TruthfulQA, 2048 tokens each:

    [CalibrationSource(kind="hf", path_or_name="allenai/c4", config_name="en", count=64),
     CalibrationSource(kind="truthfulqa", path_or_name="truthfulqa/truthful_qa", count=64)]
"""

from __future__ import annotations

import itertools
import re
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import torch
from transformers import PreTrainedTokenizerBase

from tplo.data.schema import StatementDataError
from tplo.data.truthfulqa import (DEFAULT_FALSE_CLARIFICATION, DEFAULT_TEMPLATE, DEFAULT_TRUE_CLARIFICATION, FIELDS,
                                  check_template, enriched_paragraphs, load_truthfulqa)

Kind = Literal["text", "hf", "statements", "truthfulqa"]
TEXT_SUFFIXES = (".txt", ".md")
HUB_SHUFFLE_BUFFER = 10_000
TOKENIZE_CHUNK = 256


@dataclass
class CalibrationSource:
    """One source of calibration text and how many windows to take from it.

    Args:
        kind: "text" (text files), "hf" (a Hugging Face dataset), "statements" (the training statements)
            or "truthfulqa" (enriched TruthfulQA).
        path_or_name: a .txt/.md file or a folder of them ("text"), a dataset name ("hf"), the path of
            TruthfulQA.csv or a dataset name such as "truthfulqa/truthful_qa" ("truthfulqa").
        count: number of `seqlen`-token windows taken from this source.
        config_name: Hugging Face dataset configuration, e.g. "en" for allenai/c4 or
            "wikitext-2-raw-v1" for wikitext ("hf" only).
        split: Hugging Face dataset split ("hf" only).
        text_field: column of the Hugging Face dataset that holds the text ("hf" only).
        streaming: stream the Hugging Face dataset instead of downloading all of it ("hf" only).
        template: enriched TruthfulQA paragraph; fields {question}, {answer}, {best_answer},
            {category} and {clarification}.
        true_clarification: enriched TruthfulQA clarification of a correct answer (same fields but
            {clarification}).
        false_clarification: enriched TruthfulQA clarification of an incorrect answer (same fields,
            usually naming {best_answer}).
    """

    kind: Kind = "statements"
    path_or_name: str = ""
    count: int = 128
    config_name: str | None = None
    split: str = "train"
    text_field: str = "text"
    streaming: bool = True
    template: str = DEFAULT_TEMPLATE
    true_clarification: str = DEFAULT_TRUE_CLARIFICATION
    false_clarification: str = DEFAULT_FALSE_CLARIFICATION

    def __post_init__(self) -> None:
        if self.kind not in ("text", "hf", "statements", "truthfulqa"):
            raise ValueError(f"calibration kind must be text, hf, statements or truthfulqa, got {self.kind!r}")
        if self.count < 1:
            raise ValueError(f"calibration count must be at least 1, got {self.count} ({self.kind} source)")
        if self.kind in ("text", "hf", "truthfulqa") and not self.path_or_name:
            raise ValueError(f"a {self.kind} calibration source needs path_or_name")
        if self.kind == "text" and not Path(self.path_or_name).expanduser().exists():
            raise ValueError(f"calibration text {self.path_or_name!r}: no such file or folder")
        check_template(self.template, FIELDS | {"clarification"}, "template")
        check_template(self.true_clarification, FIELDS, "true_clarification")
        check_template(self.false_clarification, FIELDS, "false_clarification")


def read_text_paragraphs(path: str | Path) -> list[str]:
    """Paragraphs (separated by blank lines) of a text file, or of every .txt/.md file under a folder
    in path order."""
    path = Path(path).expanduser()
    files = sorted(p for p in path.rglob("*") if p.suffix in TEXT_SUFFIXES and p.is_file()) if path.is_dir() else [path]
    paragraphs = [p.strip() for f in files for p in re.split(r"\n\s*\n", f.read_text(encoding="utf-8"))]
    paragraphs = [p for p in paragraphs if p]
    if not paragraphs:
        raise StatementDataError(f"calibration text {path}: no text found (files read: {[str(f) for f in files]})")
    return paragraphs


def hub_paragraphs(source: CalibrationSource, seed: int) -> Iterator[str]:
    """Non-empty texts of a Hugging Face dataset, shuffled with the seed (streamed by default)."""
    try:
        import datasets

        data = datasets.load_dataset(source.path_or_name, source.config_name, split=source.split,
                                     streaming=source.streaming)
    except Exception as error:  # any failure (offline, unknown name) means the same to the user
        raise StatementDataError(f"calibration dataset {source.path_or_name!r} could not be loaded "
                                 f"({type(error).__name__}: {error}); offline, use kind text, statements or "
                                 "truthfulqa with a local file") from error
    data = data.shuffle(seed=seed, buffer_size=HUB_SHUFFLE_BUFFER) if source.streaming else data.shuffle(seed=seed)
    for record in data:
        if source.text_field not in record:
            raise StatementDataError(f"calibration dataset {source.path_or_name!r} has no field "
                                     f"{source.text_field!r}; fields: {sorted(record)}; set text_field")
        text = str(record[source.text_field]).strip()
        if text:
            yield text


def local_paragraphs(source: CalibrationSource, statements: pd.DataFrame | None) -> list[str]:
    """The paragraphs of a text, statements or truthfulqa source."""
    if source.kind == "text":
        return read_text_paragraphs(source.path_or_name)
    if source.kind == "truthfulqa":
        return enriched_paragraphs(load_truthfulqa(source.path_or_name), source.template,
                                   source.true_clarification, source.false_clarification)
    if statements is None or statements.empty:
        raise StatementDataError("a statements calibration source needs statements; pass statements=... "
                                 "(the StatementDataModule passes its training split)")
    return statements["statement"].tolist()


def separator_ids(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """The token that ends every paragraph: EOS, else SEP, else nothing."""
    for token_id in (tokenizer.eos_token_id, tokenizer.sep_token_id):
        if token_id is not None:
            return [int(token_id)]
    return []


def tokenize_paragraphs(paragraphs: list[str], tokenizer: PreTrainedTokenizerBase) -> list[list[int]]:
    """Each paragraph tokenised on its own, followed by the separator."""
    if not paragraphs:
        return []
    sep = separator_ids(tokenizer)
    encoded = tokenizer(paragraphs, add_special_tokens=False, verbose=False)["input_ids"]
    return [ids + sep for ids in encoded]


def shuffled_pieces(paragraphs: list[str], tokenizer: PreTrainedTokenizerBase, needed: int,
                    rng: np.random.Generator, what: str, window: int) -> Iterator[list[int]]:
    """Tokenised paragraphs in seeded random order, tokenised lazily in chunks until `needed` tokens
    are out; a new random pass starts (with a warning) when one pass is not enough. A source with fewer
    tokens than one `window` is an error: repeating it would only calibrate on copies of itself."""
    produced = 0
    for npass in itertools.count(1):
        if npass == 2:
            if produced == 0:
                raise StatementDataError(f"calibration source {what} gives no tokens")
            if produced < window:
                raise StatementDataError(
                    f"calibration source {what} has {produced} tokens, fewer than one window of {window}; add text "
                    f"to it or lower the window length (calibration_seqlen) to at most {produced}")
            warnings.warn(f"calibration source {what} has {produced} tokens but {needed} were asked for; "
                          "its text is repeated", stacklevel=3)
        order = rng.permutation(len(paragraphs))
        for start in range(0, len(order), TOKENIZE_CHUNK):
            for ids in tokenize_paragraphs([paragraphs[i] for i in order[start:start + TOKENIZE_CHUNK]], tokenizer):
                produced += len(ids)
                yield ids
            if produced >= needed:
                return


def pack_windows(pieces: Iterable[list[int]], seqlen: int, count: int, what: str) -> torch.Tensor:
    """Concatenate token lists and cut the stream into `count` windows of `seqlen` tokens, [count, seqlen]."""
    needed = seqlen * count
    stream = list(itertools.islice(itertools.chain.from_iterable(pieces), needed))
    if len(stream) < needed:
        raise StatementDataError(f"calibration source {what} ran out after {len(stream)} tokens; "
                                 f"{count} windows of {seqlen} need {needed}; lower count or seqlen")
    return torch.tensor(stream, dtype=torch.long).view(count, seqlen)


def source_windows(source: CalibrationSource, tokenizer: PreTrainedTokenizerBase, seqlen: int, seed: int,
                   statements: pd.DataFrame | None = None) -> torch.Tensor:
    """The `source.count` windows of one source, [count, seqlen]."""
    what = f"{source.kind} {source.path_or_name!r}" if source.path_or_name else source.kind
    if source.kind == "hf":
        pieces = (tokenize_paragraphs([p], tokenizer)[0] for p in hub_paragraphs(source, seed))
    else:
        pieces = shuffled_pieces(local_paragraphs(source, statements), tokenizer, seqlen * source.count,
                                 np.random.default_rng(seed), what, window=seqlen)
    return pack_windows(pieces, seqlen, source.count, what)


def build_calibration(sources: list[CalibrationSource], tokenizer: PreTrainedTokenizerBase, seqlen: int, seed: int,
                      statements: pd.DataFrame | None = None) -> torch.Tensor:
    """All sources' windows mixed in a seeded random order, LongTensor [sum of counts, seqlen].

    Args:
        sources: the calibration sources; source i is shuffled with seed + i.
        tokenizer: the model's tokenizer.
        seqlen: tokens per window.
        seed: seed of every random choice.
        statements: statement table of the "statements" sources.
    """
    if not sources:
        raise ValueError("no calibration sources given")
    if seqlen < 1:
        raise ValueError(f"calibration seqlen must be at least 1, got {seqlen}")
    windows = torch.cat([source_windows(s, tokenizer, seqlen, seed + i, statements) for i, s in enumerate(sources)])
    order = torch.randperm(len(windows), generator=torch.Generator().manual_seed(seed))
    return windows[order]


def calibration_batches(ids: torch.Tensor, batch_size: int) -> list[dict[str, torch.Tensor]]:
    """Batches of windows with `input_ids` and an all-ones `attention_mask` (the windows are full)."""
    if batch_size < 1:
        raise ValueError(f"calibration batch_size must be at least 1, got {batch_size}")
    return [{"input_ids": chunk, "attention_mask": torch.ones_like(chunk)} for chunk in ids.split(batch_size)]

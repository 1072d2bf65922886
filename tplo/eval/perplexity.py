"""Perplexity of a causal LM on held-out text, in fixed non-overlapping windows, padding excluded.

The text is tokenised once (the tokenizer's special tokens included, as SparseGPT and Wanda evaluate
WikiText) and cut into windows of `seqlen` tokens; the last, shorter window is right-padded and its
padding is masked out of both attention and loss. Every token but the first of each window is
predicted: `ppl = exp(sum NLL / number of predicted tokens)`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedTokenizerBase

WIKITEXT = {"wikitext": ("wikitext", "wikitext-2-raw-v1"), "wikitext2": ("wikitext", "wikitext-2-raw-v1"),
            "wikitext103": ("wikitext", "wikitext-103-raw-v1")}


def read_text(source: str) -> str:
    """The text of a local file, or the WikiText test split (`wikitext`, `wikitext2`, `wikitext103`; online)."""
    path = Path(source).expanduser()
    if path.is_file():
        return path.read_text(encoding="utf-8")
    if source in WIKITEXT:
        from datasets import load_dataset

        return "\n\n".join(load_dataset(*WIKITEXT[source], split="test")["text"])
    raise FileNotFoundError(f"perplexity text {source!r} is neither a file nor one of {sorted(WIKITEXT)}")


def make_windows(ids: torch.Tensor, seqlen: int, pad_id: int = 0, max_windows: int | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Cut token ids [T] into windows: (input_ids [W, seqlen], attention_mask [W, seqlen]); the last is right-padded."""
    if seqlen < 2:
        raise ValueError(f"seqlen must be at least 2, got {seqlen}")
    n_windows = math.ceil(ids.numel() / seqlen)
    if max_windows is not None:
        n_windows = min(n_windows, max_windows)
    ids = ids[: n_windows * seqlen]
    padded = torch.full((n_windows * seqlen,), pad_id, dtype=ids.dtype)
    padded[: ids.numel()] = ids
    mask = torch.zeros(n_windows * seqlen, dtype=torch.long)
    mask[: ids.numel()] = 1
    return padded.view(n_windows, seqlen), mask.view(n_windows, seqlen)


@torch.no_grad()
def window_nll(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, batch_size: int = 8,
               on_batch_done: Callable[[int], None] | None = None) -> tuple[float, int]:
    """(sum of next-token NLL, number of predicted tokens) over windows [W, S]; padded targets are excluded.

    `on_batch_done(n_batches)` is called after each batch with the total number of batches.
    """
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for start in range(0, input_ids.shape[0], batch_size):
        ids = input_ids[start : start + batch_size].to(device)
        mask = attention_mask[start : start + batch_size].to(device)
        logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
        targets = ids[:, 1:].masked_fill(mask[:, 1:] == 0, -100)
        for row in range(ids.shape[0]):  # fp32 log-softmax one window at a time: [S, vocab], not [B, S, vocab]
            total += F.cross_entropy(logits[row, :-1].float(), targets[row], ignore_index=-100, reduction="sum").item()
        count += int((targets != -100).sum())
        if on_batch_done is not None:
            on_batch_done(math.ceil(input_ids.shape[0] / batch_size))
    return total, count


def perplexity(model: nn.Module, tokenizer: PreTrainedTokenizerBase, text: str, seqlen: int = 2048,
               batch_size: int = 8, max_windows: int | None = None,
               on_batch_done: Callable[[int], None] | None = None) -> dict:
    """Perplexity of `model` on `text`: `{"perplexity", "nll", "tokens", "windows", "seqlen"}`."""
    ids = torch.tensor(tokenizer(text)["input_ids"])
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    input_ids, mask = make_windows(ids, seqlen, pad, max_windows)
    nll, tokens = window_nll(model, input_ids, mask, batch_size, on_batch_done)
    if tokens == 0:
        raise ValueError("the perplexity text is too short: no token to predict")
    return {"perplexity": math.exp(nll / tokens), "nll": nll / tokens, "tokens": tokens,
            "windows": int(input_ids.shape[0]), "seqlen": seqlen}

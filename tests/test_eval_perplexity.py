"""Perplexity: fixed windows, padding excluded from attention and loss."""

import math

import pytest
import torch
import torch.nn.functional as F

from tplo.eval.perplexity import make_windows, perplexity, read_text, window_nll
from tiny_tokenizers import char_tokenizer
from tiny_models import tiny_model


def test_windows_cut_and_pad_the_tail():
    ids, mask = make_windows(torch.arange(1, 11), seqlen=4, pad_id=0)
    assert ids.tolist() == [[1, 2, 3, 4], [5, 6, 7, 8], [9, 10, 0, 0]]
    assert mask.tolist() == [[1, 1, 1, 1], [1, 1, 1, 1], [1, 1, 0, 0]]
    ids, mask = make_windows(torch.arange(1, 11), seqlen=4, max_windows=2)
    assert ids.shape == (2, 4) and mask.all()


def test_padded_window_scores_like_the_unpadded_tail():
    model = tiny_model("llama")
    ids = torch.randint(3, 128, (11,), generator=torch.Generator().manual_seed(0))
    windows, mask = make_windows(ids, seqlen=4, pad_id=0)
    nll, count = window_nll(model, windows, mask, batch_size=2)
    assert count == 3 + 3 + 2  # three predicted tokens per full window, two in the 3-token tail
    expected = 0.0
    for piece in (ids[:4], ids[4:8], ids[8:]):
        logits = model(input_ids=piece[None]).logits[0, :-1]
        expected += F.cross_entropy(logits, piece[1:], reduction="sum").item()
    assert nll == pytest.approx(expected, rel=1e-5)
    # the padding token id must not matter
    assert window_nll(model, windows.masked_fill(mask == 0, 77), mask)[0] == pytest.approx(nll, rel=1e-5)


def test_perplexity_of_a_text_file(tmp_path):
    """Non-overlapping 32-token windows, the tail scored alone (no padding): exp of the mean next-token NLL."""
    model, tok = tiny_model("gpt2"), char_tokenizer()
    path = tmp_path / "heldout.txt"
    path.write_text("The quick brown fox jumps over the lazy dog.\n" * 3)
    text = read_text(str(path))
    assert text == path.read_text()
    result = perplexity(model, tok, text, seqlen=32, batch_size=2)
    ids = tok(text)["input_ids"]
    assert ids[0] == tok.bos_token_id and len(ids) % 32 != 0  # a short, padded last window
    total, count = 0.0, 0
    for start in range(0, len(ids), 32):
        window = torch.tensor(ids[start:start + 32])
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=window[None]).logits[0, :-1].double(), dim=-1)
        total -= float(logp.gather(1, window[1:, None]).sum())
        count += len(window) - 1
    assert result["windows"] == math.ceil(len(ids) / 32) == 5
    assert result["tokens"] == count == len(ids) - 5
    assert result["nll"] == pytest.approx(total / count, rel=1e-5)
    assert result["perplexity"] == pytest.approx(math.exp(total / count), rel=1e-5)
    assert result["seqlen"] == 32


def test_unknown_text_source_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="neither a file"):
        read_text(str(tmp_path / "missing.txt"))

"""Tiny tokenizers built offline inside the tests."""

from tokenizers import Regex, Tokenizer, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

WORDS = "The city of Paris is not in France Peru Lima . alpha beta gamma delta"


def causal_tokenizer(texts: list[str] | None = None, padding_side: str = "right",
                     **special: str) -> PreTrainedTokenizerFast:
    """A word-level tokenizer trained here, with no pad token (like GPT-2 and Llama); by default it
    has `<unk>` and `<eos>`, other special tokens can be given instead."""
    special = special or {"unk_token": "<unk>", "eos_token": "<eos>"}
    tokenizer = Tokenizer(models.WordLevel(unk_token=special.get("unk_token")))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.train_from_iterator(texts or [WORDS], trainers.WordLevelTrainer(special_tokens=list(special.values())))
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, padding_side=padding_side, **special)


def char_tokenizer() -> PreTrainedTokenizerFast:
    """One token per printable ASCII character (ids < 100, fits the tiny models' vocab of 128), BOS first."""
    specials = ["<pad>", "<s>", "</s>", "<unk>"]
    vocab = {t: i for i, t in enumerate(specials + ["\n"] + [chr(c) for c in range(32, 127)])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>")

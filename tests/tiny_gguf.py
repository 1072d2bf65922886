"""A tiny GGUF file written from a random Hugging Face model, for tests of the GGUF import path.

The file is what llama.cpp's converter would write for that model: float32 tensors under GGUF
names, full model metadata and a small SentencePiece-style ("llama") tokenizer whose vocabulary
covers `SAMPLE_TEXT`. Transformers reads it back with
`AutoModelForCausalLM.from_pretrained(folder, gguf_file=name)` (the same for `AutoTokenizer`).
"""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import torch
from transformers import Gemma3ForCausalLM, Gemma3TextConfig, PreTrainedModel

from tiny_models import COMMON, VOCAB, tiny_model

SAMPLE_TEXT = "The city of Paris is in France."
UNK_ID = 3  # pad, bos and eos ids are tiny_models.IDS: 0, 1, 2
SPECIALS = ("<pad>", "<s>", "</s>", "<unk>")
ALPHABET = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,!?'-:;()\""
WORDS = ("The", "▁The", "▁city", "▁of", "▁Paris", "▁is", "▁in", "▁France", "▁the", "▁and", "▁to")
GGUF_ARCHS = ("llama", "gemma3")  # tiny architectures this module writes; named as GGUF names them


def tiny_vocab() -> tuple[list[str], list[float], list[int]]:
    """`VOCAB` tokens with their scores and GGUF token types.

    Specials, then "▁" and single characters, then every prefix of `WORDS` (so BPE merges derived
    from the vocabulary reach whole words), then `<unusedN>` fillers. Scores fall with the index,
    which is the merge priority transformers rebuilds, as SentencePiece files do.
    """
    pieces = ["▁", *ALPHABET]
    for word in WORDS:
        pieces += [word[:end] for end in range(2, len(word) + 1) if word[:end] not in pieces]
    tokens = [*SPECIALS, *pieces]
    tokens += [f"<unused{i}>" for i in range(VOCAB - len(tokens))]
    assert len(tokens) == VOCAB, f"{len(tokens)} tokens do not fit a vocabulary of {VOCAB}"
    types = [gguf.TokenType.CONTROL] * len(SPECIALS)
    types[UNK_ID] = gguf.TokenType.UNKNOWN
    types += [gguf.TokenType.NORMAL] * len(pieces)
    types += [gguf.TokenType.UNUSED] * (VOCAB - len(types))
    return tokens, [-float(i) for i in range(VOCAB)], [int(t) for t in types]


def tiny_hf_model(arch: str, seed: int = 0) -> PreTrainedModel:
    """The random model `write_tiny_gguf` stores: tiny_models' llama, or a Gemma 3 text model like it."""
    if arch == "llama":
        return tiny_model("llama", seed)
    if arch == "gemma3":
        torch.manual_seed(seed)
        config = Gemma3TextConfig(**COMMON, num_key_value_heads=2, head_dim=8, sliding_window=16)
        return Gemma3ForCausalLM(config).eval()
    raise ValueError(f"no tiny GGUF for {arch!r}; choose from {GGUF_ARCHS}")


def _permute_qk(weight: torch.Tensor, n_head: int) -> torch.Tensor:
    """llama.cpp's row order for a llama q/k projection (rotary halves interleaved); transformers undoes it."""
    return weight.reshape(n_head, 2, weight.shape[0] // n_head // 2, -1).transpose(1, 2).reshape(weight.shape)


def _to_gguf(arch: str, name: str, weight: torch.Tensor, config) -> torch.Tensor:
    """One HF tensor as llama.cpp stores it."""
    if arch == "llama" and name.endswith("self_attn.q_proj.weight"):
        return _permute_qk(weight, config.num_attention_heads)
    if arch == "llama" and name.endswith("self_attn.k_proj.weight"):
        return _permute_qk(weight, config.num_key_value_heads)
    if arch == "gemma3" and name.endswith("norm.weight"):
        return weight + 1  # Gemma's RMSNorm scales by (1 + w); GGUF stores the factor itself
    return weight


def write_tiny_gguf(path: Path, arch: str = "llama", seed: int = 0,
                    architecture: str | None = None) -> dict[str, torch.Tensor]:
    """Write a tiny random `arch` model to `path` as a float32 GGUF; return the HF state dict it holds.

    `architecture` overrides `general.architecture` (and the metadata key prefix), e.g. "mamba9000"
    for a file transformers refuses. The returned dict has `lm_head.weight` even where it is tied.
    """
    model = tiny_hf_model(arch, seed)
    config = model.config
    state = {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}
    name_map = gguf.get_tensor_name_map(gguf.MODEL_ARCH[arch.upper()], config.num_hidden_layers)

    writer = gguf.GGUFWriter(str(path), architecture or arch)
    writer.add_name(f"tiny-{arch}")
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_vocab_size(config.vocab_size)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    if arch == "llama":
        writer.add_rope_dimension_count(config.head_dim)
        writer.add_rope_freq_base(config.rope_parameters["rope_theta"])
    else:
        writer.add_key_length(config.head_dim)
        writer.add_value_length(config.head_dim)
        writer.add_sliding_window(config.sliding_window)
        writer.add_rope_freq_base(config.rope_parameters["full_attention"]["rope_theta"])

    tokens, scores, types = tiny_vocab()
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_bos_token_id(config.bos_token_id)
    writer.add_eos_token_id(config.eos_token_id)
    writer.add_unk_token_id(UNK_ID)
    writer.add_pad_token_id(config.pad_token_id)
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(False)

    for name, tensor in state.items():
        if name == "lm_head.weight" and config.tie_word_embeddings:
            continue  # llama.cpp writes no `output.weight` for a tied head; its absence means tied
        base, suffix = name.rsplit(".", 1)
        gguf_name = f"{name_map.get_name(base)}.{suffix}"
        writer.add_tensor(gguf_name, _to_gguf(arch, name, tensor, config).numpy().astype(np.float32))

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return state

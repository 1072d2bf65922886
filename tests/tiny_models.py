"""Tiny random Hugging Face models built from configs, one per supported architecture."""

from __future__ import annotations

import torch
from transformers import (
    AutoModel, AutoModelForCausalLM, BertConfig, GemmaConfig, GPT2Config, GPTNeoXConfig, LlamaConfig,
    MistralConfig, OPTConfig, Phi3Config, Qwen2Config,
)

VOCAB = 128
IDS = dict(bos_token_id=1, eos_token_id=2, pad_token_id=0)
COMMON = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=4, **IDS,
              num_attention_heads=4, max_position_embeddings=64)

CONFIGS = {
    "llama": lambda: LlamaConfig(**COMMON, num_key_value_heads=2),
    "mistral": lambda: MistralConfig(**COMMON, num_key_value_heads=2),
    "qwen2": lambda: Qwen2Config(**COMMON, num_key_value_heads=2),
    "gemma": lambda: GemmaConfig(**COMMON, num_key_value_heads=2, head_dim=8),
    "phi3": lambda: Phi3Config(**COMMON, num_key_value_heads=2),
    "gpt2": lambda: GPT2Config(vocab_size=VOCAB, **IDS, n_embd=32, n_layer=4, n_head=4, n_positions=64),
    "opt": lambda: OPTConfig(vocab_size=VOCAB, **IDS, hidden_size=32, ffn_dim=64, num_hidden_layers=4,
                             num_attention_heads=4, max_position_embeddings=64, word_embed_proj_dim=32),
    "gpt_neox": lambda: GPTNeoXConfig(**COMMON),
    "bert": lambda: BertConfig(**COMMON),
}

# prunable linears per block and block list path, as each architecture defines them
LINEARS_PER_BLOCK = {"llama": 7, "mistral": 7, "qwen2": 7, "gemma": 7, "phi3": 4, "gpt2": 4, "opt": 6,
                     "gpt_neox": 4, "bert": 6}
BLOCK_PATHS = {"llama": "model.layers", "mistral": "model.layers", "qwen2": "model.layers",
               "gemma": "model.layers", "phi3": "model.layers", "gpt2": "transformer.h",
               "opt": "model.decoder.layers", "gpt_neox": "gpt_neox.layers", "bert": "encoder.layer"}


def tiny_model(arch: str, seed: int = 0) -> torch.nn.Module:
    """A 4-block random model of `arch` (causal LM head for decoders, bare encoder for BERT)."""
    torch.manual_seed(seed)
    config = CONFIGS[arch]()
    auto = AutoModel if arch == "bert" else AutoModelForCausalLM
    return auto.from_config(config, attn_implementation="eager").eval()


def token_batches(n_batches: int = 2, batch_size: int = 4, seq_len: int = 16, seed: int = 0,
                  pad_last: int = 0) -> list[dict[str, torch.Tensor]]:
    """Random token batches; the last `pad_last` positions of odd rows are padding (mask 0)."""
    g = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(n_batches):
        ids = torch.randint(3, VOCAB, (batch_size, seq_len), generator=g)
        mask = torch.ones_like(ids)
        if pad_last:
            mask[1::2, seq_len - pad_last:] = 0
            ids[1::2, seq_len - pad_last:] = 0
        batches.append({"input_ids": ids, "attention_mask": mask})
    return batches

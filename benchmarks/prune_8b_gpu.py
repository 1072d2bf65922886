"""TPLO on a random-weight model with Llama-3-8B's shapes, on one CUDA GPU.

    python benchmarks/prune_8b_gpu.py [--layers 32 --samples 128 --seqlen 2048 --batch-size 8]

32 blocks, hidden 4096, intermediate 14336, 8 KV heads, vocab 128256, bf16; calibration on random
tokens (128 x 2048 by default) plus 4 statement datasets; prints wall time and peak GPU memory as a
JSON object on the last line.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from tplo import PruneConfig, prune


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=32)
    parser.add_argument("--samples", type=int, default=128)
    parser.add_argument("--seqlen", type=int, default=2048)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--statements", type=int, default=1024, help="labelled statements over 4 datasets")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("this benchmark needs a CUDA GPU; see benchmarks/prune_speed.py for the CPU one")

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=args.layers,
                         num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=8192,
                         rope_theta=500000.0)
    with torch.device("cuda"):
        model = LlamaForCausalLM._from_config(config, torch_dtype=torch.bfloat16).eval()
    ids = torch.randint(0, config.vocab_size, (args.samples, args.seqlen), device="cuda")
    calibration = [{"input_ids": ids[i:i + args.batch_size]} for i in range(0, args.samples, args.batch_size)]
    statements = []
    for i in range(0, args.statements, 64):
        s = torch.randint(0, config.vocab_size, (64, 16), device="cuda")
        statements.append({"input_ids": s, "attention_mask": torch.ones_like(s), "labels": torch.arange(64) % 2,
                           "topics": [("cities", "facts")[i // 64 % 2]] * 64,
                           "negated": torch.full((64,), i // 128 % 2 == 1)})

    with torch.no_grad():
        model(**calibration[0], use_cache=False, logits_to_keep=1)
        torch.cuda.synchronize()
        start = time.perf_counter()
        for batch in calibration:
            model(**batch, use_cache=False, logits_to_keep=1)
        torch.cuda.synchronize()
        dense = time.perf_counter() - start

    torch.cuda.reset_peak_memory_stats()
    weights = torch.cuda.memory_allocated()
    start = time.perf_counter()
    report = prune(model, calibration, statements, PruneConfig(method="tplo"), progress=False)
    torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    print(json.dumps({
        "model": f"llama-3-8b shapes, {args.layers} blocks, bf16, random weights",
        "gpu": torch.cuda.get_device_name(),
        "calib": f"{args.samples} x {args.seqlen}",
        "dense_forward_s": round(dense, 2),
        "prune_s": round(elapsed, 2),
        "ratio": round(elapsed / dense, 3),
        "weights_gb": round(weights / 2**30, 2),
        "peak_gpu_gb": round(torch.cuda.max_memory_allocated() / 2**30, 2),
        "global_sparsity": round(report.global_sparsity, 4),
        "timings": {k: round(v, 2) for k, v in report.timings.items()},
    }))


if __name__ == "__main__":
    main()

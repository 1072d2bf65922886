"""Time TPLO pruning against one dense forward of the same calibration data.

    python benchmarks/prune_speed.py [--hidden 512 --layers 8 --vocab 4096 --samples 64 --seqlen 256]

Builds a random-weight Llama with realistic proportions, calibrates on random tokens, runs full TPLO
(two passes, with the statement pass) and prints one JSON object as its last line. Dense forward and
pruning are timed in `--repeats` pairs and the pair with the median ratio is reported, since a shared
CPU drifts.
"""

from __future__ import annotations

import argparse
import copy
import json
import resource
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from tplo import PruneConfig, PruneReport, prune


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--vocab", type=int, default=4096)
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--seqlen", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--statements", type=int, default=200,
                        help="labelled statements of 12 tokens over 4 datasets; 200 keeps the paper's ratio of "
                             "statement to calibration tokens (3,700 statements of ~11 tokens vs 128 x 2048)")
    parser.add_argument("--method", default="tplo")
    parser.add_argument("--repeats", type=int, default=3, help="paired timings; the median ratio is reported")
    parser.add_argument("--sequential", action=argparse.BooleanOptionalAction, default=True)
    args = parser.parse_args()

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=int(args.hidden * 8 / 3),
                         num_hidden_layers=args.layers, num_attention_heads=max(1, args.hidden // 64),
                         max_position_embeddings=max(2048, args.seqlen))
    model = LlamaForCausalLM(config).eval()
    ids = torch.randint(0, args.vocab, (args.samples, args.seqlen))
    calibration = [{"input_ids": ids[i:i + args.batch_size]} for i in range(0, args.samples, args.batch_size)]
    # statement batches hold about as many tokens as a calibration batch; 4 datasets (2 topics x negation)
    per_batch = max(4, args.batch_size * args.seqlen // 12)
    statements = []
    for start in range(0, args.statements, per_batch):
        n = min(per_batch, args.statements - start)
        row = torch.arange(start, start + n)
        s = torch.randint(0, args.vocab, (n, 12))
        statements.append({"input_ids": s, "attention_mask": torch.ones_like(s), "labels": row % 2,
                           "topics": [f"topic{int(r) // 2 % 2}" for r in row], "negated": row // 4 % 2 == 1})

    def dense_forward() -> float:
        start = time.perf_counter()
        with torch.no_grad():
            for batch in calibration:
                model(**batch, use_cache=False)
        return time.perf_counter() - start

    def pruning() -> tuple[float, PruneReport]:
        fresh = copy.deepcopy(model)
        start = time.perf_counter()
        report = prune(fresh, calibration, statements, PruneConfig(method=args.method, sequential=args.sequential),
                       progress=False)
        return time.perf_counter() - start, report

    dense_forward()  # warm-up
    # paired timings (a dense forward, then a pruning run) so that drift on a shared CPU hits both sides
    runs = []
    for _ in range(args.repeats):
        dense = dense_forward()
        elapsed, report = pruning()
        runs.append((elapsed / dense, dense, elapsed, report))
    ratio, dense, elapsed, report = sorted(runs, key=lambda r: r[0])[len(runs) // 2]
    print(json.dumps({
        "model": f"llama h{args.hidden} L{args.layers} V{args.vocab}",
        "params": sum(p.numel() for p in model.parameters()),
        "calib_tokens": args.samples * args.seqlen,
        "dense_forward_s": round(dense, 3),
        "prune_s": round(elapsed, 3),
        "ratio": round(ratio, 3),
        "ratios": [round(r[0], 3) for r in runs],
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3),
        "global_sparsity": round(report.global_sparsity, 4),
        "timings": {k: round(v, 3) for k, v in report.timings.items()},
    }))


if __name__ == "__main__":
    main()

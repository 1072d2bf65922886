"""Time TPLO pruning against one dense forward of the same calibration data.

    python benchmarks/prune_speed.py [--hidden 512 --layers 8 --vocab 4096 --samples 64 --seqlen 256]

Builds a random-weight Llama with realistic proportions, calibrates on random tokens, runs full TPLO
(two passes, with the statement pass) and prints one JSON object as its last line. Dense forward and
pruning are timed in `--repeats` pairs and the pair with the median ratio is reported, since a shared
CPU drifts.

`floor_ratio` is the lower bound of `ratio` for the two-pass algorithm: the bare block forwards it
cannot avoid (no statistics, no masks, no bookkeeping), timed in the same repeat, over the dense
forward. `ratio - floor_ratio` is tplo's own overhead.
"""

from __future__ import annotations

import argparse
import copy
import json
import resource
import time
from typing import Callable, TypeVar

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from tplo import PruneConfig, PruneReport, prune
from tplo.blocks import find_blocks
from tplo.input_stats import StopForward
from tplo.sequential import Recording, record_block_calls, run_block

T = TypeVar("T")


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
    parser.add_argument("--repeats", type=int, default=5, help="paired timings; the median ratio is reported")
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
        floor = block_forward_floor(model, calibration, statements, args.sequential)
        runs.append((elapsed / dense, dense, elapsed, report, floor / dense))
    ratio, dense, elapsed, report, _ = sorted(runs, key=lambda r: r[0])[len(runs) // 2]
    floor_ratios = [r[4] for r in runs]
    print(json.dumps({
        "model": f"llama h{args.hidden} L{args.layers} V{args.vocab}",
        "params": sum(p.numel() for p in model.parameters()),
        "calib_tokens": args.samples * args.seqlen,
        "dense_forward_s": round(dense, 3),
        "prune_s": round(elapsed, 3),
        "ratio": round(ratio, 3),
        "ratios": [round(r[0], 3) for r in runs],
        "floor_ratio": round(sorted(floor_ratios)[len(runs) // 2], 3),
        "floor_ratios": [round(r, 3) for r in floor_ratios],
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3),
        "global_sparsity": round(report.global_sparsity, 4),
        "timings": {k: round(v, 3) for k, v in report.timings.items()},
    }))


@torch.no_grad()
def block_forward_floor(model: LlamaForCausalLM, calibration: list[dict], statements: list[dict],
                        sequential: bool) -> float:
    """Seconds of the bare block forwards that TPLO cannot avoid.

    Pass 1 runs every block on the calibration data (the last one only up to its last linear's input)
    and on the statements; the sequential pass 2 runs every block but the first up to its last linear's
    input (the statistics) and every block but the last in full (the inputs of the next one).
    """
    _, blocks = find_blocks(model)
    cpu = torch.device("cpu")
    calib = record_block_calls(model, blocks, calibration, cpu)
    truth = record_block_calls(model, blocks, statements, cpu, calib.output)
    last, passes = len(blocks) - 1, 2 if sequential else 1
    total = 0.0
    for l, block in enumerate(blocks):
        hidden = calib.hidden
        full, calib.hidden = _timed(lambda: _forward(block, hidden, calib, l))
        handle = block.mlp.down_proj.register_forward_pre_hook(_stop)
        cut, _ = _timed(lambda: _forward(block, hidden, calib, l))
        handle.remove()
        truth_s, truth.hidden = _timed(lambda: _forward(block, truth.hidden, truth, l))
        total += truth_s + (passes * full if l < last else 0.0) + cut * ((l == last) + (sequential and l > 0))
    return total


def _forward(block: torch.nn.Module, hidden: list[torch.Tensor], rec: Recording, l: int) -> list[torch.Tensor]:
    out = []
    for b, h in enumerate(hidden):
        try:
            out.append(run_block(block, h, rec.calls[l][b]))
        except StopForward:
            pass
    return out


def _timed(fn: Callable[[], T]) -> tuple[float, T]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def _stop(*_) -> None:
    raise StopForward


if __name__ == "__main__":
    main()

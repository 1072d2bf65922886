"""Time TPLO pruning against one dense forward of the same calibration data.

    python benchmarks/prune_speed.py [--scorer wanda|sparsegpt] [--hidden 512 --layers 8 --vocab 4096
        --samples 64 --seqlen 256]

Builds a random-weight Llama with realistic proportions, calibrates on random tokens, runs full TPLO
(two passes, with the statement pass) and prints one JSON object as its last line. Dense forward and
pruning are timed in `--repeats` pairs and the pair with the median ratio is reported, since a shared
CPU drifts.

`floor_ratio` is the lower bound of `ratio` for the two-pass algorithm, timed in the same repeat, over the
dense forward: the bare block forwards it cannot avoid (no statistics, no masks, no bookkeeping) and, for
SparseGPT, the work of the algorithm itself (one Gram matrix product per distinct linear input and batch,
and the OBS sweep of every linear). `overhead = ratio / floor_ratio` is tplo's own cost on top. With
`--scorer sparsegpt` every repeat also prunes with Wanda, and the JSON gives both times and their ratio.
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
from tplo.blocks import find_blocks, prunable_linears, weight_rows
from tplo.input_stats import StopForward
from tplo.sequential import Recording, record_block_calls, run_block
from tplo.sparsegpt import sparsegpt_prune

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
    parser.add_argument("--scorer", default="wanda", choices=["wanda", "sparsegpt"])
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

    def pruning(scorer: str) -> tuple[float, PruneReport]:
        fresh = copy.deepcopy(model)
        start = time.perf_counter()
        config = PruneConfig(method=args.method, scorer=scorer, sequential=args.sequential)
        report = prune(fresh, calibration, statements, config, progress=False)
        return time.perf_counter() - start, report

    dense_forward()  # warm-up
    # paired timings (a dense forward, then a pruning run) so that drift on a shared CPU hits both sides
    runs = []
    for _ in range(args.repeats):
        dense = dense_forward()
        elapsed, report = pruning(args.scorer)
        floor = block_forward_floor(model, calibration, statements, args.sequential, args.scorer)
        wanda = pruning("wanda")[0] if args.scorer == "sparsegpt" else None
        runs.append((elapsed / dense, dense, elapsed, report, floor / dense, wanda))
    ratio, dense, elapsed, report, _, wanda_s = sorted(runs, key=lambda r: r[0])[len(runs) // 2]
    floor_ratios = [r[4] for r in runs]
    floor_ratio = sorted(floor_ratios)[len(runs) // 2]
    versus_wanda = {} if wanda_s is None else {
        "wanda_prune_s": round(wanda_s, 3), "sparsegpt_vs_wanda": round(elapsed / wanda_s, 3),
        "sparsegpt_vs_wanda_all": [round(r[2] / r[5], 3) for r in runs]}
    print(json.dumps({
        "model": f"llama h{args.hidden} L{args.layers} V{args.vocab}",
        "scorer": args.scorer,
        "params": sum(p.numel() for p in model.parameters()),
        "calib_tokens": args.samples * args.seqlen,
        "dense_forward_s": round(dense, 3),
        "prune_s": round(elapsed, 3),
        "ratio": round(ratio, 3),
        "ratios": [round(r[0], 3) for r in runs],
        "floor_ratio": round(floor_ratio, 3),
        "floor_ratios": [round(r, 3) for r in floor_ratios],
        "overhead": round(ratio / floor_ratio, 3),
        "overheads": [round(r[0] / r[4], 3) for r in runs],
        **versus_wanda,
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3),
        "global_sparsity": round(report.global_sparsity, 4),
        "timings": {k: round(v, 3) for k, v in report.timings.items()},
    }))


@torch.no_grad()
def block_forward_floor(model: LlamaForCausalLM, calibration: list[dict], statements: list[dict],
                        sequential: bool, scorer: str = "wanda") -> float:
    """Seconds of the work TPLO cannot avoid.

    Pass 1 runs every block on the calibration data (the last one only up to its last linear's input)
    and on the statements; the sequential pass 2 runs every block but the first up to its last linear's
    input (the statistics) and every block but the last in full (the inputs of the next one). SparseGPT
    adds, per block, the Gram matrix of every distinct linear input (fp32, one product per batch) and the
    OBS sweep of every linear.
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
        inputs = _InputCapture(prunable_linears(block)) if scorer == "sparsegpt" else None
        handle = block.mlp.down_proj.register_forward_pre_hook(_stop)
        cut, _ = _timed(lambda: _forward(block, hidden, calib, l))
        handle.remove()
        truth_s, truth.hidden = _timed(lambda: _forward(block, truth.hidden, truth, l))
        total += truth_s + (passes * full if l < last else 0.0) + cut * ((l == last) + (sequential and l > 0))
        if inputs is not None:
            inputs.remove()
            grams_s, hessians = _timed(inputs.hessians)
            sweeps_s, _ = _timed(lambda: [sparsegpt_prune(weight_rows(m), hessians[name], 0.5)
                                          for name, m in prunable_linears(block).items()])
            total += grams_s + sweeps_s
    return total


class _InputCapture:
    """Keeps every linear's input tensors (one list per distinct input) during a forward, to time the bare
    Gram products afterwards."""

    def __init__(self, linears: dict[str, torch.nn.Module]) -> None:
        self.inputs: dict[str, list[torch.Tensor]] = {}
        self.same: dict[str, str] = {}
        self.handles = [m.register_forward_pre_hook(self._hook(name)) for name, m in linears.items()]

    def _hook(self, name: str):
        def hook(_module, args):
            for other, seen in self.inputs.items():
                if seen[-1] is args[0]:
                    self.same[name] = other
                    return
            self.inputs.setdefault(name, []).append(args[0])
        return hook

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()

    def hessians(self) -> dict[str, torch.Tensor]:
        """H = (2/n) sum_t x_t x_t^T per linear in fp32: one Gram product per distinct input and batch."""
        out = {}
        for name, tensors in self.inputs.items():
            rows = [t.reshape(-1, t.shape[-1]).float() for t in tensors]
            out[name] = sum(r.T @ r for r in rows) * (2 / sum(len(r) for r in rows))
        return out | {name: out[other] for name, other in self.same.items()}


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

"""Peak memory of pruning as the model grows, and the bytes of mask state per pruned weight.

    python benchmarks/prune_memory.py [--blocks 2 4 8 --hidden 2048]

Each size runs in a fresh process (so peak RSS is its own): a random-weight Llama with realistic
layer shapes is pruned with TPLO. The peak should grow like the weights plus one block's working
set; the last line is one JSON object with `blocks`, `weight_gb`, `peak_rss_gb` and `slope` (least
squares of peak_rss_gb against weight_gb; target <= 1.3), plus the mask storage comparison.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys

import torch
from torch import nn


def build(blocks: int, hidden: int) -> nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=512, hidden_size=hidden, intermediate_size=int(hidden * 2.6875),
                         num_hidden_layers=blocks, num_attention_heads=hidden // 128, tie_word_embeddings=True)
    return LlamaForCausalLM(config).eval()


def child(blocks: int, hidden: int) -> None:
    from tplo import PruneConfig, prune

    model = build(blocks, hidden)
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    ids = torch.randint(0, 512, (8, 128))
    calibration = [{"input_ids": ids[i:i + 4]} for i in range(0, 8, 4)]
    statements = [{"input_ids": torch.randint(0, 512, (32, 12)), "labels": torch.arange(32) % 2,
                   "topics": ["a"] * 16 + ["b"] * 16}]
    prune(model, calibration, statements, PruneConfig(method="tplo"), progress=False)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"weight_gb": weight_bytes / 2**30, "peak_rss_gb": peak / 2**30}))


def mask_storage(hidden: int) -> dict[str, float]:
    """Bytes of mask state per pruned parameter: tplo's bool buffer vs torch.nn.utils.prune."""
    from torch.nn.utils import prune as torch_prune

    from tplo.masks import row_mask, set_mask

    ours, theirs = nn.Linear(hidden, hidden, bias=False), nn.Linear(hidden, hidden, bias=False)
    set_mask(ours, row_mask(ours.weight.abs(), 0.5))
    torch_prune.l1_unstructured(theirs, "weight", amount=0.5)
    n = hidden * hidden
    # torch's re-parametrisation keeps weight_orig and a float mask, and recomputes `weight` as a third copy
    extra = theirs.weight_orig.nbytes + theirs.weight_mask.nbytes + theirs.weight.nbytes - ours.weight.nbytes
    return {"tplo_mask_bytes_per_param": ours.weight_mask.nbytes / n,
            "torch_prune_extra_bytes_per_param": extra / n}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--blocks", type=int, nargs="+", default=[2, 4, 8])
    parser.add_argument("--hidden", type=int, default=2048)
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.hidden)
        return
    rows = []
    for n in args.blocks:
        out = subprocess.run([sys.executable, __file__, "--child", str(n), "--hidden", str(args.hidden)],
                             check=True, capture_output=True, text=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
        print(f"{n} blocks: weights {rows[-1]['weight_gb']:.3f} GB, peak RSS {rows[-1]['peak_rss_gb']:.3f} GB")
    x = torch.tensor([r["weight_gb"] for r in rows], dtype=torch.float64)
    y = torch.tensor([r["peak_rss_gb"] for r in rows], dtype=torch.float64)
    slope = float(((x - x.mean()) * (y - y.mean())).sum() / ((x - x.mean()) ** 2).sum())
    print(json.dumps({"blocks": args.blocks, "weight_gb": [round(v, 3) for v in x.tolist()],
                      "peak_rss_gb": [round(v, 3) for v in y.tolist()], "slope": round(slope, 3),
                      **mask_storage(args.hidden)}))


if __name__ == "__main__":
    main()

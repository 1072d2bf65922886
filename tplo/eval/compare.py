"""Compare runs: `python -m tplo.report RUN_DIR... [--out DIR] [--names a,b,...]`.

A run directory holds `pruning_report.json` (from pruning; absent for a dense model) and/or
`evaluation.json` (from `python -m tplo.evaluate`), directly or in a subfolder (the shallowest match
is used). Writes to `--out`:
- `report.md`: one row per run: method, scorer, global sparsity, LR and TTPD accuracy at the best layer
  and at the paper layer (mean ± std over repetitions), TruthfulQA MC1 and MC2, perplexity;
- `probe_accuracy.png`: per-layer LR (solid) and TTPD (dashed) accuracy of every run;
- `sparsity_allocation.png`: per-block achieved sparsity of every pruned run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

PRUNING_REPORT = "pruning_report.json"
EVALUATION = "evaluation.json"
MISSING = "–"


@dataclass(frozen=True)
class Run:
    """One run: its label and the two JSON documents (None when absent)."""

    name: str
    path: Path
    pruning: dict | None
    evaluation: dict | None


def find_file(run_dir: Path, name: str) -> Path | None:
    """`run_dir/name`, else the shallowest `name` below it (ties broken by path order), else None."""
    if (run_dir / name).is_file():
        return run_dir / name
    matches = sorted(run_dir.rglob(name), key=lambda p: (len(p.parts), str(p)))
    return matches[0] if matches else None


def load_run(run_dir: str | os.PathLike, name: str | None = None) -> Run:
    """Read a run directory; at least one of the two JSON files must be there."""
    path = Path(run_dir)
    if not path.is_dir():
        raise FileNotFoundError(f"run directory {path} does not exist")
    docs = {}
    for key, filename in (("pruning", PRUNING_REPORT), ("evaluation", EVALUATION)):
        found = find_file(path, filename)
        docs[key] = json.loads(found.read_text()) if found else None
    if docs["pruning"] is None and docs["evaluation"] is None:
        raise FileNotFoundError(f"{path} holds neither {PRUNING_REPORT} nor {EVALUATION}")
    return Run(name or path.resolve().name, path, docs["pruning"], docs["evaluation"])


def unique_names(paths: Sequence[str | os.PathLike]) -> list[str]:
    """Shortest trailing path parts that tell the runs apart ("a/model", "b/model")."""
    parts = [Path(p).resolve().parts for p in paths]
    depth = 1
    while True:
        names = ["/".join(p[-depth:]) for p in parts]
        if len(set(names)) == len(names) or depth >= max(map(len, parts)):
            return names
        depth += 1


def _accuracy(run: Run, kind: str, probe: str) -> str:
    lie = (run.evaluation or {}).get("lie_detection")
    entry = lie[kind].get(probe) if lie else None
    return MISSING if entry is None else f"{entry['mean']:.3f} ± {entry['std']:.3f} (L{entry['layer']})"


def _metric(run: Run, part: str, key: str, spec: str) -> str:
    block = (run.evaluation or {}).get(part)
    return MISSING if not block else format(block[key], spec)


def table_rows(runs: Sequence[Run]) -> list[dict[str, str]]:
    """One dict of formatted cells per run, keyed by column title."""
    rows = []
    for run in runs:
        pruning = run.pruning or {}
        rows.append({
            "run": run.name,
            "method": pruning.get("method", "dense"),
            "scorer": pruning.get("scorer", MISSING),
            "sparsity": f"{pruning.get('global_sparsity', 0.0):.1%}",
            "LR best": _accuracy(run, "best", "lr"),
            "TTPD best": _accuracy(run, "best", "ttpd"),
            "LR paper layer": _accuracy(run, "paper", "lr"),
            "TTPD paper layer": _accuracy(run, "paper", "ttpd"),
            "MC1": _metric(run, "truthfulqa", "mc1", ".3f"),
            "MC2": _metric(run, "truthfulqa", "mc2", ".3f"),
            "perplexity": _metric(run, "perplexity", "perplexity", ".2f"),
        })
    return rows


def markdown_table(runs: Sequence[Run]) -> str:
    """The comparison table in Markdown."""
    rows = table_rows(runs)
    header = list(rows[0])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row[c] for c in header) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def plot_probe_accuracy(runs: Sequence[Run], path: str | os.PathLike) -> Path:
    """Per-layer probe accuracy (mean ± std band) of every run with lie-detection results."""
    fig = Figure(figsize=(8, 4.5), layout="constrained")
    ax = fig.add_subplot()
    for run in runs:
        lie = (run.evaluation or {}).get("lie_detection")
        if not lie:
            continue
        color = None
        for probe, style in (("lr", "-"), ("ttpd", "--")):
            if probe not in lie:
                continue
            mean, std = lie[probe]["mean"], lie[probe]["std"]
            (line,) = ax.plot(lie["layers"], mean, style, marker="o", markersize=3, color=color,
                              label=f"{run.name} {probe.upper()}")
            color = line.get_color()
            ax.fill_between(lie["layers"], [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)],
                            color=color, alpha=0.15, linewidth=0)
    ax.axhline(0.5, color="grey", linewidth=0.8, linestyle=":")
    ax.set(xlabel="layer (0 = embeddings)", ylabel="held-out accuracy", title="Lie detection per layer")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(fontsize="small")
    fig.savefig(path, dpi=120)
    return Path(path)


def plot_sparsity(runs: Sequence[Run], path: str | os.PathLike) -> Path:
    """Per-block achieved sparsity of every pruned run."""
    fig = Figure(figsize=(8, 4.5), layout="constrained")
    ax = fig.add_subplot()
    for run in runs:
        if run.pruning is None:
            continue
        layers = run.pruning["layers"]
        ax.plot([l["index"] for l in layers], [l["achieved_sparsity"] for l in layers], marker="o", markersize=3,
                label=f"{run.name} ({run.pruning['method']}, {run.pruning['global_sparsity']:.0%})")
    ax.set(xlabel="block", ylabel="sparsity", title="Sparsity allocation per block")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(fontsize="small")
    fig.savefig(path, dpi=120)
    return Path(path)


def write_report(runs: Sequence[Run], out: str | os.PathLike) -> dict[str, Path]:
    """Write report.md and both figures into `out`; return their paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    table = out / "report.md"
    table.write_text("# Run comparison\n\n" + markdown_table(runs) + "\n![probe accuracy](probe_accuracy.png)\n\n"
                     "![sparsity allocation](sparsity_allocation.png)\n")
    return {"table": table, "probe_accuracy": plot_probe_accuracy(runs, out / "probe_accuracy.png"),
            "sparsity": plot_sparsity(runs, out / "sparsity_allocation.png")}


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point: read the runs, write the report, print the table."""
    p = argparse.ArgumentParser(prog="python -m tplo.report", description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", help="run directories")
    p.add_argument("--out", default="report", help="folder for report.md and the PNG figures")
    p.add_argument("--names", default=None, help="comma-separated labels, one per run (default: folder names)")
    args = p.parse_args(argv)
    names = args.names.split(",") if args.names else unique_names(args.runs)
    if len(names) != len(args.runs):
        p.error(f"--names has {len(names)} labels for {len(args.runs)} runs")
    try:
        runs = [load_run(r, n) for r, n in zip(args.runs, names)]
    except (FileNotFoundError, json.JSONDecodeError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    paths = write_report(runs, args.out)
    print(markdown_table(runs))
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())

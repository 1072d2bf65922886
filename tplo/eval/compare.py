"""Compare runs: `python -m tplo.eval.compare RUN_DIR... [--out DIR] [--names a,b,...]`.

A run directory holds `pruning_report.json` (from pruning; absent for a dense model), `evaluation.json`
(from `python -m tplo.eval`) and/or the TensorBoard events of a `train.py` run, directly or in a
subfolder (the shallowest match is used). Writes to `--out`:
- `report.md`: one row per run: method, scorer, global sparsity, LR and TTPD accuracy at the best layer
  and at the paper layer (mean ± std over repetitions), the best per-layer validation accuracy the
  training run logged, every lm-eval-harness task's accuracy (TruthfulQA MC1/MC2, ...), perplexity;
- `probe_accuracy.png`: per-layer accuracy of every run: LR (solid) and TTPD (dashed) from
  evaluation.json, or, for a run without one, the validation accuracy of the training run's probes
  (dotted, labelled "validation (TensorBoard)");
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
VAL_TAG = "val/acc/layer_{:02d}"
MISSING = "–"


@dataclass(frozen=True)
class Run:
    """One run: its label, the two JSON documents and the training run's per-layer validation accuracy
    (None when absent)."""

    name: str
    path: Path
    pruning: dict | None
    evaluation: dict | None
    validation: list[float] | None = None


def find_file(run_dir: Path, name: str) -> Path | None:
    """`run_dir/name`, else the shallowest `name` below it (ties broken by path order), else None."""
    if (run_dir / name).is_file():
        return run_dir / name
    matches = sorted(run_dir.rglob(name), key=lambda p: (len(p.parts), str(p)))
    return matches[0] if matches else None


def load_run(run_dir: str | os.PathLike, name: str | None = None) -> Run:
    """Read a run directory; it must hold one of the two JSON files or a training run's TensorBoard events."""
    path = Path(run_dir)
    if not path.is_dir():
        raise FileNotFoundError(f"run directory {path} does not exist")
    docs = {}
    for key, filename in (("pruning", PRUNING_REPORT), ("evaluation", EVALUATION)):
        found = find_file(path, filename)
        docs[key] = json.loads(found.read_text()) if found else None
    validation = validation_accuracy(path)
    if docs["pruning"] is None and docs["evaluation"] is None and validation is None:
        raise FileNotFoundError(f"{path} holds neither {PRUNING_REPORT} nor {EVALUATION} nor TensorBoard events "
                                f"with {VAL_TAG.format(0)}")
    return Run(name or path.resolve().name, path, docs["pruning"], docs["evaluation"], validation)


def validation_accuracy(run_dir: Path) -> list[float] | None:
    """The last logged `val/acc/layer_XX` of every layer, from the shallowest folder of TensorBoard events that
    has them (a `train.py` run), else None."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    folders = sorted({p.parent for p in run_dir.rglob("events.out.tfevents.*")}, key=lambda p: (len(p.parts), str(p)))
    for folder in folders:
        scalars = EventAccumulator(str(folder), size_guidance={"scalars": 0}).Reload()
        tags = set(scalars.Tags()["scalars"])
        layers = []
        while VAL_TAG.format(len(layers)) in tags:
            layers.append(scalars.Scalars(VAL_TAG.format(len(layers)))[-1].value)
        if layers:
            return layers
    return None


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


def _harness_results(run: Run) -> dict:
    """{task: metrics} of the run's lm-eval-harness block, empty when it has none."""
    return (((run.evaluation or {}).get("harness") or {}).get("results")) or {}


def _harness_tasks(runs: Sequence[Run]) -> list[str]:
    """Every lm-eval-harness task any run reports an accuracy for."""
    return sorted({task for run in runs for task, metrics in _harness_results(run).items() if "acc" in metrics})


def _harness_cell(run: Run, task: str) -> str:
    metrics = _harness_results(run).get(task, {})
    value, stderr = metrics.get("acc"), metrics.get("acc_stderr")
    if not isinstance(value, (int, float)):
        return MISSING
    return f"{value:.3f}" + (f" ± {stderr:.3f}" if isinstance(stderr, (int, float)) else "")


def _validation_cell(run: Run) -> str:
    if not run.validation:
        return MISSING
    best = max(range(len(run.validation)), key=run.validation.__getitem__)
    return f"{run.validation[best]:.3f} (L{best})"


def table_rows(runs: Sequence[Run]) -> list[dict[str, str]]:
    """One dict of formatted cells per run, keyed by column title."""
    tasks = _harness_tasks(runs)
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
            "val best (training)": _validation_cell(run),
            **{f"{task} acc": _harness_cell(run, task) for task in tasks},
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
            if run.validation:
                ax.plot(range(len(run.validation)), run.validation, ":", marker="o", markersize=3,
                        label=f"{run.name} validation (TensorBoard)")
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
    ax.set(xlabel="layer (0 = embeddings)", ylabel="held-out accuracy",
           title="Lie detection per layer (LR solid, TTPD dashed; training validation dotted)")
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
    p = argparse.ArgumentParser(prog="python -m tplo.eval.compare", description=__doc__.split("\n\n")[0])
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

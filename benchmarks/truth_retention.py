"""How much of a real causal LM's truth features survives pruning, per allocation method, scorer and sparsity.

    python benchmarks/truth_retention.py [--model gemma-3-270m] [--sparsities 0.5 0.7]
        [--methods uniform owl swl tplo tplo_blend truth_prefix] [--scorers wanda sparsegpt]
        [--calibration mix|statements|truthfulqa|text:PATH] [--windows 64] [--seqlen 128] [--seeds 3]
        [--out runs/truth_retention]

Offline, on Gemma 3 270M by default (a `.gguf` file, a folder or a hub id work too). The data:
- pruning statements: 30% of the subjects of tplo's generated topics. They give the truth separation (the
  paper's four datasets: cities, neg_cities, sp_en_trans, neg_sp_en_trans, `--truth-per-dataset` each) and
  the `statements` part of the calibration;
- evaluation statements: the other 70% of the generated subjects (six topics) and, when `../shared/data`
  exists, the published cities and Spanish-English sets (as topics `published_cities`, `published_sp_en_trans`),
  `--eval-per-topic` statements per topic, whole subjects, affirmative and negated rows aligned;
- calibration (`--calibration`): `mix` (the paper's mix as far as it exists offline: half enriched TruthfulQA,
  half generated statements), `statements`, `truthfulqa` (enriched TruthfulQA only) or `text:PATH` (any
  .txt/.md file or folder); enriched TruthfulQA uses half of TruthfulQA's questions;
- perplexity: the other half of TruthfulQA's questions with their best answers, in `--seqlen` windows
  (the Wanda/SparseGPT windowed definition, `tplo.eval.perplexity`).

Every run starts from the same dense weights. Lie detection per feature layer (0 = embeddings):
(a) within topic: a logistic probe (standardised, L2) trained on the held-out-subject split of each topic,
    `--seeds` random subject splits (70/30); `best_acc` is the best layer of the mean over topics, and its
    spread over the seeds is reported;
(b) cross topic: the paper's protocol (`tplo.eval.lie_detection`, reference protocol, LR and TTPD, leave one
    topic pair out, `--repeats` repetitions) on all evaluation topics; `cross_topic_acc` is LR at its best layer.
`recovery` = (acc - acc_uniform) / (acc_dense - acc_uniform), with uniform of the same scorer and sparsity (without
fine-tuning), for best_acc; `cross_topic_recovery` the same for cross_topic_acc. The reference protocol draws as many
statements per dataset as the smallest dataset has; the evaluation topics are of equal size, so its repetitions
coincide and cross_topic_acc has no spread of its own.

Writes `<out>/runs.jsonl` (each run as it finishes), `<out>/truth_retention.md` (the table),
`<out>/accuracy_per_layer.png` and prints the table and, last,
one JSON line: {"runs": [{method, scorer, sparsity, best_acc, best_acc_std, best_layer, mean_acc,
cross_topic_acc, cross_topic_ttpd, perplexity, prune_s, recovery, ...}], "settings": {...}}.
"""

from __future__ import annotations

import argparse
import copy
import inspect
import json
import time
from dataclasses import dataclass, field, fields
from pathlib import Path

import lightning as L

import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure
from rich.console import Console
from rich.table import Table
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from torch.utils.data import DataLoader

from tplo import PruneConfig, prune
from tplo.allocation import owl_ratios
from tplo.callbacks import TPLOCallback
from tplo.data.calibration import CalibrationSource, build_calibration, calibration_batches
from tplo.data.collate import sorted_statement_batches, statement_batches, tokenize_statements
from tplo.data.schema import dataset_name, dataset_names, typed_table
from tplo.data.splits import balanced_rows, random_split, random_split_rows, subsample, take
from tplo.data.statements import generate_statements, load_statements
from tplo.data.truthfulqa import load_truthfulqa
from tplo.eval.lie_detection import run_protocol
from tplo.eval.perplexity import perplexity
from tplo.features import extract_features
from tplo.loading import load_model, load_tokenizer
from tplo.scores import fisher_ratio
from tplo.truth_probe import TruthProbe

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
TRUTH_DATASETS = ["cities", "neg_cities", "sp_en_trans", "neg_sp_en_trans"]
METHODS = ["uniform", "owl", "swl", "tplo", "tplo_blend", "truth_prefix"]
EXPERIMENTS = ["feedback"]  # allocations tried here, given to prune as block_sparsities


@dataclass
class Data:
    """Everything the runs share: calibration batches, truth statements, evaluation batches and text."""

    calibration: list[dict]
    truth: list[dict]
    evaluation: pd.DataFrame
    evaluation_batches: list[dict]
    evaluation_order: list[int]  # the `evaluation` row of every statement of `evaluation_batches`, in batch order
    perplexity_text: str
    finetune: list[dict]
    sources: dict[str, str] = field(default_factory=dict)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    console = Console(stderr=True)
    with console.status(f"loading {args.model}"):
        dense = load_model(args.model, "float32").eval()
        tokenizer = load_tokenizer(args.model)
    data = build_data(args, tokenizer)
    console.print(f"calibration {len(data.calibration)} batches ({args.calibration}), truth statements "
                  f"{sum(len(b['labels']) for b in data.truth)}, evaluation statements {len(data.evaluation)} in "
                  f"{data.evaluation['topic'].nunique()} topics")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    progress_file = out / "runs.jsonl"  # one line per finished run, so a long benchmark keeps what it measured
    progress_file.write_text("")
    plans = [(None, "none")] * args.dense + [
        ((sparsity, method, scorer), finetune) for sparsity in args.sparsities
        for scorer in args.scorers for method in args.methods for finetune in args.finetunes]
    runs = []
    for plan, finetune in plans:
        config = None if plan is None else prune_config(*plan, runs)
        label = "dense" if plan is None else plan[1]
        runs.append(evaluate_run(dense, tokenizer, data, args, config, finetune, console, label))
        with progress_file.open("a") as handle:
            handle.write(json.dumps(runs[-1]) + "\n")
    add_recovery(runs)
    table = markdown_table(runs, args)
    (out / "truth_retention.md").write_text(table)
    plot_layers(runs, out / "accuracy_per_layer.png")
    console.print(rich_table(runs))
    print(table)
    result = {"runs": [summary(run) for run in runs], "settings": settings(args, data)}
    print(json.dumps(result))
    return result


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="gemma-3-270m", help="bundled name, .gguf file, folder or hub id")
    p.add_argument("--sparsities", type=float, nargs="*", default=[0.5, 0.7], help="none: the dense model only")
    p.add_argument("--methods", nargs="+", default=METHODS, choices=METHODS + EXPERIMENTS,
                   help="allocations; experiment: 'feedback' (measured: density to the blocks whose uniform "
                        "pruning lost the most truth separation)")
    p.add_argument("--scorers", nargs="+", default=["wanda"], choices=["magnitude", "wanda", "sparsegpt"])
    p.add_argument("--finetunes", nargs="+", default=["none"], choices=["none", "distill", "lm", "both"],
                   help="after pruning: no fine-tune, or a sparse fine-tune of TruthProbe with truth-feature "
                        "distillation, with the causal-LM loss, or both")
    p.add_argument("--finetune-steps", type=int, default=40, help="optimizer steps of each fine-tune")
    p.add_argument("--finetune-lr", type=float, default=5e-5, help="AdamW learning rate of the backbone")
    p.add_argument("--distill-weight", type=float, default=1.0, help="weight of the distillation loss")
    p.add_argument("--dense", type=int, default=1, choices=[0, 1], help="measure the dense model (1) or not (0)")
    p.add_argument("--calibration", default="mix", help="mix, statements, truthfulqa or text:PATH")
    p.add_argument("--windows", type=int, default=64, help="calibration windows")
    p.add_argument("--seqlen", type=int, default=128, help="tokens per calibration and perplexity window")
    p.add_argument("--truth-per-dataset", type=int, default=256, help="statements per truth-separation dataset")
    p.add_argument("--eval-per-topic", type=int, default=400, help="evaluation statements per topic (whole subjects)")
    p.add_argument("--ppl-windows", type=int, default=16, help="perplexity windows")
    p.add_argument("--seeds", type=int, default=3, help="subject splits of the within-topic probes")
    p.add_argument("--repeats", type=int, default=5, help="repetitions of the cross-topic protocol")
    p.add_argument("--batch-size", type=int, default=32, help="statements per forward pass")
    p.add_argument("--no-published", action="store_true", help="leave out ../shared/data even if it exists")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/truth_retention")
    return p.parse_args(argv)


def build_data(args: argparse.Namespace, tokenizer) -> Data:
    """Split the generated statements into pruning and evaluation subjects; build calibration and text."""
    generated = generate_statements(seed=args.seed)
    parts = random_split(generated, 0.0, 0.7, args.seed)  # "test" = evaluation subjects, "train" = pruning subjects
    pruning, evaluation = parts["train"], parts["test"]
    frames = [subsample(evaluation, args.eval_per_topic, args.seed)]
    published = SHARED.is_dir() and not args.no_published
    if published:
        shared = load_statements(str(SHARED))
        shared["topic"] = "published_" + shared["topic"]
        frames.append(subsample(shared, args.eval_per_topic, args.seed))
    evaluation = typed_table(pd.concat(frames, ignore_index=True))

    truth = take(pruning, np.flatnonzero(dataset_names(pruning).isin(TRUTH_DATASETS).to_numpy()))
    truth = take(truth, balanced_rows(truth, args.truth_per_dataset, args.seed))
    items = sorted(tokenize_statements(truth, tokenizer, 64), key=lambda item: len(item["input_ids"]))
    truth_batches = statement_batches(items, args.batch_size, tokenizer.pad_token_id, tokenizer.padding_side)

    questions = load_truthfulqa(str(SHARED / "TruthfulQA.csv")) if published else None
    held_out_text = ""
    sources = []
    if questions is not None:
        order = np.random.default_rng(args.seed).permutation(len(questions))
        half = len(order) // 2
        calib_questions, text_questions = questions.iloc[np.sort(order[:half])], questions.iloc[np.sort(order[half:])]
        held_out_text = "\n\n".join(f"{q} {a}" for q, a in zip(text_questions["question"], text_questions["best_answer"]))
    kind = args.calibration
    if kind in ("mix", "truthfulqa") and questions is None:
        raise SystemExit(f"--calibration {kind} needs {SHARED / 'TruthfulQA.csv'}; use statements or text:PATH")
    calibration_table = None
    if kind in ("mix", "truthfulqa"):
        path = Path(args.out) / "truthfulqa_calibration_half.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        write_truthfulqa(calib_questions, path)
        count = args.windows // 2 if kind == "mix" else args.windows
        sources.append(CalibrationSource(kind="truthfulqa", path_or_name=str(path), count=count))
    if kind in ("mix", "statements"):
        count = args.windows - sum(s.count for s in sources)
        sources.append(CalibrationSource(kind="statements", count=count))
        calibration_table = pruning
    if kind.startswith("text:"):
        sources.append(CalibrationSource(kind="text", path_or_name=kind[5:], count=args.windows))
    if not sources:
        raise SystemExit(f"unknown --calibration {kind!r}; use mix, statements, truthfulqa or text:PATH")
    ids = build_calibration(sources, tokenizer, args.seqlen, args.seed, statements=calibration_table)
    batches, order = sorted_statement_batches(tokenize_statements(evaluation, tokenizer, 64), args.batch_size,
                                              tokenizer.pad_token_id, tokenizer.padding_side)
    finetune = statement_batches(tokenize_statements(pruning, tokenizer, 64), args.batch_size, tokenizer.pad_token_id,
                                 tokenizer.padding_side)
    return Data(calibration_batches(ids, 8), truth_batches, evaluation, batches, order,
                held_out_text or " ".join(evaluation["statement"]), finetune,
                {"published": str(SHARED) if published else "", "calibration": kind})


def write_truthfulqa(frame: pd.DataFrame, path: Path) -> None:
    """A TruthfulQA table back in the CSV release format (answers joined with '; ')."""
    pd.DataFrame({"Question": frame["question"], "Best Answer": frame["best_answer"],
                  "Correct Answers": frame["correct_answers"].map("; ".join),
                  "Incorrect Answers": frame["incorrect_answers"].map("; ".join),
                  "Category": frame["category"]}).to_csv(path, index=False)


def evaluate_run(dense: torch.nn.Module, tokenizer, data: Data, args: argparse.Namespace,
                 config: PruneConfig | None, finetune: str, console: Console, label: str) -> dict:
    """Prune a copy of the dense model (unless `config` is None) and fine-tune it (unless `finetune` is "none"),
    then measure lie detection and perplexity; `label` names the allocation in the table."""
    method = label + ("" if finetune == "none" else f"+{finetune}")
    name = "dense" if config is None else f"{method} / {config.scorer} {config.sparsity:.0%}"
    run = {"method": method, "scorer": "-" if config is None else config.scorer,
           "sparsity": 0.0 if config is None else config.sparsity, "calibration": args.calibration,
           "finetune": finetune}
    if config is None:
        model = dense
    elif finetune == "none":
        model = copy.deepcopy(dense)
        start = time.perf_counter()
        report = prune(model, data.calibration, data.truth, config, progress=False)
        run["prune_s"] = round(time.perf_counter() - start, 2)
    else:
        model, report, run["finetune_s"] = finetuned(data, args, config, finetune)
        run["prune_s"] = round(report.timings["total_s"], 2)
    if config is not None:
        run["global_sparsity"] = round(report.global_sparsity, 4)
        run["block_sparsity"] = [round(layer.achieved_sparsity, 4) for layer in report.layers]
        run["pivot"] = report.pivot
    with console.status(f"{name}: features"):
        features = statement_features(model, data)
        run["truth_ratios"] = truth_ratios(model, data)
    with console.status(f"{name}: probes"):
        run.update(within_topic(features, data.evaluation, args.seeds, args.seed))
        run.update(cross_topic(features, data.evaluation, args.repeats, args.seed))
    with console.status(f"{name}: perplexity"):
        run["perplexity"] = round(perplexity(model, tokenizer, data.perplexity_text, args.seqlen, 8,
                                             args.ppl_windows)["perplexity"], 3)
    console.print(f"{name}: best layer {run['best_layer']} acc {run['best_acc']:.3f} ± {run['best_acc_std']:.3f}, "
                  f"cross-topic {run['cross_topic_acc']:.3f}, perplexity {run['perplexity']:.2f}")
    return run


def prune_config(sparsity: float, method: str, scorer: str, runs: list[dict]) -> PruneConfig:
    """The PruneConfig of a run; the 'feedback' experiment becomes block_sparsities computed from the truth
    separation the dense run and the uniform run of this sparsity and scorer measured at every block."""
    if method not in EXPERIMENTS:
        return PruneConfig(sparsity=sparsity, method=method, scorer=scorer)
    dense = next((r for r in runs if r["method"] == "dense"), None)
    uniform = next((r for r in runs if (r["method"], r["scorer"], r["sparsity"]) == ("uniform", scorer, sparsity)),
                   None)
    if dense is None or uniform is None:
        raise SystemExit("--methods feedback needs the dense run and --methods uniform before it")
    blocks = feedback_sparsities(dense["truth_ratios"], uniform["truth_ratios"], sparsity)
    return PruneConfig(sparsity=sparsity, scorer=scorer, method="uniform", block_sparsities=blocks.tolist())


def feedback_sparsities(dense: list[list[float]], pruned: list[list[float]], sparsity: float,
                        spread: float = 0.08) -> torch.Tensor:
    """Fisher ratios [L blocks][K datasets] at every block output, dense and after uniform pruning: the retention
    q_l = mean_k V'_kl / V_kl, the loss block l adds d_l = log q_(l-1) - log q_l (q_(-1) = 1), and densities
    (1 - S) + r_l - mean(r) with r scaled from d like OWL's ratios (over 2 * spread); as sparsities [L]."""
    q = (torch.tensor(pruned, dtype=torch.float64) / torch.tensor(dense, dtype=torch.float64)).mean(1)
    log_q = torch.cat([torch.zeros(1, dtype=torch.float64), q.log()])
    r = owl_ratios(log_q[:-1] - log_q[1:], spread)
    return (1 - ((1 - sparsity) + r - r.mean())).clamp(0.0, 0.99)


class BenchmarkData(L.LightningDataModule):
    """The benchmark's data as `TPLOCallback` and `TruthProbe` read it: the same calibration windows and truth
    statements as the runs without fine-tuning, and the pruning statements to fine-tune on."""

    def __init__(self, data: Data, seed: int) -> None:
        super().__init__()
        self.data, self.seed = data, seed

    def calibration_batches(self) -> list[dict]:
        return self.data.calibration

    def truth_batches(self) -> list[dict]:
        return self.data.truth

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.data.finetune, batch_size=None, shuffle=True,
                          generator=torch.Generator().manual_seed(self.seed))


def finetuned(data: Data, args: argparse.Namespace, config: PruneConfig, finetune: str):
    """(backbone, report, seconds): TruthProbe with TPLOCallback (the shipped path), `--finetune-steps` steps of
    sparse fine-tuning with distillation ("distill"), the causal-LM loss on the calibration windows ("lm"), or both."""
    L.seed_everything(args.seed)
    probe = TruthProbe(args.model, dtype="float32", finetune=True, finetune_lr=args.finetune_lr,
                       lm_loss_weight=1.0 if finetune in ("lm", "both") else 0.0,
                       distill_weight=args.distill_weight if finetune in ("distill", "both") else 0.0)
    callback = TPLOCallback(**{f.name: getattr(config, f.name) for f in fields(PruneConfig)
                               if f.name in TPLO_CALLBACK_KEYS}, export=False)
    trainer = L.Trainer(accelerator="cpu", max_steps=args.finetune_steps, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                        default_root_dir=Path(args.out) / "finetune", callbacks=[callback])
    start = time.perf_counter()
    trainer.fit(probe, datamodule=BenchmarkData(data, args.seed))
    return probe.backbone.eval(), callback.report, round(time.perf_counter() - start, 1)


TPLO_CALLBACK_KEYS = set(inspect.signature(TPLOCallback).parameters)


def truth_ratios(model: torch.nn.Module, data: Data) -> list[list[float]]:
    """Fisher ratio of the truth statements at every block output, [L blocks][K datasets]."""
    features = extract_features(model, data.truth)
    labels = torch.cat([b["labels"] for b in data.truth])
    names = [dataset_name(t, bool(n)) for b in data.truth for t, n in zip(b["topics"], b["negated"])]
    groups = [torch.tensor([i for i, n in enumerate(names) if n == name]) for name in sorted(set(names))]
    return [[fisher_ratio(features[rows, layer], labels[rows]) for rows in groups]
            for layer in range(1, features.shape[1])]


def statement_features(model: torch.nn.Module, data: Data) -> torch.Tensor:
    """Features [N, L + 1, H] of the evaluation statements in their table order."""
    features = extract_features(model, data.evaluation_batches)
    out = torch.empty_like(features)
    out[torch.tensor(data.evaluation_order)] = features
    return out


def within_topic(features: torch.Tensor, frame: pd.DataFrame, seeds: int, seed: int) -> dict:
    """Per-layer accuracy of a probe on held-out subjects of each topic, mean over topics, for several splits."""
    x, y, topics = features.numpy(), frame["label"].to_numpy(), frame["topic"].to_numpy()
    curves = []
    for s in range(seeds):
        split = random_split_rows(frame, 0.0, 0.3, seed + 100 + s)
        per_topic = []
        for topic in sorted(set(topics)):
            train = split["train"][topics[split["train"]] == topic]
            test = split["test"][topics[split["test"]] == topic]
            per_topic.append([probe_accuracy(x[train, l], y[train], x[test, l], y[test]) for l in range(x.shape[1])])
        curves.append(np.mean(per_topic, 0))
    curves = np.array(curves)  # [seeds, layers]
    mean = curves.mean(0)
    best = int(mean.argmax())
    return {"best_acc": round(float(mean[best]), 4), "best_acc_std": round(float(curves[:, best].std()), 4),
            "best_acc_range": [round(float(curves[:, best].min()), 4), round(float(curves[:, best].max()), 4)],
            "best_layer": best, "mean_acc": round(float(mean.mean()), 4),
            "layer_acc": [round(float(v), 4) for v in mean]}


def probe_accuracy(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray) -> float:
    probe = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=1000))
    return float((probe.fit(x_train, y_train).predict(x_test) == y_test).mean())


def cross_topic(features: torch.Tensor, frame: pd.DataFrame, repeats: int, seed: int) -> dict:
    """The paper's protocol (reference): leave one topic pair out, LR and TTPD, best layer of each."""
    result = run_protocol(features, frame["label"].to_numpy(), frame["topic"].tolist(), frame["negated"].to_numpy(),
                          repeats=repeats, seed=seed)
    lr, ttpd = result.overall("lr").mean(1), result.overall("ttpd").mean(1)
    return {"cross_topic_acc": round(float(lr.max()), 4), "cross_topic_layer": int(lr.argmax()),
            "cross_topic_ttpd": round(float(ttpd.max()), 4), "cross_topic_std": round(float(
                result.overall("lr")[int(lr.argmax())].std()), 4)}


def add_recovery(runs: list[dict]) -> None:
    """recovery = (acc - acc_uniform) / (acc_dense - acc_uniform) for best_acc and cross_topic_acc."""
    dense = next((r for r in runs if r["method"] == "dense"), None)
    for run in runs:
        if dense is None or run is dense:
            continue
        uniform = next((r for r in runs if r["method"] == "uniform" and r["scorer"] == run["scorer"]
                        and r["sparsity"] == run["sparsity"]), None)  # without fine-tuning
        for key, out in (("best_acc", "recovery"), ("cross_topic_acc", "cross_topic_recovery")):
            gap = None if uniform is None else dense[key] - uniform[key]
            run[out] = None if not gap else round((run[key] - uniform[key]) / gap, 3)


def summary(run: dict) -> dict:
    return {key: value for key, value in run.items() if key not in ("layer_acc", "truth_ratios")} | {
        "layer_acc": run["layer_acc"]}


def settings(args: argparse.Namespace, data: Data) -> dict:
    return {**{k: v for k, v in vars(args).items()}, "evaluation_statements": len(data.evaluation),
            "topics": sorted(set(data.evaluation["topic"])), **data.sources}


COLUMNS = [("method", "method", "{}"), ("scorer", "scorer", "{}"), ("sparsity", "sparsity", "{:.0%}"),
           ("best_acc", "best-layer acc", "{:.3f}"), ("best_acc_std", "± (seeds)", "{:.3f}"),
           ("best_layer", "best layer", "{}"), ("mean_acc", "mean acc", "{:.3f}"),
           ("cross_topic_acc", "cross-topic LR", "{:.3f}"), ("cross_topic_ttpd", "cross-topic TTPD", "{:.3f}"),
           ("recovery", "recovery", "{:+.2f}"), ("cross_topic_recovery", "cross-topic recovery", "{:+.2f}"),
           ("perplexity", "perplexity", "{:.2f}"), ("prune_s", "prune s", "{}")]


def cells(run: dict) -> list[str]:
    return ["-" if run.get(key) is None else fmt.format(run[key]) for key, _, fmt in COLUMNS]


def markdown_table(runs: list[dict], args: argparse.Namespace) -> str:
    lines = ["| " + " | ".join(title for _, title, _ in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(cells(run)) + " |" for run in runs]
    return "\n".join(lines) + "\n"


def rich_table(runs: list[dict]) -> Table:
    table = Table(title="truth retention")
    for _, title, _ in COLUMNS:
        table.add_column(title, justify="right")
    for run in runs:
        table.add_row(*cells(run))
    return table


def plot_layers(runs: list[dict], path: Path) -> None:
    """Within-topic accuracy per layer of every run, one panel per sparsity (dense in each)."""
    sparsities = sorted({r["sparsity"] for r in runs if r["sparsity"] > 0}) or [0.0]
    fig = Figure(figsize=(6 * len(sparsities), 4.5), layout="constrained")
    axes = fig.subplots(1, len(sparsities), squeeze=False)[0]
    for ax, sparsity in zip(axes, sparsities):
        for run in runs:
            if run["sparsity"] in (0.0, sparsity):
                label = "dense" if run["method"] == "dense" else f"{run['method']} / {run['scorer']}"
                ax.plot(run["layer_acc"], marker="o", markersize=3, label=label,
                        color="black" if run["method"] == "dense" else None)
        ax.set(title=f"{sparsity:.0%} sparsity", xlabel="layer (0 = embeddings)", ylabel="held-out-subject accuracy")
        ax.legend(fontsize="small")
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()

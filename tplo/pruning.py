"""`prune`: the whole TPLO pipeline on a Hugging Face model, without Lightning (DESIGN 3)."""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Mapping, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Iterator

import torch
from rich.progress import Progress
from torch import nn

from tplo.allocation import allocate
from tplo.blocks import find_blocks, prunable_linears, weight_rows
from tplo.config import PruneConfig
from tplo.features import pool, resolve_pooling
from tplo.input_stats import InputNorms, StopForward
from tplo.masks import nm_mask, row_mask, set_mask
from tplo.pruning_report import LayerReport, PruneReport
from tplo.scores import fisher_ratio, magnitude_score, outlier_ratio, truth_separation, wanda_score
from tplo.sequential import Recording, on_device, record_block_calls, run_block

Batch = Mapping[str, torch.Tensor]


@torch.no_grad()
def prune(
    model: nn.Module,
    calibration_batches: Sequence[Batch],
    statements: Sequence[Mapping] | None = None,
    config: PruneConfig | None = None,
    device: torch.device | str | None = None,
    progress: bool = True,
) -> PruneReport:
    """Prune the block linears of `model` in place to `config.sparsity` and return the report.

    Args:
        model: a Hugging Face model (causal LM or encoder); masks are left on it as bool buffers.
        calibration_batches: dicts with `input_ids` [B, T] and optionally `attention_mask` [B, T].
        statements: labelled statement batches (`input_ids`, `attention_mask`, `labels` [B], and
            `topics` list[str] / `negated` [B] to separate datasets); required by swl, tplo, tplo_blend,
            and used for the report's truth separation whenever given.
        config: the pruning settings.
        device: where blocks are computed; defaults to the model's device. With `config.offload`, only
            the block being processed is moved there.
        progress: show rich progress bars.

    The model is changed only once every mask is known: if anything fails on the way (bad data,
    NaN activations, an interrupt), its weights, buffers, hooks and `forward` methods are exactly as
    they were (without `offload` it may have been moved to `device`), so pruning it again is a clean run.
    """
    config = config or PruneConfig()
    if config.needs_statements and not statements:
        raise ValueError(f"method {config.method!r} needs labelled statements for the truth separation; "
                         "pass statements=... or use method 'owl' or 'uniform'.")
    if not calibration_batches or any("input_ids" not in b for b in calibration_batches):
        raise ValueError("calibration_batches must be a non-empty list of dicts with input_ids [B, T].")
    datasets = _dataset_index(statements) if statements else None
    path, blocks = find_blocks(model, config.blocks)
    config.check_blocks(len(blocks))
    linears = [prunable_linears(b) for b in blocks]
    params = torch.tensor([sum(m.weight.numel() for m in lin.values()) for lin in linears])
    home = next(model.parameters()).device
    device = torch.device(device) if device is not None else home
    timings: dict[str, float] = {}
    start = time.perf_counter()
    was_training = model.training
    model.eval()
    try:
        with _placed(model, blocks, device, config.offload), _progress(progress) as bar:
            dense = _dense_pass(model, blocks, linears, calibration_batches, statements, datasets, config,
                                device, bar)
            timings["statistics_s"] = time.perf_counter() - start
            targets, pivot = allocate(config, params, torch.tensor(dense.outliers), dense.separation)
            t = time.perf_counter()
            if config.sequential and config.scorer == "wanda":
                keeps = _sequential_pass(model, blocks, linears, calibration_batches, dense, targets, config,
                                         device, bar)
            else:
                keeps = [_block_masks(linears[l], dense.stats[l], float(targets[l]), config)
                         for l in range(len(blocks))]
            achieved = [_apply_block_masks(linears[l], keeps[l]) for l in range(len(blocks))]
            timings["pruning_s"] = time.perf_counter() - t
    finally:
        model.train(was_training)
    timings["total_s"] = time.perf_counter() - start
    pruned = sum(a * int(n) for a, n in zip(achieved, params))
    layers = [
        LayerReport(index=l, params=int(params[l]), outlier_ratio=dense.outliers[l],
                    truth_separation=None if dense.separation is None else float(dense.separation[l]),
                    target_sparsity=float(targets[l]), achieved_sparsity=achieved[l])
        for l in range(len(blocks))
    ]
    return PruneReport(method=config.method, scorer=config.scorer, structure=config.structure,
                       sparsity=config.sparsity, owl_m=config.owl_m, owl_lambda=config.owl_lambda, beta=config.beta,
                       pivot=pivot, global_sparsity=pruned / int(params.sum()), layers=layers, timings=timings,
                       blocks=path)


@dataclass
class DenseStatistics:
    """What pass 1 learns on the dense model."""

    stats: list[dict[str, torch.Tensor]]
    outliers: list[float]
    separation: torch.Tensor | None
    returns_tuple: bool


def _dense_pass(model, blocks, linears, calibration_batches, statements, datasets, config, device,
                bar) -> DenseStatistics:
    """Pass 1 on the dense model: input norms, outlier ratios D_l and Fisher ratios per dataset."""
    calib = record_block_calls(model, blocks, calibration_batches, device)
    truth = record_block_calls(model, blocks, statements, device, calib.returns_tuple) if datasets else None
    pooling = resolve_pooling(model, config.pooling)
    stats, outliers, ratios = [], [], []
    task = bar.add_task("statistics (dense)", total=len(blocks)) if bar else None
    for l, block in enumerate(blocks):
        with _computing(block, device, config.offload):
            if l == 0 or l < len(blocks) - 1:
                norms = InputNorms(linears[l])
                try:
                    calib.hidden = _run_all(block, calib, l, norms)
                finally:
                    norms.remove()
            else:
                norms = _statistics_only(block, linears[l], calib, l, stop_after=list(stats[-1])[-1])
            _check_finite(norms.sq_norms, l)
            stats.append(norms.sq_norms)
            scores = [wanda_score(weight_rows(m), norms.sq_norms[n]) for n, m in linears[l].items()]
            outliers.append(outlier_ratio(scores, config.owl_m))
            del scores
            if truth is not None:
                truth.hidden = _run_all(block, truth, l)
                features = torch.cat([pool(h, m, pooling) for h, m in zip(truth.hidden, truth.token_masks)]).cpu()
                ratios.append([fisher_ratio(features[idx], labels) for idx, labels in datasets])
        if bar:
            bar.advance(task)
    separation = truth_separation(torch.tensor(ratios).T) if ratios else None
    return DenseStatistics(stats, outliers, separation, calib.returns_tuple)


def _sequential_pass(model, blocks, linears, calibration_batches, dense: DenseStatistics, targets, config, device,
                     bar) -> list[dict[str, torch.Tensor]]:
    """Pass 2: the masks block by block, each block's statistics taken on the outputs of the pruned ones.

    Each block runs pruned only while it computes the next block's inputs; its dense weights are then put
    back, so the model is untouched until `prune` applies all masks at the end.
    """
    calib = record_block_calls(model, blocks, calibration_batches, device, dense.returns_tuple)
    keeps = []
    task = bar.add_task("pruning (sequential)", total=len(blocks)) if bar else None
    last = len(blocks) - 1
    for l, block in enumerate(blocks):
        with _computing(block, device, config.offload):
            if l == 0:
                stats = dense.stats[0]
            else:
                stats = _statistics_only(block, linears[l], calib, l, stop_after=list(dense.stats[l])[-1]).sq_norms
                _check_finite(stats, l)
            keep = _block_masks(linears[l], stats, float(targets[l]), config)
            if l < last:
                with _pruned_for_now(linears[l], keep):
                    calib.hidden = _run_all(block, calib, l)
        keeps.append({name: mask.to(linears[l][name].weight.device) for name, mask in keep.items()})
        if bar:
            bar.advance(task)
    return keeps


def _statistics_only(block: nn.Module, linears: dict[str, nn.Module], rec: Recording, l: int,
                     stop_after: str) -> InputNorms:
    """Input norms of block `l` on every recorded batch, each forward cut short after `stop_after`."""
    norms = InputNorms(linears, stop_after=stop_after)
    try:
        for b, hidden in enumerate(rec.hidden):
            norms.new_batch(rec.token_masks[b])
            try:
                run_block(block, hidden, rec.calls[l][b])
            except StopForward:
                pass
    finally:
        norms.remove()
    return norms


def _run_all(block: nn.Module, rec: Recording, l: int, norms: InputNorms | None = None) -> list[torch.Tensor]:
    """Block `l` on every recorded batch; returns the new hidden states."""
    out = []
    for b, hidden in enumerate(rec.hidden):
        if norms is not None:
            norms.new_batch(rec.token_masks[b])
        out.append(run_block(block, hidden, rec.calls[l][b]))
    return out


def _block_masks(linears: dict[str, nn.Module], stats: dict[str, torch.Tensor], sparsity: float,
                 config: PruneConfig) -> dict[str, torch.Tensor]:
    """Keep-masks [d_out, d_in] of every linear of one block."""
    keeps = {}
    for name, module in linears.items():
        weight = weight_rows(module)
        scores = wanda_score(weight, stats[name]) if config.scorer == "wanda" else magnitude_score(weight)
        keeps[name] = nm_mask(scores, *config.nm) if config.nm else row_mask(scores, sparsity)
    return keeps


def _apply_block_masks(linears: dict[str, nn.Module], keeps: dict[str, torch.Tensor]) -> float:
    """Register the masks of one block and zero its pruned weights; returns the block's achieved sparsity."""
    for name, module in linears.items():
        set_mask(module, keeps[name])
    pruned = sum(int((~keep).sum()) for keep in keeps.values())
    return pruned / sum(keep.numel() for keep in keeps.values())


@contextmanager
def _pruned_for_now(linears: dict[str, nn.Module], keeps: dict[str, torch.Tensor]) -> Iterator[None]:
    """Zero the pruned weights of one block for the duration, then restore their dense values exactly."""
    saved: dict[str, torch.Tensor] = {}
    try:
        for name, module in linears.items():
            saved[name] = module.weight.detach().clone()
            weight_rows(module).masked_fill_(~keeps[name], 0)
        yield
    finally:
        for name, dense in saved.items():
            linears[name].weight.copy_(dense)


def _dataset_index(statements: Sequence[Mapping]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Row indices and labels of each statement dataset (topic, negated) over all batches."""
    rows: dict[str, list[int]] = defaultdict(list)
    labels: list[int] = []
    for batch in statements:
        n = len(batch["labels"])
        topics = batch.get("topics") or ["statements"] * n
        negated = batch.get("negated")
        for i in range(n):
            neg = bool(negated[i]) if negated is not None else False
            rows[("neg_" if neg else "") + topics[i]].append(len(labels))
            labels.append(int(batch["labels"][i]))
    all_labels = torch.tensor(labels)
    index = []
    for name, idx in sorted(rows.items()):
        counts = torch.bincount(all_labels[idx], minlength=2)
        if counts.min() < 2 or len(counts) > 2:
            raise ValueError(f"statement dataset {name!r} has {int(counts[1])} true and {int(counts[0])} false "
                             "statements (labels must be 0/1); the truth separation needs at least two of each.")
        index.append((torch.tensor(idx), all_labels[idx]))
    return index


def _check_finite(sq_norms: dict[str, torch.Tensor], block: int) -> None:
    for name, sq in sq_norms.items():
        if not bool(torch.isfinite(sq).all()):
            raise FloatingPointError(
                f"non-finite activations (NaN or inf) at the input of block {block}, linear {name!r}. "
                "Check the calibration data and the model dtype (fp16 overflows easily; try bfloat16 or float32)."
            )


@contextmanager
def _computing(block: nn.Module, device: torch.device, offload: bool) -> Iterator[None]:
    with on_device(block, device) if offload else nullcontext():
        yield


@contextmanager
def _placed(model: nn.Module, blocks: nn.ModuleList, device: torch.device, offload: bool) -> Iterator[None]:
    """Put the model on `device`; with `offload`, everything but the blocks, moved back afterwards."""
    if not offload:
        model.to(device)
        yield
        return
    inside_blocks = set(blocks.modules())
    others = [m for m in model.modules() if m not in inside_blocks]
    home = next(p for m in others for p in m.parameters(recurse=False)).device
    for module in others:
        module._apply(lambda t: t.to(device), recurse=False)
    try:
        yield
    finally:
        for module in others:
            module._apply(lambda t: t.to(home), recurse=False)


@contextmanager
def _progress(enabled: bool) -> Iterator[Progress | None]:
    if not enabled:
        yield None
        return
    with Progress(transient=False) as bar:
        yield bar

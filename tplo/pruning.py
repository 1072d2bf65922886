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
from tplo.blocks import find_blocks, prunable_linears, stored_weight, weight_rows
from tplo.config import PruneConfig
from tplo.features import pool, resolve_pooling
from tplo.input_stats import InputStats, StopForward
from tplo.masks import nm_mask, row_mask, set_mask
from tplo.pruning_report import LayerReport, PruneReport
from tplo.scores import fisher_ratio, magnitude_score, outlier_ratio, truth_separation, wanda_score
from tplo.sparsegpt import sparsegpt_prune
from tplo.sequential import BlockOutput, Recording, on_device, record_block_calls, run_block

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
            `topics` list[str] / `negated` [B] to separate datasets); required by swl, tplo, tplo_blend and
            truth_prefix, and used for the report's truth separation whenever given.
        config: the pruning settings.
        device: where blocks are computed; defaults to the model's device. With `config.offload`, only
            the block being processed is moved there. A model dispatched by accelerate (`device_map`,
            `cpu_offload`) keeps its placement and hooks; weights accelerate offloads to CPU are read and
            pruned where accelerate keeps them.
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
    dispatched = any(hasattr(module, "_hf_hook") for module in model.modules())
    if dispatched and config.offload:
        raise ValueError("the model is dispatched by accelerate (device_map or cpu_offload), which already decides "
                         "where each block runs; set offload: false (accelerate's placement is kept).")
    device = torch.device(device) if device is not None else _input_device(model)
    timings: dict[str, float] = {}
    start = time.perf_counter()
    modes = {module: module.training for module in model.modules()}
    model.eval()
    try:
        with _placed(model, blocks, device, config.offload, dispatched), _progress(progress) as bar:
            dense = _dense_pass(model, blocks, linears, calibration_batches, statements, datasets, config,
                                device, bar)
            timings["statistics_s"] = time.perf_counter() - start
            targets, pivot = allocate(config, params, torch.tensor(dense.outliers, dtype=torch.float64),
                                     dense.separation)
            t = time.perf_counter()
            if config.sequential and config.scorer != "magnitude":
                pruned_blocks = _sequential_pass(model, blocks, linears, calibration_batches, dense, targets, config,
                                                 device, bar)
            else:
                pruned_blocks = [_prune_block(linears[l], dense.stats[l], float(targets[l]), config, f"block {l}")
                                 for l in range(len(blocks))]
            achieved = [_commit(linears[l], pruned_blocks[l]) for l in range(len(blocks))]
            timings["pruning_s"] = time.perf_counter() - t
    finally:
        for module, training in modes.items():
            module.training = training
    timings["total_s"] = time.perf_counter() - start
    pruned = sum(a * int(n) for a, n in zip(achieved, params))
    layers = [
        LayerReport(index=l, params=int(params[l]), outlier_ratio=dense.outliers[l],
                    truth_separation=None if dense.separation is None else float(dense.separation[l]),
                    target_sparsity=float(targets[l]), achieved_sparsity=achieved[l])
        for l in range(len(blocks))
    ]
    method = config.method if config.block_sparsities is None else "block_sparsities"
    return PruneReport(method=method, scorer=config.scorer, structure=config.structure,
                       sparsity=config.sparsity, owl_m=config.owl_m, owl_lambda=config.owl_lambda, beta=config.beta,
                       pivot=pivot, global_sparsity=pruned / int(params.sum()), layers=layers, timings=timings,
                       blocks=path,
                       truth_statements={name: len(idx) for name, (idx, _) in datasets.items()} if datasets else None,
                       sparsegpt=_sparsegpt_summary(config, pruned_blocks))


@dataclass
class DenseStatistics:
    """What pass 1 learns on the dense model (with SparseGPT, block 0's statistics include its Gram matrices)."""

    stats: list[InputStats]
    outliers: list[float]
    separation: torch.Tensor | None
    output: BlockOutput


@dataclass
class PrunedBlock:
    """The outcome for one block: keep-masks [d_out, d_in] per linear and, with SparseGPT, the reconstructed
    weights [d_out, d_in] (kept on the CPU until `prune` commits them) and any raised dampening."""

    keeps: dict[str, torch.Tensor]
    weights: dict[str, torch.Tensor] | None = None
    damping: dict[str, float] | None = None


def _dense_pass(model, blocks, linears, calibration_batches, statements, datasets, config, device,
                bar) -> DenseStatistics:
    """Pass 1 on the dense model: input norms, outlier ratios D_l and Fisher ratios per dataset."""
    calib = record_block_calls(model, blocks, calibration_batches, device)
    truth = record_block_calls(model, blocks, statements, device, calib.output) if datasets else None
    pooling = resolve_pooling(model, config.pooling)
    stats, outliers, ratios = [], [], []
    task = bar.add_task("statistics (dense)", total=len(blocks)) if bar else None
    for l, block in enumerate(blocks):
        with _computing(block, device, config.offload):
            if l == 0 or l < len(blocks) - 1:
                norms = InputStats(linears[l], gram=l == 0 and config.scorer == "sparsegpt")
                try:
                    calib.hidden = _run_all(block, calib, l, norms)
                finally:
                    norms.remove()
            else:
                norms = _statistics_only(block, linears[l], calib, l, stop_after=list(stats[-1].sq_norms)[-1])
            _check_finite(norms.sq_norms, l)
            stats.append(norms)
            scores = [wanda_score(weight_rows(m), norms.sq_norms[n]) for n, m in linears[l].items()]
            outliers.append(outlier_ratio(scores, config.owl_m))
            del scores
            if truth is not None:
                truth.hidden = _run_all(block, truth, l)
                features = torch.cat([pool(h, m, pooling) for h, m in zip(truth.hidden, truth.token_masks)]).cpu()
                ratios.append([fisher_ratio(features[idx], labels) for idx, labels in datasets.values()])
        if bar:
            bar.advance(task)
    separation = truth_separation(torch.tensor(ratios).T) if ratios else None
    return DenseStatistics(stats, outliers, separation, calib.output)


def _sequential_pass(model, blocks, linears, calibration_batches, dense: DenseStatistics, targets, config, device,
                     bar) -> list[PrunedBlock]:
    """Pass 2: prune block by block, each block's statistics taken on the outputs of the already pruned ones.

    Each block runs pruned (with SparseGPT: reconstructed) only while it computes the next block's inputs; its
    dense weights are then put back, so the model is untouched until `prune` commits every block at the end.
    """
    calib = record_block_calls(model, blocks, calibration_batches, device, dense.output)
    gram = config.scorer == "sparsegpt"
    pruned_blocks = []
    task = bar.add_task(f"pruning ({config.scorer}, sequential)", total=len(blocks)) if bar else None
    last = len(blocks) - 1
    for l, block in enumerate(blocks):
        with _computing(block, device, config.offload):
            if l == 0:
                stats = dense.stats[0]
            else:
                stats = _statistics_only(block, linears[l], calib, l, stop_after=list(dense.stats[l].sq_norms)[-1],
                                         gram=gram)
                _check_finite(stats.sq_norms, l)
            pruned = _prune_block(linears[l], stats, float(targets[l]), config, f"block {l}")
            del stats
            if l < last:
                with _pruned_for_now(linears[l], pruned):
                    calib.hidden = _run_all(block, calib, l)
        pruned_blocks.append(_stored(pruned, linears[l]))
        if bar:
            bar.advance(task)
    return pruned_blocks


def _statistics_only(block: nn.Module, linears: dict[str, nn.Module], rec: Recording, l: int,
                     stop_after: str, gram: bool = False) -> InputStats:
    """Input statistics of block `l` on every recorded batch, each forward cut short after `stop_after`."""
    stats = InputStats(linears, stop_after=stop_after, gram=gram)
    try:
        for b, hidden in enumerate(rec.hidden):
            stats.new_batch(rec.token_masks[b])
            try:
                run_block(block, hidden, rec.calls[l][b])
            except StopForward:
                pass
    finally:
        stats.remove()
    return stats


def _run_all(block: nn.Module, rec: Recording, l: int, norms: InputStats | None = None) -> list[torch.Tensor]:
    """Block `l` on every recorded batch; returns the new hidden states."""
    out = []
    for b, hidden in enumerate(rec.hidden):
        if norms is not None:
            norms.new_batch(rec.token_masks[b])
        out.append(run_block(block, hidden, rec.calls[l][b]))
    return out


def _prune_block(linears: dict[str, nn.Module], stats: InputStats, sparsity: float, config: PruneConfig,
                 where: str) -> PrunedBlock:
    """Masks (and with SparseGPT the reconstructed weights) of every linear of one block."""
    if config.scorer == "sparsegpt":
        return _sparsegpt_block(linears, stats, sparsity, config, where)
    keeps = {}
    for name, module in linears.items():
        weight = weight_rows(module)
        scores = wanda_score(weight, stats.sq_norms[name]) if config.scorer == "wanda" else magnitude_score(weight)
        keeps[name] = nm_mask(scores, *config.nm) if config.nm else row_mask(scores, sparsity)
    return PrunedBlock(keeps)


def _sparsegpt_block(linears: dict[str, nn.Module], stats: InputStats, sparsity: float, config: PruneConfig,
                     where: str) -> PrunedBlock:
    """SparseGPT on every linear of one block; linears that read one input (q/k/v) share its Hessian."""
    keeps, weights, damping, hessians = {}, {}, {}, {}
    for name, module in linears.items():
        gram = stats.grams[name]
        if id(gram) not in hessians:
            hessians[id(gram)] = gram * (2 / stats.tokens[name])  # H = (2/n) sum_t x_t x_t^T
        weight = weight_rows(module)
        result = sparsegpt_prune(weight, hessians[id(gram)], sparsity, config.nm, config.blocksize, config.percdamp,
                                 name=f"{where}, {name}")
        keeps[name], weights[name] = result.keep, result.weight.to(weight.dtype)
        if result.percdamp != config.percdamp:
            damping[name] = result.percdamp
    return PrunedBlock(keeps, weights, damping)


def _stored(pruned: PrunedBlock, linears: dict[str, nn.Module]) -> PrunedBlock:
    """Masks next to their weights; reconstructed weights on the CPU until they are committed."""
    keeps = {name: mask.to(stored_weight(linears[name]).device) for name, mask in pruned.keeps.items()}
    weights = None if pruned.weights is None else {name: w.cpu() for name, w in pruned.weights.items()}
    return PrunedBlock(keeps, weights, pruned.damping)


def _commit(linears: dict[str, nn.Module], pruned: PrunedBlock) -> float:
    """Write one block's reconstructed weights, register its masks and zero its pruned weights; returns the
    block's achieved sparsity."""
    for name, module in linears.items():
        if pruned.weights is not None:
            weight_rows(module).copy_(pruned.weights[name])
        set_mask(module, pruned.keeps[name])
    removed = sum(int((~keep).sum()) for keep in pruned.keeps.values())
    return removed / sum(keep.numel() for keep in pruned.keeps.values())


@contextmanager
def _pruned_for_now(linears: dict[str, nn.Module], pruned: PrunedBlock) -> Iterator[None]:
    """Give one block its pruned (or reconstructed) weights for the duration, then restore the dense ones exactly."""
    saved: dict[str, torch.Tensor] = {}
    try:
        for name, module in linears.items():
            saved[name] = stored_weight(module).detach().clone()
            rows = weight_rows(module)
            if pruned.weights is not None:
                rows.copy_(pruned.weights[name])
            rows.masked_fill_(~pruned.keeps[name], 0)
        yield
    finally:
        for name, dense in saved.items():
            stored_weight(linears[name]).copy_(dense)


def _sparsegpt_summary(config: PruneConfig, pruned_blocks: list[PrunedBlock]) -> dict | None:
    """SparseGPT settings and the linears whose Hessian needed more dampening, for the report."""
    if config.scorer != "sparsegpt":
        return None
    raised = {f"block {l}, {name}": damp for l, block in enumerate(pruned_blocks)
              for name, damp in (block.damping or {}).items()}
    return {"blocksize": config.blocksize, "percdamp": config.percdamp, "raised_percdamp": raised}


def _dataset_index(statements: Sequence[Mapping]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Row indices and labels of each statement dataset (topic, negated) over all batches, by dataset name."""
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
    index = {}
    for name, idx in sorted(rows.items()):
        counts = torch.bincount(all_labels[idx], minlength=2)
        if counts.min() < 2 or len(counts) > 2:
            raise ValueError(f"statement dataset {name!r} has {int(counts[1])} true and {int(counts[0])} false "
                             "statements (labels must be 0/1); the truth separation needs at least two of each.")
        index[name] = (torch.tensor(idx), all_labels[idx])
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


def _input_device(model: nn.Module) -> torch.device:
    """Where the model takes its inputs: its parameters' device, or for a model dispatched by accelerate the
    execution device of its first hook."""
    for module in model.modules():
        hook = getattr(module, "_hf_hook", None)
        if getattr(hook, "execution_device", None) is not None:
            return torch.device(hook.execution_device)
    return next(model.parameters()).device


@contextmanager
def _placed(model: nn.Module, blocks: nn.ModuleList, device: torch.device, offload: bool,
            dispatched: bool) -> Iterator[None]:
    """Put the model on `device`; with `offload`, everything but the blocks, moved back afterwards; a model
    dispatched by accelerate stays where accelerate put it."""
    if dispatched:
        yield
        return
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

"""lm-evaluation-harness tasks on an in-memory model (`pip install "tplo[eval]"` or `pip install lm-eval`).

`run_harness` wraps the model, as it is in memory, in the harness's `HFLM` and runs `lm_eval.simple_evaluate`;
the returned metrics are the harness's own numbers. Metric keys keep the harness's `"<metric>,<filter>"` names,
except that the default filter's `",none"` suffix is dropped (`"acc,none"` -> `"acc"`, `"acc_stderr,none"` ->
`"acc_stderr"`, `"exact_match,strict-match"` stays). Values are as reported, including the harness's `"N/A"`
for a stderr it could not compute.

Tasks can be pointed at local files (offline) by a task YAML in a folder passed as `include_path`, e.g.

    include: /path/to/site-packages/lm_eval/tasks/truthfulqa/truthfulqa_mc2.yaml
    task: truthfulqa_mc2        # the built-in name (overridden) or a new one
    tag: []                     # do not redefine the built-in `truthfulqa` tag
    dataset_path: json
    dataset_name: null
    dataset_kwargs:
      data_files:
        validation: /data/truthfulqa_mc.jsonl
"""

from __future__ import annotations

import copy
import difflib
import functools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import nn
from transformers import PreTrainedTokenizerBase

# lm_eval's CLI defaults are random_seed=0 and numpy/torch/fewshot seeds 1234; seed=0 reproduces them
_OTHER_SEED_OFFSET = 1234


def _import_lm_eval() -> tuple[Any, type, type]:
    """The `lm_eval` module, its `HFLM` and its `TaskManager`, or an error saying how to install them."""
    try:
        import lm_eval
        from lm_eval.models.huggingface import HFLM
        from lm_eval.tasks import TaskManager
    except ImportError as err:
        raise ImportError(f'lm-evaluation-harness is needed for harness tasks: pip install "tplo[eval]" '
                          f"(or pip install lm-eval) [{err}]") from err
    return lm_eval, HFLM, TaskManager


@functools.lru_cache(maxsize=4)
def task_manager(include_path: str | None = None, include_defaults: bool = True) -> Any:
    """The harness's task index (built once per process: indexing the built-in tasks takes ~20 s)."""
    return _import_lm_eval()[2](include_path=include_path, include_defaults=include_defaults)


def check_tasks(tasks: Sequence[str], include_path: str | None = None, include_defaults: bool = True) -> None:
    """Fail on task names the harness does not know (nor a task YAML file), with close matches; no model needed."""
    names = [tasks] if isinstance(tasks, str) else list(tasks)
    if not names:
        raise ValueError("no lm-eval tasks given")
    searched = (["the built-in tasks"] if include_defaults else []) + ([include_path] if include_path else [])
    _check_tasks(names, task_manager(include_path, include_defaults), searched)


def _check_tasks(names: list[str], task_manager: Any, searched: list[str]) -> None:
    """Fail on names that are neither registered (task, group or tag) nor a task YAML file, with close matches."""
    known = task_manager.all_tasks
    unknown = [n for n in names if n not in known and not Path(n).expanduser().is_file()]
    if not unknown:
        return
    hints = []
    for name in unknown:
        close = difflib.get_close_matches(name, known, n=5, cutoff=0.6)
        hints.append(f"{name!r}" + (f" (did you mean {', '.join(close)}?)" if close else ""))
    raise ValueError(
        f"unknown lm-eval task(s): {'; '.join(hints)}. "
        f"Searched {' and '.join(searched) or 'no task folder'}; "
        "list them with `lm-eval ls tasks`. To add a local task, write a task YAML (e.g. `include:` a built-in "
        "task YAML and set `dataset_path: json`, `dataset_name: null`, `dataset_kwargs: {data_files: ...}`) "
        "in a folder and pass that folder as include_path.")


def _metric_name(key: str) -> str:
    return key.removesuffix(",none")


def _plain(value: Any) -> Any:
    """NumPy scalars as Python numbers, so the report is JSON-serialisable."""
    return value.item() if hasattr(value, "item") else value


def run_harness(model: nn.Module, tokenizer: PreTrainedTokenizerBase, tasks: Sequence[str], *,
                batch_size: int = 8, num_fewshot: int | None = None, limit: int | float | None = None,
                include_path: str | None = None, include_defaults: bool = True, seed: int = 0,
                device: str | None = None) -> dict[str, Any]:
    """Run lm-eval tasks on `model` as it is in memory; returns the harness's metrics and run details.

    Returns `{"lm_eval_version", "results": {task: {metric: value}}, "versions": {task: config version},
    "n_samples": {task: {"original", "effective"}}, "num_fewshot": {task: shots used}, "limit",
    "batch_size", "seeds"}`; `results` also holds any requested group's aggregate. Unknown task names fail
    before the model is touched. `include_defaults=False` indexes only `include_path` (the built-in index
    takes ~20 s to build). `device` moves the model there first (the harness uses the model's own device).
    Seeds: python `seed`, numpy/torch/few-shot `seed + 1234` (seed 0 = the harness CLI's defaults).
    """
    lm_eval, HFLM, _ = _import_lm_eval()
    names = [tasks] if isinstance(tasks, str) else list(tasks)
    check_tasks(names, include_path, include_defaults)

    if device is not None:
        model.to(device)
    seeds = {"random_seed": seed, "numpy_random_seed": seed + _OTHER_SEED_OFFSET,
             "torch_random_seed": seed + _OTHER_SEED_OFFSET, "fewshot_random_seed": seed + _OTHER_SEED_OFFSET}
    was_training = model.training
    try:
        # HFLM sets a pad token on the tokenizer it gets when there is none; keep the caller's unchanged
        lm = HFLM(pretrained=model, tokenizer=copy.deepcopy(tokenizer), batch_size=batch_size)
        out = lm_eval.simple_evaluate(model=lm, tasks=names, num_fewshot=num_fewshot, limit=limit,
                                      task_manager=task_manager(include_path, include_defaults), log_samples=False,
                                      **seeds)
    finally:
        model.train(was_training)  # HFLM puts the model in eval mode
    if out is None:
        raise RuntimeError("lm-eval returned no results: it reports only on the process with LOCAL_RANK 0")

    return {
        "lm_eval_version": lm_eval.__version__,
        "results": {task: {_metric_name(k): _plain(v) for k, v in entry.items() if "," in k}
                    for task, entry in out["results"].items()},
        "versions": {task: _plain(v) for task, v in out["versions"].items()},
        "n_samples": out["n-samples"],
        "num_fewshot": out["n-shot"],
        "limit": limit,
        "batch_size": batch_size,
        "seeds": seeds,
    }


def harness_scalars(report: dict[str, Any], prefix: str = "harness") -> dict[str, float]:
    """TensorBoard scalars of a `run_harness` report: `<prefix>/<task>/<metric>` for every numeric value,
    stderrs as their own tags (`.../acc_stderr`); a filter suffix becomes a path level (`exact_match/strict-match`).
    """
    return {f"{prefix}/{task}/{metric.replace(',', '/')}": float(value)
            for task, metrics in report["results"].items() for metric, value in metrics.items()
            if isinstance(value, (int, float)) and not isinstance(value, bool)}

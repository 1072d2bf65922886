"""Write a pruned model to a folder atomically: a temporary folder next to the target, then a rename.

An export that fails halfway (disk full, interrupted save) leaves the previous export untouched and no
temporary folder behind; a reader never sees a half-written model. Only a process killed outright
(SIGKILL, power loss) can leave a hidden `.<name>.tmp-*` folder next to the target, never a partial
target.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from torch import nn

from tplo.pruning_report import PruneReport

REPORT_FILE = "pruning_report.json"
# what a folder must hold to be replaced by `overwrite`: a model export, never an arbitrary folder
EXPORT_MARKERS = ("config.json", REPORT_FILE)


def check_export_dir(path: str | os.PathLike, overwrite: bool = False) -> None:
    """Fail early when an export to `path` could not complete or would destroy something.

    Accepted: a path that does not exist, an empty folder, or (with `overwrite`) a previous export.
    """
    path = Path(path)
    if not path.exists():
        return
    if not path.is_dir():
        raise FileExistsError(f"export_dir {str(path)!r} is a file; set export_dir to a folder path.")
    contents = sorted(p.name for p in path.iterdir())
    if not contents:
        return
    if not overwrite:
        raise FileExistsError(
            f"export_dir {str(path)!r} exists and is not empty ({', '.join(contents[:4])}"
            f"{', ...' if len(contents) > 4 else ''}); set overwrite: true to replace it once the new export is "
            "complete, or choose another export_dir."
        )
    if not any(marker in contents for marker in EXPORT_MARKERS):
        raise FileExistsError(
            f"export_dir {str(path)!r} is not a model export (no {' or '.join(EXPORT_MARKERS)}), so overwrite: true "
            "will not delete it; choose another export_dir or empty that folder yourself."
        )


@contextmanager
def atomic_directory(target: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a fresh temporary folder next to `target`; on success it becomes `target`.

    On an exception the temporary folder is removed and `target` is left as it was. With `overwrite`,
    an existing export at `target` is replaced only after everything was written.
    """
    target = Path(target)
    check_export_dir(target, overwrite)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = _sibling(target, "tmp")
    try:
        yield staging
        _replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _replace(staging: Path, target: Path) -> None:
    """Rename `staging` to `target`; a previous `target` is moved aside first and deleted last."""
    if not target.exists():
        os.rename(staging, target)
        return
    previous = _sibling(target, "old")
    os.rename(target, previous / target.name)
    try:
        os.rename(staging, target)
    except BaseException:
        os.rename(previous / target.name, target)
        previous.rmdir()
        raise
    shutil.rmtree(previous)


def _sibling(target: Path, kind: str) -> Path:
    """A new hidden folder next to `target` (same file system, so renames are atomic; default permissions)."""
    folder = target.parent / f".{target.name}.{kind}-{uuid.uuid4().hex[:12]}"
    folder.mkdir()
    return folder


def export_pretrained(model: nn.Module, target: str | os.PathLike, report: PruneReport | None = None,
                      tokenizer: object | None = None, overwrite: bool = False) -> Path:
    """Save `model` (and `report`, `tokenizer`) with `save_pretrained` into `target`, atomically.

    Pruning masks are non-persistent buffers, so the folder holds an ordinary Hugging Face model whose
    pruned weights are exact zeros; `AutoModel.from_pretrained(target)` reloads it.
    """
    target = Path(target)
    with atomic_directory(target, overwrite) as staging:
        model.save_pretrained(staging)
        if tokenizer is not None:
            tokenizer.save_pretrained(staging)
        if report is not None:
            report.save(staging / REPORT_FILE)
    return target

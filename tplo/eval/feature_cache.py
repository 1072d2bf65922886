"""On-disk cache of per-layer statement features, keyed by model, statements and extraction settings.

One safetensors file per key, `<cache_dir>/features-<key>.safetensors`, holding `features` [N, L + 1, H]
(fp32) and, as metadata, the JSON of the parts the key was hashed from. Files are written to a temporary
name and moved into place, so a crashed run never leaves a truncated cache entry.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


def default_cache_dir() -> Path:
    """`$TPLO_CACHE/features`, else `~/.cache/tplo/features`."""
    root = os.environ.get("TPLO_CACHE")
    return Path(root) / "features" if root else Path.home() / ".cache" / "tplo" / "features"


def model_fingerprint(model: str | os.PathLike, config: Mapping | None = None) -> dict:
    """What identifies a model's weights.

    A local directory: name, size and mtime of its weight files and `config.json` (a re-exported model
    changes the key). A hub id: the id and the model's config dict (pass `model.config.to_dict()`).
    """
    path = Path(model)
    if path.is_dir():
        files = sorted(f for f in path.iterdir()
                       if f.is_file() and (f.suffix in WEIGHT_SUFFIXES or f.name == "config.json"))
        return {
            "path": str(path.resolve()),
            "files": [[f.name, f.stat().st_size, f.stat().st_mtime_ns] for f in files],
        }
    return {"id": str(model), "config": dict(config or {})}


def statements_fingerprint(
    statements: Sequence[str], labels: Sequence[int], topics: Sequence[str], negated: Sequence[bool]
) -> str:
    """SHA-256 of the statements with their labels, topics and polarity, in order."""
    digest = hashlib.sha256()
    for row in zip(statements, labels, topics, negated):
        digest.update(json.dumps([str(row[0]), int(row[1]), str(row[2]), bool(row[3])]).encode())
    return digest.hexdigest()


def cache_key(parts: Mapping) -> str:
    """Short stable hash (24 hex chars) of a JSON-serialisable mapping."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:24]


def cache_path(cache_dir: str | os.PathLike, parts: Mapping) -> Path:
    """File that holds the features for `parts`."""
    return Path(cache_dir) / f"features-{cache_key(parts)}.safetensors"


def cached_features(
    cache_dir: str | os.PathLike, parts: Mapping, compute: Callable[[], torch.Tensor]
) -> tuple[torch.Tensor, bool]:
    """Features [N, L + 1, H] for `parts`: loaded if cached, else `compute()`d and stored. Returns (features, hit)."""
    path = cache_path(cache_dir, parts)
    if path.exists():
        return load_file(path)["features"], True
    features = compute().float().contiguous()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".features-", suffix=".tmp")
    os.close(fd)
    try:
        save_file({"features": features}, tmp, metadata={"parts": json.dumps(parts, sort_keys=True, default=str)})
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return features, False

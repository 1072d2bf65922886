"""Where tplo keeps what it computes once and reuses: converted models and statement features."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """`$TPLO_CACHE`, else `~/.cache/tplo`."""
    root = os.environ.get("TPLO_CACHE")
    return Path(root).expanduser() if root else Path.home() / ".cache" / "tplo"

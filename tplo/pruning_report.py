"""What a pruning run did, per block and overall; serialises to `pruning_report.json`."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rich.table import Table

from tplo.json_io import write_json_atomic


@dataclass
class LayerReport:
    """One transformer block."""

    index: int
    params: int
    outlier_ratio: float | None
    truth_separation: float | None
    target_sparsity: float
    achieved_sparsity: float


@dataclass
class PruneReport:
    """The JSON report other tools read (keys fixed by the issue tracker)."""

    method: str
    scorer: str
    structure: str
    sparsity: float
    owl_m: float
    owl_lambda: float
    beta: float
    pivot: int | None
    global_sparsity: float
    layers: list[LayerReport]
    timings: dict[str, float] = field(default_factory=dict)
    blocks: str = ""
    truth_statements: dict[str, int] | None = None
    """Statements per dataset that fed the truth separation (None: no statements were given)."""
    sparsegpt: dict[str, Any] | None = None
    """SparseGPT runs: blocksize, percdamp, and raised_percdamp {"block l, linear": percdamp} where a Hessian needed more."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PruneReport:
        return cls(**{**data, "layers": [LayerReport(**layer) for layer in data["layers"]]})

    def save(self, path: str | os.PathLike) -> Path:
        """Write JSON atomically: a temporary file in the same folder, then a rename."""
        return write_json_atomic(self.to_dict(), path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> PruneReport:
        return cls.from_dict(json.loads(Path(path).read_text()))

    def rich_table(self) -> Table:
        """Per-block allocation as a console table."""
        pivot = "" if self.pivot is None else f", pivot {self.pivot}"
        table = Table(title=f"{self.method} / {self.scorer} / {self.structure} at {self.sparsity:.0%}{pivot}: "
                            f"global sparsity {self.global_sparsity:.4f}")
        if self.truth_statements:
            counts = ", ".join(f"{name} {n}" for name, n in self.truth_statements.items())
            table.caption = f"truth separation from {sum(self.truth_statements.values())} statements ({counts})"
        for name in ("block", "params", "outlier %", "truth p", "target", "achieved"):
            table.add_column(name, justify="right")
        for layer in self.layers:
            table.add_row(str(layer.index), f"{layer.params:,}", _fmt(layer.outlier_ratio, ".3f"),
                          _fmt(layer.truth_separation, ".4f"), f"{layer.target_sparsity:.4f}",
                          f"{layer.achieved_sparsity:.4f}")
        return table

    def markdown(self) -> str:
        """The same table as Markdown (for TensorBoard's text tab)."""
        rows = ["| block | params | outlier % | truth p | target | achieved |", "|---|---|---|---|---|---|"]
        rows += [f"| {x.index} | {x.params} | {_fmt(x.outlier_ratio, '.3f')} | {_fmt(x.truth_separation, '.4f')} | "
                 f"{x.target_sparsity:.4f} | {x.achieved_sparsity:.4f} |" for x in self.layers]
        return "\n".join(rows)


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)

"""The settings of one pruning run."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

Method = Literal["uniform", "owl", "swl", "tplo", "tplo_blend", "truth_prefix"]
Scorer = Literal["magnitude", "wanda", "sparsegpt"]
Structure = Literal["unstructured", "2:4", "4:8"]
TRUTH_METHODS = ("swl", "tplo", "tplo_blend", "truth_prefix")


@dataclass
class PruneConfig:
    """How to prune: target sparsity, allocation method, scores and mask structure."""

    sparsity: float = 0.5
    """Target fraction of pruned weights over all block linears, in [0, 1)."""
    method: Method = "tplo"
    """Per-block allocation: uniform, owl (outliers), swl (truth only), tplo (pivot splice), tplo_blend, or
    truth_prefix (denser up to the block of peak truth separation, sparser after it, OWL as a modulation)."""
    scorer: Scorer = "wanda"
    """Weight importance: magnitude |W|, wanda |W| * ||X_j||, or sparsegpt (OBS saliency, and the kept weights are
    updated to reconstruct each linear's output on the calibration data)."""
    structure: Structure = "unstructured"
    """Mask pattern per output row: unstructured, or N:M (2:4, 4:8; sparsity must be 1 - N/M)."""
    owl_m: float = 5.0
    """OWL outlier threshold M: a score is an outlier when above M times the block's mean score."""
    owl_lambda: float = 0.08
    """OWL lambda: the allocation spreads densities over (1 - S) +- lambda."""
    beta: float = 0.04
    """Weight of the truth-separation term in the swl, tplo and tplo_blend allocations."""
    pivot: int | Literal["auto"] = "auto"
    """TPLO splice block: OWL before it, truth-based from it on; auto = max(0, argmax(p) - 2)."""
    prefix_shift: float = 0.05
    """truth_prefix: density added to every block up to the peak-separation block (and taken from those after it)."""
    block_sparsities: list[float] | None = None
    """Your own per-block sparsities (one per block) instead of the method's; clipped and shifted like any allocation."""
    s_min: float = 0.0
    """Lowest per-block sparsity after clipping."""
    s_max: float = 0.99
    """Highest per-block sparsity after clipping."""
    sequential: bool = True
    """Second pass that prunes block by block on inputs from the already pruned blocks (as the reference)."""
    blocksize: int = 128
    """SparseGPT: columns per lazy-update block (the mask is chosen per block of columns)."""
    percdamp: float = 0.01
    """SparseGPT: dampening added to the Hessian diagonal, as a fraction of its mean (raised x10 on failure)."""
    offload: bool = False
    """Keep blocks on CPU and move one at a time to the compute device (models larger than the device)."""
    blocks: str | None = None
    """Attribute path of the ModuleList of transformer blocks (e.g. model.layers); None finds it."""
    pooling: Literal["auto", "last", "mean"] = "auto"
    """Statement feature per block: last non-padding token, token mean, or auto (mean for encoders)."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.sparsity < 1.0:
            raise ValueError(f"sparsity must be in [0, 1), got {self.sparsity}; e.g. sparsity: 0.5 prunes half the weights.")
        choices = {"method": Method, "scorer": Scorer, "structure": Structure}
        for field, kind in choices.items():
            allowed = kind.__args__
            if getattr(self, field) not in allowed:
                raise ValueError(f"unknown {field} {getattr(self, field)!r}; choose one of {', '.join(allowed)}.")
        if self.nm is not None:
            n, m = self.nm
            if abs(self.sparsity - (1 - n / m)) > 1e-9:
                raise ValueError(
                    f"structure {self.structure} keeps {n} of every {m} weights, so sparsity must be {1 - n / m:g}, "
                    f"got {self.sparsity}. Set sparsity: {1 - n / m:g} or use structure: unstructured."
                )
        if not 0.0 <= self.s_min <= self.sparsity <= self.s_max < 1.0:
            raise ValueError(
                f"need 0 <= s_min <= sparsity <= s_max < 1, got s_min={self.s_min}, sparsity={self.sparsity}, "
                f"s_max={self.s_max}."
            )
        if self.pivot != "auto" and (not isinstance(self.pivot, int) or self.pivot < 0):
            raise ValueError(f"pivot must be 'auto' or a block index >= 0, got {self.pivot!r}.")
        if self.owl_m <= 0 or self.owl_lambda < 0 or self.beta < 0 or self.prefix_shift < 0:
            raise ValueError(
                f"owl_m must be > 0 and owl_lambda, beta, prefix_shift >= 0; got owl_m={self.owl_m}, "
                f"owl_lambda={self.owl_lambda}, beta={self.beta}, prefix_shift={self.prefix_shift}."
            )
        if self.scorer == "sparsegpt" and not self.sequential:
            raise ValueError("scorer sparsegpt reconstructs each block on the outputs of the already pruned ones; "
                             "set sequential: true (or use scorer wanda with sequential: false).")
        if self.blocksize < 1 or self.percdamp <= 0:
            raise ValueError(f"blocksize must be >= 1 and percdamp > 0, got blocksize={self.blocksize}, "
                             f"percdamp={self.percdamp}.")
        if self.nm is not None and self.scorer == "sparsegpt" and self.blocksize % self.nm[1]:
            raise ValueError(f"structure {self.structure} with sparsegpt needs blocksize divisible by {self.nm[1]}, "
                             f"got {self.blocksize}.")
        if self.block_sparsities is not None:
            if self.nm is not None:
                raise ValueError("block_sparsities is for unstructured sparsity; N:M keeps N of every M in every block.")
            if not all(0.0 <= b < 1.0 for b in self.block_sparsities):
                raise ValueError(f"block_sparsities must each be in [0, 1), got {self.block_sparsities}.")
        if self.pooling not in ("auto", "last", "mean"):
            raise ValueError(f"pooling must be auto, last or mean, got {self.pooling!r}.")

    def check_blocks(self, n_blocks: int) -> None:
        """Reject an explicit TPLO pivot that names no block, or block_sparsities of another length, for a model
        with `n_blocks` blocks."""
        if self.method == "tplo" and self.nm is None and self.block_sparsities is None:
            check_pivot(self.pivot, n_blocks)
        if self.block_sparsities is not None and len(self.block_sparsities) != n_blocks:
            raise ValueError(f"block_sparsities has {len(self.block_sparsities)} values for a model with {n_blocks} "
                             "blocks; give one per block.")

    @property
    def nm(self) -> tuple[int, int] | None:
        """(N, M) for N:M structures, None when unstructured."""
        if self.structure == "unstructured":
            return None
        n, m = self.structure.split(":")
        return int(n), int(m)

    @property
    def needs_statements(self) -> bool:
        """Whether the allocation uses the truth separation of labelled statements."""
        return self.method in TRUTH_METHODS and self.nm is None and self.block_sparsities is None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_pivot(pivot: int | str, n_blocks: int) -> None:
    """An explicit pivot must name one of the model's `n_blocks` blocks."""
    if pivot != "auto" and not 0 <= int(pivot) < n_blocks:
        raise ValueError(f"pivot {pivot} is beyond the model's {n_blocks} blocks; use 0..{n_blocks - 1} or 'auto'.")

"""tplo: prune Hugging Face language models without pruning away their truth features."""

from tplo.config import PruneConfig
from tplo.export import export_pretrained
from tplo.masks import apply_masks, collect_masks, load_masks, mask_gradients, model_sparsity
from tplo.pruning import prune
from tplo.pruning_report import LayerReport, PruneReport

__all__ = [
    "LayerReport", "PruneConfig", "PruneReport", "TruthProbe", "apply_masks", "collect_masks", "export_pretrained",
    "load_masks", "mask_gradients", "model_sparsity", "prune",
]


def __getattr__(name: str):
    """Import the Lightning module lazily, so the core stays usable without importing Lightning."""
    if name == "TruthProbe":
        from tplo.truth_probe import TruthProbe

        return TruthProbe
    raise AttributeError(f"module 'tplo' has no attribute {name!r}")

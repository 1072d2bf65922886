"""Lightning callbacks for pruning inside a trainer."""

from tplo.callbacks.tplo_callback import Calibration, TPLOCallback

__all__ = ["Calibration", "TPLOCallback"]

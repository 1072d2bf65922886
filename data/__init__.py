"""Statement and calibration data: tplo's generated statements, published statement sets, TruthfulQA,
calibration text, and the `StatementDataModule` that serves them."""

from tplo.data.calibration import CalibrationSource, build_calibration, calibration_batches
from tplo.data.collate import collate_statements, tokenize_statements
from tplo.loading import ensure_pad_token
from tplo.data.datamodule import StatementDataModule
from tplo.data.schema import StatementDataError, dataset_name
from tplo.data.statements import generate_statements, load_statements
from tplo.data.truthfulqa import enriched_paragraphs, load_truthfulqa

__all__ = [
    "CalibrationSource", "StatementDataError", "StatementDataModule", "build_calibration", "calibration_batches",
    "collate_statements", "dataset_name", "enriched_paragraphs", "ensure_pad_token", "generate_statements",
    "load_statements", "load_truthfulqa", "tokenize_statements",
]

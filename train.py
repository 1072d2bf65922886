"""Command line of tplo: a LightningCLI over `TruthProbe` and `StatementDataModule`.

    python train.py fit --config configs/quickstart.yaml
    python train.py fit --config configs/quickstart.yaml --print_config
    python train.py fit --help

The model is named once (`model.model_name_or_path`); the datamodule's tokenizer and
`trust_remote_code` follow it.
"""

from __future__ import annotations

import importlib
import warnings
from dataclasses import fields
from typing import Any

from jsonargparse import Namespace
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.utilities.warnings import PossibleUserWarning

from tplo.callbacks import TPLOCallback
from tplo.config import PruneConfig
from tplo.data import StatementDataModule
from tplo.export import check_export_dir
from tplo.model_source import check_model_source
from tplo.truth_probe import TruthProbe


class TPLOCLI(LightningCLI):
    """LightningCLI that links the datamodule's tokenizer to the model and checks the settings that can fail
    before anything is built (loading a 7B-13B model takes minutes)."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("model.model_name_or_path", "data.tokenizer")
        parser.link_arguments("model.trust_remote_code", "data.trust_remote_code")

    def fit(self, model: TruthProbe, datamodule: StatementDataModule | None = None, ckpt_path: str | None = None,
            **kwargs: Any) -> None:
        """`trainer.fit`, with a resumed checkpoint announced through `trainer.ckpt_path`, so that `TPLOCallback`
        knows in `setup` that the masks come from the checkpoint and does not prune again."""
        if ckpt_path is not None:
            self.trainer.ckpt_path = ckpt_path
        self.trainer.fit(model, datamodule=datamodule, **kwargs)

    def before_instantiate_classes(self) -> None:
        """Check the model source and every TPLOCallback's pruning settings and export folder."""
        config = self.config[self.subcommand] if self.subcommand else self.config
        check_model_source(config.model.model_name_or_path, config.model.trust_remote_code)
        callbacks = config.trainer.callbacks or []
        for callback in callbacks if isinstance(callbacks, list) else [callbacks]:
            if isinstance(callback, Namespace) and _is_tplo_callback(callback.class_path):
                check_callback_settings(callback.init_args)


def _is_tplo_callback(class_path: str) -> bool:
    module, _, name = class_path.rpartition(".")
    cls = getattr(importlib.import_module(module), name, None) if module else None
    return isinstance(cls, type) and issubclass(cls, TPLOCallback)


def check_callback_settings(init_args: Namespace) -> None:
    """Raise on TPLOCallback settings that would fail later: the pruning config and the export folder."""
    PruneConfig(**{f.name: init_args[f.name] for f in fields(PruneConfig) if f.name in init_args})
    if init_args.get("export_dir"):
        check_export_dir(init_args["export_dir"], init_args.get("overwrite", False))


def main(args: list[str] | None = None) -> TPLOCLI:
    """Run the CLI on `args` (default: the command line) and return it (its `trainer`, `model`, `datamodule`)."""
    # TruthProbe keeps its backbone in eval mode on purpose (no dropout in the features the probes read)
    warnings.filterwarnings("ignore", r"Found \d+ module\(s\) in eval mode", PossibleUserWarning)
    return TPLOCLI(TruthProbe, StatementDataModule, args=args, save_config_kwargs={"overwrite": True})


if __name__ == "__main__":
    main()

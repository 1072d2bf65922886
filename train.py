"""Command line of tplo: a LightningCLI over `TruthProbe` and `StatementDataModule`.

    python train.py fit --config configs/quickstart.yaml
    python train.py fit --config configs/quickstart.yaml --print_config
    python train.py fit --help

The model is named once (`model.model_name_or_path`); the datamodule's tokenizer and
`trust_remote_code` follow it.
"""

from __future__ import annotations

from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from tplo.data import StatementDataModule
from tplo.truth_probe import TruthProbe, resolve_model_path


class TPLOCLI(LightningCLI):
    """LightningCLI that links the datamodule's tokenizer to the model."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("model.model_name_or_path", "data.tokenizer", compute_fn=resolve_model_path)
        parser.link_arguments("model.trust_remote_code", "data.trust_remote_code")


def main(args: list[str] | None = None) -> TPLOCLI:
    """Run the CLI on `args` (default: the command line) and return it (its `trainer`, `model`, `datamodule`)."""
    return TPLOCLI(TruthProbe, StatementDataModule, args=args, save_config_kwargs={"overwrite": True})


if __name__ == "__main__":
    main()

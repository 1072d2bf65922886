"""train.py (LightningCLI) and configs/: every config parses; the quickstart runs end to end."""

import importlib.util
import json
import socket
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from transformers import AutoModel

from tplo.blocks import find_blocks, prunable_linears

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))
PAPER = {"llama3_8b_instruct_tplo": ("meta-llama/Meta-Llama-3-8B-Instruct", 10),
         "mistral_7b_instruct_tplo": ("mistralai/Mistral-7B-Instruct-v0.3", 12),
         "llama2_13b_chat_tplo": ("meta-llama/Llama-2-13b-chat-hf", 12)}


def load_train():
    spec = importlib.util.spec_from_file_location("train", ROOT / "train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_all_configs_are_present():
    assert {c.stem for c in CONFIGS} >= {"quickstart", "quickstart_dense", "quickstart_wanda", "quickstart_minilm", "quickstart_minilm_dense",
                                          "quickstart_minilm_wanda", *PAPER}


@pytest.mark.parametrize("config", CONFIGS, ids=[c.stem for c in CONFIGS])
def test_config_parses_with_print_config(config, capsys):
    with pytest.raises(SystemExit) as done:
        load_train().main(["fit", "--config", str(config), "--print_config"])
    assert done.value.code in (0, None)
    printed = capsys.readouterr().out
    assert "model_name_or_path:" in printed and "seed_everything: 0" in printed and "RichProgressBar" in printed
    if config.stem in PAPER:
        model, pivot = PAPER[config.stem]
        for line in (f"model_name_or_path: {model}", "dtype: bfloat16", f"pivot: {pivot}", "owl_m: 5.0",
                     "owl_lambda: 0.08", "beta: 0.04", "calibration_seqlen: 2048", "path_or_name: allenai/c4",
                     "kind: truthfulqa"):
            assert line in printed, line


def test_quickstart_end_to_end(tmp_path):
    """The quickstart config, shortened with CLI overrides: TensorBoard tags, report, reloadable model."""
    cli = load_train().main([
        "fit", "--config", str(ROOT / "configs" / "quickstart_minilm.yaml"),
        "--trainer.max_epochs=1", f"--trainer.default_root_dir={tmp_path}",
        f"--trainer.logger.init_args.save_dir={tmp_path}",
        "--data.max_statements_per_topic=200", "--data.calibration=[{kind: statements, count: 8}]",
        "--data.calibration_seqlen=32",
    ])
    log_dir = Path(cli.trainer.log_dir)
    assert log_dir == tmp_path / "quickstart_minilm" / "version_0"

    events = EventAccumulator(str(log_dir)).Reload()
    scalars = set(events.Tags()["scalars"])
    n_blocks = 6
    expected = {"prune/global_sparsity", "val/acc/best", "val/best_layer"}
    expected |= {f"val/{m}/layer_{l:02d}" for m in ("acc", "auroc") for l in range(n_blocks + 1)}
    expected |= {f"prune/{k}/layer_{l:02d}" for k in ("sparsity", "outlier_ratio", "truth_separation")
                 for l in range(n_blocks)}
    assert expected <= scalars, sorted(expected - scalars)
    assert "prune/allocation" in events.Tags()["images"]
    assert any(tag.startswith("prune/report") for tag in events.Tags()["tensors"])

    report = json.loads((log_dir / "pruning_report.json").read_text())
    assert report["method"] == "tplo" and len(report["layers"]) == n_blocks
    assert report["global_sparsity"] == pytest.approx(0.5, abs=0.01)

    pruned = AutoModel.from_pretrained(log_dir / "pruned_model")
    for layer, block in zip(report["layers"], find_blocks(pruned)[1]):
        weights = [m.weight for m in prunable_linears(block).values()]
        zeros = sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights)
        assert zeros == pytest.approx(layer["achieved_sparsity"], abs=1e-4)
    ids = torch.tensor([[101, 1996, 2103, 102]])
    assert torch.isfinite(pruned(input_ids=ids).last_hidden_state).all()
    assert (log_dir / "pruned_model" / "tokenizer.json").is_file()


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
    from test_reliability_ddp import tiny_llama_folder  # imports this module: only once it is loaded

    return tiny_llama_folder(tmp_path_factory.mktemp("paper") / "tiny-llama")


@pytest.mark.parametrize("name", sorted(PAPER))
def test_paper_config_builds_the_paper_setting(name, tiny_llama, tmp_path, monkeypatch):
    """Each paper config, instantiated (run=False) around a tiny local Llama on the CPU, offline."""
    from lightning.pytorch.loggers import TensorBoardLogger

    from tplo.callbacks import TPLOCallback
    from tplo.config import PruneConfig
    from tplo.data import CalibrationSource, StatementDataModule
    from tplo.truth_probe import TruthProbe

    def offline(*_):
        raise AssertionError("building a paper config touched the network")

    monkeypatch.setattr(socket.socket, "connect", offline)
    train = load_train()
    cli = train.TPLOCLI(TruthProbe, StatementDataModule, run=False, args=[
        "--config", str(ROOT / "configs" / f"{name}.yaml"), f"--model.model_name_or_path={tiny_llama}",
        "--trainer.accelerator=cpu", f"--trainer.default_root_dir={tmp_path}",
        f"--trainer.logger.init_args.save_dir={tmp_path}",
    ])
    callbacks = [c for c in cli.trainer.callbacks if isinstance(c, TPLOCallback)]
    assert len(callbacks) == 1
    assert callbacks[0].config == PruneConfig(sparsity=0.5, method="tplo", scorer="wanda", structure="unstructured",
                                              owl_m=5.0, owl_lambda=0.08, beta=0.04, pivot=PAPER[name][1],
                                              sequential=True)
    assert cli.model.hparams.dtype == "bfloat16"
    assert {p.dtype for p in cli.model.backbone.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in cli.model.probes.parameters()} == {torch.float32}
    data = cli.datamodule
    assert data.tokenizer_name == str(tiny_llama)  # linked to the model
    assert data.calibration == [
        CalibrationSource(kind="hf", path_or_name="allenai/c4", config_name="en", count=64),
        CalibrationSource(kind="truthfulqa", path_or_name="truthfulqa/truthful_qa", count=64),
    ]
    assert data.calibration_seqlen == 2048 and data.calibration_batch_size == 8
    assert data.truth_topics == ["cities", "neg_cities", "sp_en_trans", "neg_sp_en_trans"]
    assert cli.trainer.max_epochs == 10 and cli.config["seed_everything"] == 0
    assert isinstance(cli.trainer.logger, TensorBoardLogger) and cli.trainer.logger.name == name

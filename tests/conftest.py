"""Shared by the test files: the tests folder on sys.path (tiny models, tokenizers, GGUF writer) and two fixtures."""

import pathlib
import sys

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).parent))

HARNESS_TASKS = ["local_truthfulqa_mc1", "local_truthfulqa_mc2"]
HARNESS_DATA = pathlib.Path(__file__).parent / "harness_data" / "truthfulqa_mc.jsonl"


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> str:
    """The folder of a tiny random Llama saved with the MiniLM tokenizer (see test_reliability_ddp)."""
    from test_reliability_ddp import tiny_llama_folder

    return str(tiny_llama_folder(tmp_path_factory.mktemp("tiny") / "llama"))


@pytest.fixture(scope="session")
def task_dir(tmp_path_factory) -> str:
    """lm-eval task YAMLs that include the installed truthfulqa_mc1/mc2 definitions, with the dataset made local."""
    import lm_eval

    builtin = pathlib.Path(lm_eval.__file__).parent / "tasks" / "truthfulqa"
    folder = tmp_path_factory.mktemp("harness_tasks")
    for task, source in zip(HARNESS_TASKS, ["truthfulqa_mc1.yaml", "truthfulqa_mc2.yaml"]):
        (folder / f"{task}.yaml").write_text(
            f"include: {builtin / source}\ntask: {task}\ntag: []\ndataset_path: json\ndataset_name: null\n"
            f"dataset_kwargs:\n  data_files:\n    validation: {HARNESS_DATA}\n")
    return str(folder)

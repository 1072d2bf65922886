"""TruthfulQA's multiple-choice tasks for lm-eval-harness from a local TruthfulQA.csv, for offline machines.

    python -m tplo.eval.local_tasks PATH/TruthfulQA.csv TASK_DIR
    python -m tplo.eval MODEL --out DIR --tasks truthfulqa_mc1_local,truthfulqa_mc2_local --task-path TASK_DIR

The YAMLs written here `include:` the harness's own `truthfulqa_mc1` / `truthfulqa_mc2` definitions (prompt,
choices, MC2 scoring), so only the data is local: `mc1_targets` are the best answer against the incorrect
answers, `mc2_targets` all correct answers against the incorrect ones, as the CSV release lists them. The
hub's `multiple_choice` configuration was built from the same questions but its choice lists differ in
places, so the numbers are close to, not equal to, those of the hub tasks; online, use `truthfulqa_mc1`
and `truthfulqa_mc2` themselves.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from tplo.data.truthfulqa import load_truthfulqa

TASKS = {"truthfulqa_mc1_local": "truthfulqa_mc1.yaml", "truthfulqa_mc2_local": "truthfulqa_mc2.yaml"}


def write_truthfulqa_tasks(csv: str | Path, folder: str | Path) -> list[str]:
    """Write `truthfulqa_mc.jsonl` and the two task YAMLs into `folder`; returns the task names."""
    import lm_eval

    frame = load_truthfulqa(str(csv))
    folder = Path(folder).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    data = folder / "truthfulqa_mc.jsonl"
    with data.open("w") as handle:
        for row in frame.itertuples(index=False):
            correct = list(row.correct_answers)
            incorrect = list(row.incorrect_answers)
            handle.write(json.dumps({
                "question": row.question,
                "mc1_targets": {"choices": [row.best_answer, *incorrect], "labels": [1] + [0] * len(incorrect)},
                "mc2_targets": {"choices": [*correct, *incorrect], "labels": [1] * len(correct) + [0] * len(incorrect)},
            }) + "\n")
    builtin = Path(lm_eval.__file__).parent / "tasks" / "truthfulqa"
    for task, source in TASKS.items():
        (folder / f"{task}.yaml").write_text(
            f"include: {builtin / source}\ntask: {task}\ntag: []\ndataset_path: json\ndataset_name: null\n"
            f"dataset_kwargs:\n  data_files:\n    validation: {data}\n")
    return list(TASKS)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tplo.eval.local_tasks", description=__doc__.split("\n\n")[0])
    p.add_argument("csv", help="TruthfulQA.csv (the CSV release)")
    p.add_argument("folder", help="task folder to write (pass it to python -m tplo.eval --task-path)")
    args = p.parse_args(argv)
    names = write_truthfulqa_tasks(args.csv, args.folder)
    print(f"wrote {', '.join(names)} to {Path(args.folder).resolve()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

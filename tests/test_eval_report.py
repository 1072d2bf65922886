"""`python -m tplo.eval.compare` on tiny runs (dense, pruned, a training run without evaluation.json): the table
and both figures."""

import json

import pytest
from matplotlib.image import imread

from tplo.config import PruneConfig
from tplo.eval.evaluate import main as evaluate
from tplo.pruning import prune
from tplo.eval.compare import Run, load_run, main, markdown_table, table_rows, unique_names
from test_eval_cli import write_statements
from tiny_tokenizers import char_tokenizer
from tiny_models import tiny_model, token_batches


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """runs/dense (evaluation only) and runs/owl50 (pruned model dir with both JSON files)."""
    root = tmp_path_factory.mktemp("report")
    statements = write_statements(root / "statements")
    text = root / "text.txt"
    text.write_text("Held-out words for perplexity. " * 3)
    for name, config in (("dense", None), ("owl50", PruneConfig(sparsity=0.5, method="owl"))):
        model_dir = root / "runs" / name / "model"
        model = tiny_model("llama")
        if config is not None:
            prune(model, token_batches(), config=config, progress=False).save(model_dir / "pruning_report.json")
        model.save_pretrained(model_dir)
        char_tokenizer().save_pretrained(model_dir)
        extra = ["--perplexity-text", str(text), "--seqlen", "16"] if config else []
        assert evaluate([str(model_dir), "--out", str(root / "runs" / name / "eval"), "--statements", str(statements),
                         "--repeats", "2", "--no-cache", *extra]) == 0
    return root / "runs" / "dense", root / "runs" / "owl50"


def test_report_on_two_runs_writes_the_table_and_both_figures(runs, tmp_path, capsys):
    assert main([str(r) for r in runs] + ["--out", str(tmp_path)]) == 0
    table = (tmp_path / "report.md").read_text()
    assert "| run | method | scorer | sparsity | LR best | TTPD best | LR paper layer | TTPD paper layer | " \
           "val best (training) | perplexity |" in table
    dense_row = next(l for l in table.splitlines() if l.startswith("| dense |"))
    owl_row = next(l for l in table.splitlines() if l.startswith("| owl50 |"))
    assert "| dense | – | 0.0% |" in dense_row and dense_row.endswith("| – | – |")
    report = json.loads(next(runs[1].rglob("pruning_report.json")).read_text())
    evaluation = json.loads(next(runs[1].rglob("evaluation.json")).read_text())
    assert f"| owl | wanda | {report['global_sparsity']:.1%} |" in owl_row
    best = evaluation["lie_detection"]["best"]["lr"]
    assert f"{best['mean']:.3f} ± {best['std']:.3f} (L{best['layer']})" in owl_row
    assert owl_row.endswith(f"| – | {evaluation['perplexity']['perplexity']:.2f} |")
    printed = capsys.readouterr().out
    assert dense_row in printed and owl_row in printed
    for png in ("probe_accuracy.png", "sparsity_allocation.png"):
        image = imread(tmp_path / png)
        assert image.shape[0] > 100 and image.shape[1] > 100
        assert image[..., :3].std() > 0.01  # something was drawn


def test_table_cells_from_hand_made_documents(tmp_path):
    evaluation = {"lie_detection": {"best": {"lr": {"layer": 13, "mean": 0.8764, "std": 0.0123},
                                             "ttpd": {"layer": 12, "mean": 0.9, "std": 0.0}},
                                    "paper": {"lr": {"layer": 13, "mean": 0.8764, "std": 0.0123}, "ttpd": None}},
                  "harness": {"results": {"truthfulqa_mc1": {"acc": 0.25, "acc_stderr": 0.0433},
                                          "truthfulqa_mc2": {"acc": 0.41234, "acc_stderr": "N/A"}}},
                  "perplexity": None}
    pruning = {"method": "tplo", "scorer": "wanda", "global_sparsity": 0.5, "layers": []}
    rows = table_rows([Run("x", tmp_path, pruning, evaluation), Run("y", tmp_path, None, None)])
    assert rows[0] == {"run": "x", "method": "tplo", "scorer": "wanda", "sparsity": "50.0%",
                       "LR best": "0.876 ± 0.012 (L13)", "TTPD best": "0.900 ± 0.000 (L12)",
                       "LR paper layer": "0.876 ± 0.012 (L13)", "TTPD paper layer": "–",
                       "val best (training)": "–", "truthfulqa_mc1 acc": "0.250 ± 0.043",
                       "truthfulqa_mc2 acc": "0.412", "perplexity": "–"}
    assert rows[1]["method"] == "dense" and rows[1]["sparsity"] == "0.0%" and rows[1]["LR best"] == "–"
    assert markdown_table([Run("y", tmp_path, None, None)]).count("\n") == 3


def test_run_names_and_missing_files(tmp_path):
    assert unique_names(["/r/a/model", "/r/b/model"]) == ["a/model", "b/model"]
    assert unique_names(["/r/a", "/r/b"]) == ["a", "b"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="neither .* nor TensorBoard events"):
        load_run(tmp_path / "empty")
    assert main([str(tmp_path / "absent"), "--out", str(tmp_path / "o")]) == 2


def test_a_training_run_without_evaluation_shows_its_logged_validation_accuracy(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    run = tmp_path / "runs" / "quickstart" / "version_0"
    with SummaryWriter(log_dir=str(run)) as writer:
        for epoch, accs in enumerate([[0.5, 0.6, 0.55], [0.5, 0.7, 0.65]]):
            for layer, acc in enumerate(accs):
                writer.add_scalar(f"val/acc/layer_{layer:02d}", acc, epoch)
    (run / "pruning_report.json").write_text(json.dumps({"method": "tplo", "scorer": "wanda", "global_sparsity": 0.5,
                                                         "layers": []}))
    loaded = load_run(tmp_path / "runs" / "quickstart")
    assert loaded.validation == pytest.approx([0.5, 0.7, 0.65])  # the last logged value of each layer
    assert table_rows([loaded])[0]["val best (training)"] == "0.700 (L1)"
    assert main([str(tmp_path / "runs" / "quickstart"), "--out", str(tmp_path / "out")]) == 0
    image = imread(tmp_path / "out" / "probe_accuracy.png")
    assert image[..., :3].std() > 0.01

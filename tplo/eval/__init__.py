"""Evaluation of (pruned) models, an independent tool with its own dependencies (`pip install tplo[eval]`).

- `python -m tplo.eval MODEL --out DIR`: lie detection (the reference protocol), lm-eval-harness tasks,
  perplexity; writes `DIR/evaluation.json` and TensorBoard scalars (`tplo.eval.evaluate`).
- `python -m tplo.eval.compare RUN_DIR...`: one table and two figures over several runs (`tplo.eval.compare`).
"""

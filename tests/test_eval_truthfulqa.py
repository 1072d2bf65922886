"""TruthfulQA MC1/MC2 on hand-made log-likelihoods, and answer scoring on a tiny model."""

import math

import pytest
import torch

from tplo.truthfulqa_mc import (
    INSTRUCTION, MCItem, build_prompt, continuation_loglikelihoods, item_scores, mc1, mc2, truthfulqa_mc,
)
from tiny_models import tiny_model
from tiny_tokenizers import char_tokenizer


def test_mc1_requires_the_best_answer_to_beat_every_incorrect_one():
    assert mc1(-1.0, [-2.0, -3.0]) == 1.0
    assert mc1(-1.0, [-2.0, -0.5]) == 0.0
    assert mc1(-1.0, [-1.0, -4.0]) == 0.0  # a tie is not a win


def test_mc2_against_hand_computed_values():
    assert mc2([math.log(0.2), math.log(0.1)], [math.log(0.3), math.log(0.4)]) == pytest.approx(0.3)
    # e^-1 + e^-2 = 0.503214724, + e^-3 = 0.553001792
    assert mc2([-1.0, -2.0], [-3.0]) == pytest.approx(0.503214724 / 0.553001792, rel=1e-8)
    # far below exp's range: still 3:1
    assert mc2([-1000.0], [-1000.0 - math.log(3)]) == pytest.approx(0.75)


def test_item_scores_pick_the_best_answer_among_the_correct_ones():
    item = MCItem.from_answers("Q?", "Best", ["Other true", "Best."], ["Wrong", "Also wrong."])
    assert item.true == ("Best.", "Other true.") and item.false == ("Wrong.", "Also wrong.")
    # the best answer loses to "Wrong." although another true answer wins: MC1 = 0
    got = item_scores(item, [-2.0, -0.1], [-1.0, -5.0])
    true_mass = math.exp(-2.0) + math.exp(-0.1)
    expected_mc2 = true_mass / (true_mass + math.exp(-1.0) + math.exp(-5.0))
    assert got == (0.0, pytest.approx(expected_mc2))
    assert item_scores(item, [-0.5, -3.0], [-1.0, -5.0])[0] == 1.0


def test_item_without_incorrect_answers_is_rejected():
    with pytest.raises(ValueError, match="no incorrect answers"):
        MCItem.from_answers("Q?", "A", ["A"], [" "])


def test_prompt_ends_with_the_question_after_instruction_and_primer():
    prompt = build_prompt("Is the sky blue?")
    assert prompt.startswith(INSTRUCTION) and prompt.endswith("\n\nQ: Is the sky blue?\nA:")
    assert prompt.count("Q: ") == 7


def test_continuation_loglikelihoods_match_unpadded_single_sequence_scoring():
    model, tok = tiny_model("llama"), char_tokenizer()
    context, answers = "Q: x?\nA:", [" yes.", " no it is not."]
    got = continuation_loglikelihoods(model, tok, context, answers, batch_size=2)
    for answer, score in zip(answers, got):
        ids = torch.tensor([tok(context + answer)["input_ids"]])
        logprobs = model(input_ids=ids).logits[0, :-1].float().log_softmax(-1)
        n_ctx = len(tok(context)["input_ids"])
        expected = sum(logprobs[t - 1, ids[0, t]].item() for t in range(n_ctx, ids.shape[1]))
        assert score == pytest.approx(expected, abs=1e-4)
    assert got == pytest.approx(continuation_loglikelihoods(model, tok, context, answers, batch_size=1), abs=1e-5)


def test_truthfulqa_mc_averages_per_question_scores():
    model, tok = tiny_model("gpt2"), char_tokenizer()
    items = [MCItem.from_answers("Hi?", "Yes", ["Yes", "Sure"], ["No"]),
             MCItem.from_answers("Ok?", "A", [], ["B", "C"])]
    result = truthfulqa_mc(model, tok, items, instruction="", primer="Q: a?\nA: b.")
    expected = []
    for item in items:
        prompt = build_prompt(item.question, "", "Q: a?\nA: b.")
        s = continuation_loglikelihoods(model, tok, prompt, [" " + a for a in item.true + item.false])
        expected.append(item_scores(item, s[: len(item.true)], s[len(item.true):]))
    assert result["n"] == 2
    assert result["mc1"] == pytest.approx(sum(e[0] for e in expected) / 2)
    assert result["mc2"] == pytest.approx(sum(e[1] for e in expected) / 2)
    assert 0 < result["mc2"] < 1

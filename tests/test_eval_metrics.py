"""Evaluation metrics against hand-made cases: option letters, answer metrics, confusion matrix, tables."""

from __future__ import annotations

import pytest
import torch

from trainer_fixtures import builtin_plugins, one_torch_thread  # noqa: F401  (autouse fixtures)


@pytest.fixture(scope="module")
def heads():
    from longllava_sdk.registry import available_heads

    return available_heads()


@pytest.mark.parametrize("text, letter", [
    ("B", "B"), ("(B)", "B"), ("B.", "B"), ("b", "B"), ("[C]", "C"), ("D)", "D"),
    ("Answer: B", "B"), ("answer: c", "C"), ("Answer: (A)", "A"), ("the answer is b) blue", "B"),
    ("The correct option is a.", "A"), ("I think the answer is C", "C"), ("Option D", "D"),
    ("b) blue", "B"), ("C. red", "C"), ("(A) ZEBRA", "A"), ("C: 3", "C"),
    ("I would pick (D) because it is green", "D"), ("so B", "B"), ("Answer: B because", "B"),
    # no option named: articles, pronouns, words, nothing
    ("A dog", None), ("I think so", None), ("the answer is a dog", None), ("answer is blue", None),
    ("blue", None), ("", None),
])
def test_option_letters_are_parsed_robustly(text, letter):
    from longllava_plugins.heads import parse_option_letter

    assert parse_option_letter(text) == letter


def test_only_a_bare_letter_is_a_choice_reference():
    from longllava_plugins.heads import option_letter_reference

    assert [option_letter_reference(r) for r in ["B", "(c)", " D. ", "a"]] == ["B", "C", "D", "A"]
    assert [option_letter_reference(r) for r in ["B cells", "yes", "AB", ""]] == [None, None, None, None]


def test_answer_metrics_score_each_reference_kind_by_its_rule():
    from longllava_plugins.heads import answer_metrics

    predictions = ["Answer: A", "(C)", "yes, there is", "left lower lobe", "the answer is b) blue", "A dog"]
    references = ["A", "B", "yes", "left lobe", "B", "A"]
    m = answer_metrics(predictions, references)
    assert (m["n_choice"], m["n_closed"], m["n_open"]) == (4, 1, 1)
    # choice: A right, C wrong, b) right, "A dog" names no option -> 2 / 4
    assert m["choice_accuracy"] == pytest.approx(0.5)
    assert m["closed_accuracy"] == 1.0
    # open: "left lower lobe" vs "left lobe": precision 2/3, recall 1 -> F1 0.8
    assert m["open_token_f1"] == pytest.approx(0.8) and m["open_recall"] == 1.0
    # accuracy over all: choice by letter (2 right), closed and open by exact match (both wrong)
    assert m["accuracy"] == pytest.approx(2 / 6)
    # token F1 over all: a choice item counts as its letter (1 / 0), the rest by token overlap
    closed_f1 = 2 * (1 / 3) * 1 / (1 / 3 + 1)  # "yes there is" vs "yes"
    assert m["token_f1"] == pytest.approx((1 + 0 + closed_f1 + 0.8 + 1 + 0) / 6)


def test_the_article_a_is_no_longer_lost_in_choice_references():
    """normalize_answer drops "a": option A used to equal the empty answer."""
    from longllava_plugins.heads import answer_metrics

    assert answer_metrics([""], ["A"])["accuracy"] == 0.0
    assert answer_metrics(["(A)"], ["A"])["accuracy"] == 1.0


def test_classify_metrics_carry_the_confusion_matrix(heads):
    head = heads["classify"](8, ["forest", "river", "urban"])
    predictions = torch.tensor([0, 0, 1, 2, 2, 2])
    targets = torch.tensor([0, 1, 1, 2, 0, 2])
    m = head.metrics(predictions, targets)
    assert m["confusion/forest/forest"] == 1 and m["confusion/forest/urban"] == 1
    assert m["confusion/river/forest"] == 1 and m["confusion/river/river"] == 1
    assert m["confusion/urban/urban"] == 2
    assert "confusion/urban/river" not in m  # empty cells are left out
    assert sum(v for k, v in m.items() if k.startswith("confusion/")) == 6
    diagonal = sum(m[f"confusion/{c}/{c}"] for c in head.labels)
    assert diagonal == pytest.approx(m["accuracy"] * 6)


def test_the_report_rebuilds_the_matrix_from_the_heads_labels(heads):
    from longllava_sdk.evaluation.runner import confusion_matrix
    from longllava_sdk.evaluation.tables import metrics_table

    head = heads["classify"](8, ["a/b", "c"])  # a label with a slash is still read right
    m = head.metrics(torch.tensor([0, 1, 1]), torch.tensor([0, 0, 1]))
    assert confusion_matrix(m, head.labels) == {"labels": ["a/b", "c"], "matrix": [[1, 1], [0, 1]]}
    assert confusion_matrix({"accuracy": 1.0}, head.labels) is None
    table = metrics_table(m, head.labels)
    assert "confusion matrix" in table and "gold \\ predicted" in table


def test_multilabel_metrics_table_has_a_row_per_label(heads):
    from longllava_sdk.evaluation.tables import metrics_table

    head = heads["multilabel"](8, ["nodule", "effusion"])
    m = head.metrics(torch.tensor([[1, 0], [1, 1]]), torch.tensor([[1, 0], [0, 1]], dtype=torch.float32))
    table = metrics_table(m, head.labels)
    rows = {line.split()[0]: line.split()[1:] for line in table.splitlines() if line.startswith(("nodule", "effusion"))}
    header = next(line.split() for line in table.splitlines() if line.startswith("label"))
    assert header[1:] == ["accuracy", "precision", "recall", "f1"]
    assert rows["nodule"] == ["0.500", "0.500", "1.000", "0.667"] and rows["effusion"] == ["1.000"] * 4
    assert "macro_f1" in table


def test_scores_go_through_the_head(heads):
    from longllava_sdk.evaluation.predict import item_score, score

    generate = heads["generate"](8)
    assert score(generate, ["Answer: B", "no"], ["B", "yes"])["accuracy"] == 0.5
    assert item_score(generate, "(B)", "B") == 1.0
    classify = heads["classify"](8, ["x", "y"])
    assert score(classify, [1, 1], [1, 0])["confusion/y/y"] == 1
    assert item_score(classify, 0, 1) == 0.0
    multilabel = heads["multilabel"](8, ["x", "y"])
    assert item_score(multilabel, [1, 0], [1.0, 1.0]) == 0.5  # one of two decisions right


def test_chance_baselines_are_the_scores_of_input_blind_predictors(heads):
    """Balanced k classes: random accuracy 1/k; majority = the most common class's rate."""
    from longllava_sdk.chance import chance_baselines
    from longllava_sdk.evaluation.predict import score

    head = heads["classify"](16, ["a", "b", "c", "d"])
    balanced = [0, 1, 2, 3] * 25
    chance = chance_baselines(lambda p, t: score(head, p, t), balanced)
    assert chance["accuracy"]["majority"] == pytest.approx(0.25)
    assert chance["accuracy"]["random"] == pytest.approx(0.25, abs=0.03)
    assert chance["macro_f1"]["majority"] == pytest.approx(2 * 0.25 / 1.25 / 4)  # one class right, recall 1
    skewed = [0] * 80 + [1] * 20
    chance = chance_baselines(lambda p, t: score(head, p, t), skewed)
    assert chance["accuracy"]["majority"] == pytest.approx(0.8)
    assert chance["accuracy"]["random"] == pytest.approx(0.8 ** 2 + 0.2 ** 2, abs=0.03)
    assert not any("/" in key for key in chance)  # per-label scores and counts get no baseline
    assert chance == chance_baselines(lambda p, t: score(head, p, t), skewed)  # deterministic

    multilabel = heads["multilabel"](16, ["x", "y"])
    rows = [[1, 0]] * 6 + [[0, 1]] * 3 + [[1, 1]]
    chance = chance_baselines(lambda p, t: score(multilabel, p, t), rows)
    assert chance["subset_accuracy"]["majority"] == pytest.approx(0.6)
    generate = heads["generate"](16, [])
    chance = chance_baselines(lambda p, t: score(generate, p, t), ["yes"] * 3 + ["no"])
    assert chance["accuracy"]["majority"] == pytest.approx(0.75)


def test_metrics_table_shows_the_chance_columns_and_the_demo_note():
    from longllava_sdk.evaluation.tables import metrics_table, random_weights_note

    table = metrics_table({"accuracy": 0.5, "loss": 1.2}, chance={"accuracy": {"majority": 0.6667, "random": 0.5556}})
    lines = table.splitlines()
    assert lines[0].split() == ["metric", "value", "chance:", "majority", "chance:", "random"]
    assert lines[2].split() == ["accuracy", "0.5", "0.6667", "0.5556"] and lines[3].split() == ["loss", "1.2", "-", "-"]
    assert random_weights_note(None) is None
    assert "holds random weights (tiny preset, seed 0), never trained" in random_weights_note("tiny preset, seed 0")
    assert "trained 4 steps on 9 rows" in random_weights_note("tiny preset, seed 0", 4, 9)

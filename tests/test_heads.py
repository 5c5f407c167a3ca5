"""The built-in task heads: registration, losses, metrics, saving / loading, Pipeline restore."""

from __future__ import annotations

import math

import pytest
import torch

from longllava_sdk.errors import CheckpointError, ConfigError
from trainer_fixtures import builtin_plugins, one_torch_thread  # noqa: F401  (autouse fixtures)
from trainer_fixtures import make_micro_model, square_image


@pytest.fixture(scope="module")
def heads():
    from longllava_sdk.registry import available_heads

    return available_heads()


def test_builtin_heads_registered_through_the_hook(heads):
    assert {"generate", "multilabel", "classify"} <= set(heads)
    assert heads["generate"].problem_type == "generate"
    assert heads["multilabel"].problem_type == "multi_label"
    assert heads["classify"].problem_type == "single_label"


def test_answer_normalisation_and_closed_open_metrics():
    from longllava_plugins.heads import answer_metrics, normalize_answer

    assert normalize_answer("  The Left Lung!  ") == "left lung"
    scores = answer_metrics(["Yes, there is.", "no", "left upper lobe", "the liver"],
                            ["yes", "yes", "left lower lobe", "Liver."])
    assert scores["n_closed"] == 2 and scores["n_open"] == 2
    assert scores["closed_accuracy"] == 0.5  # "yes, there is" counts, "no" does not
    # open: "left upper lobe" vs "left lower lobe": 2 of 3 tokens -> F1 2/3; "liver" exact -> 1
    assert scores["open_token_f1"] == pytest.approx((2 / 3 + 1.0) / 2)
    assert scores["open_recall"] == pytest.approx((2 / 3 + 1.0) / 2)
    assert scores["accuracy"] == pytest.approx(1 / 4)  # only "the liver" == "Liver." after normalising
    # BLEU-1 of an exact match is 1; a shorter prediction is penalised by the brevity penalty
    assert answer_metrics(["left"], ["left lobe"])["bleu1"] == pytest.approx(math.exp(1 - 2 / 1))


def test_multilabel_metrics_per_label_and_macro(heads):
    head = heads["multilabel"](8, ["nodule", "effusion", "emphysema"])
    predictions = torch.tensor([[1, 0, 0], [1, 1, 0], [0, 0, 0], [0, 1, 1]])
    targets = torch.tensor([[1, 0, 0], [0, 1, 0], [1, 0, 0], [0, 1, 0]], dtype=torch.float32)
    m = head.metrics(predictions, targets)
    # nodule: tp 1, fp 1, fn 1 -> p = r = f1 = 0.5 ; effusion: tp 2 -> 1 ; emphysema: fp 1 -> 0
    assert m["precision/nodule"] == 0.5 and m["recall/nodule"] == 0.5 and m["f1/nodule"] == 0.5
    assert m["f1/effusion"] == 1.0 and m["f1/emphysema"] == 0.0
    assert m["accuracy/nodule"] == 0.5 and m["accuracy/emphysema"] == 0.75
    assert m["macro_f1"] == pytest.approx(0.5)
    assert m["accuracy"] == pytest.approx(9 / 12)
    assert m["subset_accuracy"] == pytest.approx(1 / 4)  # only the first row is entirely right


def test_classify_metrics_macro_over_present_labels(heads):
    head = heads["classify"](8, ["forest", "river", "urban", "farmland"])
    predictions = torch.tensor([0, 0, 1, 2, 2])
    targets = torch.tensor([0, 1, 1, 2, 0])
    m = head.metrics(predictions, targets)
    # forest: tp1 fp1 fn1 -> f1 .5 ; river: tp1 fn1 -> 2/3 ; urban: tp1 fp1 -> 2/3 ; farmland absent
    assert m["accuracy"] == pytest.approx(3 / 5)
    assert m["macro_f1"] == pytest.approx((0.5 + 2 / 3 + 2 / 3) / 3)


def test_heads_forward_loss_and_gradients(heads):
    hidden = torch.randn(3, 7, 16, requires_grad=True)
    mask = torch.tensor([[1] * 7, [1] * 4 + [0] * 3, [0] * 7])
    classify = heads["classify"](16, ["a", "b", "c"], dropout=0.0)
    logits = classify(hidden, mask)
    assert logits.shape == (3, 3)
    loss = classify.loss(logits, torch.tensor([0, 2, 1]))
    loss.backward()
    assert torch.isfinite(loss) and classify.classifier.weight.grad.abs().sum() > 0
    # padded positions do not change the pooled state
    changed = hidden.detach().clone()
    changed[1, 4:] = 100.0
    assert torch.allclose(classify(changed, mask)[1], classify(hidden.detach(), mask)[1])
    multi = heads["multilabel"](16, ["x", "y"])
    assert multi.loss(multi(hidden, mask), torch.tensor([[1, 0], [0, 1], [1, 1]]).float()).ndim == 0
    generate = heads["generate"](16)
    token_logits = torch.randn(2, 5, 11)
    labels = torch.tensor([[-100, -100, 3, 4, 2], [-100, 1, 2, -100, -100]])
    expected = torch.nn.functional.cross_entropy(token_logits[:, :-1].reshape(-1, 11), labels[:, 1:].reshape(-1))
    assert torch.allclose(generate.loss(token_logits, labels), expected)


def test_head_config_validation(heads):
    with pytest.raises(ConfigError):
        heads["classify"](16, [])
    with pytest.raises(ConfigError):
        heads["classify"](16, ["a", "a"])
    with pytest.raises(ConfigError):
        heads["multilabel"](16, ["a"], dropout=1.5)


def test_head_save_and_load_round_trip(tmp_path, heads):
    from longllava_sdk.model_folders import load_head, save_head

    head = heads["multilabel"](16, ["x", "y", "z"], dropout=0.2).eval()
    save_head(head, tmp_path)
    restored = load_head(tmp_path)
    assert type(restored) is type(head) and restored.labels == ["x", "y", "z"] and restored.dropout_p == 0.2
    hidden, mask = torch.randn(2, 5, 16), torch.ones(2, 5)
    assert torch.equal(restored(hidden, mask), head(hidden, mask))
    generate_dir = tmp_path / "gen"
    save_head(heads["generate"](16), generate_dir)
    assert load_head(generate_dir).generates  # restored, and the pipeline generates with the LM instead
    assert not (generate_dir / "head.safetensors").exists()  # no weights to store


def test_head_load_errors_are_typed(tmp_path, heads):
    from safetensors.torch import save_file

    from longllava_sdk.model_folders import load_head, save_head

    (tmp_path / "head_config.json").write_text('{"name": "no-such-head", "problem_type": "single_label"}')
    with pytest.raises(CheckpointError, match="no-such-head"):
        load_head(tmp_path)
    other = tmp_path / "other"
    save_head(heads["classify"](16, ["a", "b"]), other)
    save_file({"classifier.weight": torch.zeros(3, 16), "classifier.bias": torch.zeros(3)},
              str(other / "head.safetensors"))
    with pytest.raises(CheckpointError, match="does not match"):
        load_head(other)


def test_pipeline_restores_a_classification_head(tmp_path, heads):
    from longllava_sdk import Pipeline
    from longllava_sdk.model_folders import save_head, save_model
    from longllava_sdk.modeling.task_model import TaskModel

    model, processor = make_micro_model()
    head = heads["classify"](model.config.text_config.hidden_size, ["red", "green", "blue"], dropout=0.0)
    with torch.no_grad():
        head.classifier.weight.normal_()
    save_model(model, processor, tmp_path / "m")
    save_head(head, tmp_path / "m")
    pipe = Pipeline.from_pretrained(tmp_path / "m", device="cpu")
    assert pipe.head is not None and pipe.head.labels == ["red", "green", "blue"]
    result = pipe.classify("What colour is the square?", images=[square_image("red")])
    assert set(result["scores"]) == {"red", "green", "blue"}
    assert sum(result["scores"].values()) == pytest.approx(1.0)
    assert result["labels"] == [max(result["scores"], key=result["scores"].get)]
    # the same numbers as the training-time forward on the same prompt
    batch = processor(messages=[{"role": "user", "content": "What colour is the square?",
                                 "media": [square_image("red")]}], add_generation_prompt=True)
    with torch.no_grad():
        logits = TaskModel(model.eval(), head.eval())(**batch)["logits"][0]
    assert torch.allclose(logits.softmax(-1), torch.tensor(list(result["scores"].values())), atol=1e-5)
    plain = Pipeline.from_pretrained(tmp_path / "m", device="cpu")
    (tmp_path / "m" / "head_config.json").unlink()
    with pytest.raises(ValueError, match="no task head"):
        Pipeline.from_pretrained(tmp_path / "m", device="cpu").classify("x", images=[square_image("red")])
    assert plain.head is not None

"""Training data: formats, whole-dataset validation, lazy dataset, collation."""

from __future__ import annotations

import importlib
import json
import os
import shutil
from pathlib import Path

import pytest
from conftest import head_for
import torch
from PIL import Image, ImageDraw

from longllava_sdk import LongLLaVAConfig, LongLLaVAProcessor
from longllava_sdk.errors import DatasetError, InputError
from longllava_sdk.processing import IGNORE_INDEX
from longllava_sdk.recipes import Recipe
from longllava_sdk.training import data as data_mod
from longllava_sdk.training.collator import TrainingCollator
from longllava_sdk.training.data import (
    MediaLoader,
    SampleCache,
    prepare_datasets,
    read_rows,
    resolve_data_path,
    split_rows,
    validate_rows,
)

DOMAINS = Path(__file__).resolve().parents[1] / "domains"
CT_SERIES = DOMAINS / "medical" / "data" / "ct" / "series_01"


@pytest.fixture(scope="module", autouse=True)
def builtin_adapters():
    """The built-in adapters, through their entry points, or registered here if the install predates them."""
    from longllava_sdk.registry import available_adapters
    from longllava_sdk.plugin_manager import get_plugin_manager

    manager = get_plugin_manager()
    for name in ("images", "dicom"):
        if name not in available_adapters() and not manager.has_plugin(name):
            manager.register(importlib.import_module(f"longllava_plugins.{name}"), name=name)
    assert {"images", "dicom"} <= set(available_adapters())


@pytest.fixture(scope="module")
def proc():
    return LongLLaVAProcessor.for_config(LongLLaVAConfig.from_preset("tiny"))


def _png(path: Path, colour=(255, 0, 0), size=(48, 40)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.new("RGB", size, (128, 128, 128))
    ImageDraw.Draw(image).rectangle([8, 8, 30, 30], fill=colour)
    image.save(path)
    return path


def _jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def _conv(question: str, answer: str) -> list[dict]:
    return [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]


@pytest.fixture
def root(tmp_path):
    data = tmp_path / "data"
    _png(data / "img" / "red.png", (255, 0, 0))
    _png(data / "img" / "green.png", (0, 255, 0))
    _png(data / "img" / "blue.png", (0, 0, 255))
    shutil.copytree(CT_SERIES, data / "ct" / "series_01")
    return data


# -- formats ---------------------------------------------------------------------------------


def test_llava_rows_map_markers_to_sources_in_order(root, proc):
    path = _jsonl(root / "train.jsonl", [
        {"id": "two", "image": ["img/red.png", "img/green.png"],
         "conversations": _conv("Left <image> right <image>. Which is red?", "the left one")},
        {"id": "multi", "image": "img/blue.png",
         "volume": {"path": "ct/series_01", "adapter": "dicom", "options": {"window": "lung"}},
         "conversations": [{"from": "human", "value": "<image>\nColour?"}, {"from": "gpt", "value": "blue"},
                           {"from": "human", "value": "And this CT <image>?"}, {"from": "gpt", "value": "a chest"}]},
        {"id": "nomarker", "image": "img/red.png", "conversations": _conv("What colour?", "red")},
        {"id": "text", "conversations": _conv("Say hi", "hi")},
    ])
    data = prepare_datasets(proc, data_path=path, max_length=4096)
    by_id = {data.train.rows[i].id: data.train[i] for i in range(len(data.train))}
    tpi = proc.tokens_per_image
    two = by_id["two"]
    assert [img.getpixel((15, 15)) for img in two.images] == [(255, 0, 0), (0, 255, 0)]
    assert two.input_ids.count(proc.image_token_id) == 2 * tpi
    multi = by_id["multi"]  # 1 image then a 4-slice DICOM volume windowed as asked
    assert len(multi.images) == 1 + 4
    assert multi.images[0].getpixel((15, 15)) == (0, 0, 255)
    text = proc.tokenizer.decode([i for i in multi.input_ids if i != proc.image_token_id])
    assert text.index("Colour?") < text.index("And this CT") and text.count("<img>") == 5
    answers = proc.tokenizer.decode([t for t in multi.labels if t != IGNORE_INDEX])
    assert "blue" in answers and "a chest" in answers and "Colour" not in answers
    assert len(by_id["nomarker"].images) == 1 and len(by_id["text"].images) == 0
    # lengths from validation are the real token counts, images at tokens_per_image each
    assert data.train.lengths == [len(data.train[i].input_ids) for i in range(len(data.train))]


def test_manifest_rows_use_recipe_templates_and_head_labels(root, proc, tmp_path):
    (root / "scenes.csv").write_text(
        "id,source,labels,split\n"
        "a,img/red.png,forest,train\n"
        "b,img/green.png,water,train\n"
        "c,img/blue.png,forest,eval\n"
    )
    recipe = Recipe.from_dict({
        "name": "toy", "head": {"type": "classify", "labels": ["forest", "water"]},
        "prompts": {"question": "Which class: {label_list}?", "label_answer": "It is {labels}."},
        "data": {"path": str(root / "scenes.csv")},
    })
    data = prepare_datasets(proc, recipe, max_length=2048, head=head_for(recipe))
    assert len(data.train) == 2 and len(data.eval) == 1 and data.head.name == "classify"
    sample = data.train[1]
    assert sample.head_labels == 1 and sample.sample_id == "b"
    text = proc.tokenizer.decode(sample.input_ids[: sample.input_ids.index(proc.image_token_id)] +
                                 [i for i in sample.input_ids if i != proc.image_token_id][-30:])
    assert "Which class: forest, water?" in text and "It is water." in text

    (root / "multi.jsonl").write_text(
        json.dumps({"source": "img/red.png", "labels": ["x", "z"]}) + "\n" +
        json.dumps({"source": "img/red.png", "labels": "y;z"}) + "\n" +
        json.dumps({"source": "img/red.png", "labels": ""}) + "\n" +
        json.dumps({"source": "img/red.png", "question": "Colour?", "answer": "red"}) + "\n"
    )
    multilabel = Recipe.from_dict({"name": "ml", "head": {"type": "multilabel", "labels": ["x", "y", "z"]}})
    rows = read_rows(root / "multi.jsonl", recipe=multilabel)
    assert [r.labels for r in rows] == [["x", "z"], ["y", "z"], [], None]
    assert rows[2].turns[1]["content"] == "none"  # the no_labels template
    assert rows[3].turns == [{"role": "user", "content": "<image>\nColour?"}, {"role": "assistant", "content": "red"}]
    data = prepare_datasets(proc, multilabel, data_path=root / "multi.jsonl", max_length=2048, skip_invalid=True,
                            head=head_for(multilabel))
    assert [data.train[i].head_labels for i in range(3)] == [[1.0, 0.0, 1.0], [0.0, 1.0, 1.0], [0.0, 0.0, 0.0]]
    assert len(data.skipped) == 1 and "no 'labels'" in data.skipped[0]  # the Q/A row has no labels


# -- validation -------------------------------------------------------------------------------


def test_every_bad_row_is_reported_at_once(root, proc, tmp_path):
    outside = _png(tmp_path / "outside.png")
    os.symlink(outside, root / "img" / "sneaky.png")
    (root / "img" / "broken.png").write_bytes((root / "img" / "red.png").read_bytes()[:60])
    good = {"image": "img/red.png", "conversations": _conv("<image> Colour?", "red")}
    rows = [
        {"id": "ok1", **good},
        {"id": "missing", "image": "img/nope.png", "conversations": _conv("<image> ?", "x")},
        {"id": "escape", "image": "../outside.png", "conversations": _conv("<image> ?", "x")},
        {"id": "absolute", "image": str(outside), "conversations": _conv("<image> ?", "x")},
        {"id": "symlink", "image": "img/sneaky.png", "conversations": _conv("<image> ?", "x")},
        {"id": "mismatch", "image": "img/red.png", "conversations": _conv("<image> and <image>?", "x")},
        {"id": "unreadable", "image": "img/broken.png", "conversations": _conv("<image> ?", "x")},
        {"id": "toolong", "image": ["img/red.png"] * 4, "conversations": _conv("<image>" * 4, "x")},
        {"id": "empty", "conversations": []},
        {"id": "noanswer", "image": "img/red.png", "conversations": [{"from": "human", "value": "<image> hello"}]},
        '{"id": "badjson", ',
        {"id": "ok2", **good},
        {"id": "badfrom", "conversations": [{"from": "robot", "value": "x"}, {"from": "gpt", "value": "y"}]},
    ]
    path = _jsonl(root / "bad.jsonl", rows)
    with pytest.raises(DatasetError) as caught:
        prepare_datasets(proc, data_path=path, max_length=3 * proc.tokens_per_image)
    problems = caught.value.problems
    text = "\n".join(problems)
    expected = {
        "missing": "file not found",
        "escape": "leaves the data root",
        "absolute": "absolute path leaves the data root",
        "symlink": "through a symlink",
        "mismatch": "placeholder/media count mismatch",
        "unreadable": "unreadable source",
        "toolong": "too long for the context even alone",
        "empty": "empty conversation",
        "noanswer": "no assistant turn",
        "badfrom": "unknown 'from'",
    }
    for row_id, problem in expected.items():
        line = next((p for p in problems if f"(id {row_id!r})" in p), None)
        assert line is not None, f"{row_id} not reported:\n{text}"
        assert problem in line, line
    assert "bad.jsonl line 11" in text and "not valid JSON" in text
    assert "ok1" not in text and "ok2" not in text
    reported = {p.split("(id ")[1].split(")")[0] for p in problems if "(id " in p}
    assert reported == {repr(i) for i in expected} | {"'bad-10'"}  # + the invalid JSON line (item index 10)
    where = list(dict.fromkeys(p.split(" (id")[0] for p in problems))
    assert where == sorted(where, key=lambda w: int(w.split()[-1]))  # listed in file order
    assert "corrupt or truncated" in next(p for p in problems if "'unreadable'" in p)  # the adapter's message
    assert f"4 images x {proc.tokens_per_image}" in next(p for p in problems if "'toolong'" in p)
    assert str(path) in str(caught.value) and f"{len(problems)} invalid row(s)" in str(caught.value)


def test_unknown_labels_and_classify_cardinality_are_reported(root, proc):
    (root / "m.csv").write_text("source,labels\nimg/red.png,cat\nimg/red.png,dog;cat\nimg/red.png,bird\n")
    recipe = Recipe.from_dict({"name": "c", "head": {"type": "classify", "labels": ["cat", "dog"]}})
    with pytest.raises(DatasetError) as caught:
        prepare_datasets(proc, recipe, data_path=root / "m.csv", max_length=2048, head=head_for(recipe))
    problems = caught.value.problems
    assert len(problems) == 2
    assert "m.csv line 3" in problems[0] and "exactly one label" in problems[0]
    assert "m.csv line 4" in problems[1] and "unknown label(s) ['bird']" in problems[1]


def test_resolve_data_path_rules(root, tmp_path):
    assert resolve_data_path("img/red.png", root) == (root / "img" / "red.png").resolve()
    assert resolve_data_path(str(root / "img" / "red.png"), root) == (root / "img" / "red.png").resolve()
    assert resolve_data_path("img/../img/red.png", root).name == "red.png"
    for bad, message in [("../x.png", "leaves the data root"), ("/etc/passwd", "absolute path leaves"),
                         ("http://example.com/a.png", "URLs"), ("img/none.png", "file not found")]:
        with pytest.raises(InputError, match=message):
            resolve_data_path(bad, root)


def test_validation_loads_media_once_and_cache_is_bounded(root, proc, monkeypatch):
    calls = []
    original = MediaLoader.load

    def counting(self, source, n_sources=1, paths=None):
        calls.append(source.path)
        return original(self, source, n_sources, paths)

    monkeypatch.setattr(MediaLoader, "load", counting)
    rows = [{"id": f"r{i}", "image": "img/red.png", "conversations": _conv("<image>?", "red")} for i in range(4)]
    path = _jsonl(root / "four.jsonl", rows)
    data = prepare_datasets(proc, data_path=path, max_length=1024, cache_images=2)
    assert len(calls) == 4  # validation: each source once
    assert data.train.cache.images == 2  # bounded: only the 2 newest samples are kept
    for i in range(4):
        data.train[i]
    assert len(calls) == 4 + 2  # rows 0-1 were evicted and decode again, rows 2-3 came from the cache
    assert data.train.cache.images == 0

    cache = SampleCache(max_images=3)
    sample = data.train[0]
    cache.put("a", sample), cache.put("b", sample), cache.put("c", sample), cache.put("d", sample)
    assert len(cache) == 3 and cache.take("a") is None and cache.take("d") is sample


def test_recipe_adapter_options_and_per_sample_budget(root, proc):
    (root / "vol.csv").write_text("id,source,answer\nct,ct/series_01,a chest CT\n")
    recipe = Recipe.from_dict({
        "name": "ct", "max_images": 3,
        "adapters": {"dicom": {"options": {"window": ["lung", "mediastinum", "bone"]}}},
    })
    loader = MediaLoader(root, recipe)
    rows = read_rows(root / "vol.csv", recipe=recipe)
    media = loader.load(rows[0].sources[0])
    assert len(media) == 3  # 4 slices sampled to the per-sample budget, first and last kept
    assert media.metadata[0]["slice_position"] < media.metadata[-1]["slice_position"]
    assert "lung" in str(media.metadata[0]["window"]) and "bone" in str(media.metadata[0]["window"])
    validate_rows(rows, proc, loader, max_length=2048)
    assert rows[0].num_images == 3 and rows[0].length > 3 * proc.tokens_per_image


def test_split_rows_by_column_or_seeded_fraction(root):
    rows = read_rows(_jsonl(root / "s.jsonl", [
        {"id": str(i), "conversations": _conv("q", "a"), **({"split": "eval"} if i == 2 else {})} for i in range(5)
    ]))
    train, held = split_rows(rows, eval_fraction=0.5)
    assert [r.id for r in held] == ["2"] and len(train) == 4  # the column wins
    for row in rows:
        row.split = None
    a = split_rows(rows, 0.4, seed=1)
    b = split_rows(rows, 0.4, seed=1)
    assert [r.id for r in a[1]] == [r.id for r in b[1]] and len(a[1]) == 2 and len(a[0]) == 3


def test_training_collator_pads_right_and_orders_images(root, proc):
    path = _jsonl(root / "c.jsonl", [
        {"id": "long", "image": ["img/red.png", "img/green.png"],
         "conversations": _conv("<image><image> Name both colours please", "red and green")},
        {"id": "short", "image": "img/blue.png", "conversations": _conv("<image>?", "blue")},
    ])
    data = prepare_datasets(proc, data_path=path, max_length=2048)
    samples = [data.train[0], data.train[1]]
    batch = TrainingCollator(proc, pad_to_multiple_of=8)(samples)
    n0, n1 = len(samples[0].input_ids), len(samples[1].input_ids)
    width = batch["input_ids"].shape[1]
    assert width % 8 == 0 and width >= max(n0, n1)
    assert batch["attention_mask"][1].tolist() == [1] * n1 + [0] * (width - n1)
    assert (batch["labels"][1, n1:] == IGNORE_INDEX).all()
    assert batch["input_ids"][1, :n1].tolist() == samples[1].input_ids
    assert batch["pixel_values"].shape == (3, 3, 336, 336)
    expected = proc.preprocess_images([samples[0].images[0], samples[0].images[1], samples[1].images[0]])
    assert torch.equal(batch["pixel_values"], expected)
    assert "head_labels" not in batch
    heads = TrainingCollator(proc)([data_mod.TrainingSample([1], [1], head_labels=[1.0, 0.0]),
                                    data_mod.TrainingSample([1, 2], [1, 2], head_labels=[0.0, 1.0])])
    assert heads["head_labels"].dtype == torch.float32 and heads["head_labels"].shape == (2, 2)


def test_manifest_fields_of_the_wrong_type_are_row_problems(tmp_path):
    """Fuzzing found an adapter given as an object crashing the loader: it is a row problem now."""
    path = tmp_path / "m.jsonl"
    path.write_text(json.dumps({"source": "x.png", "adapter": {"name": "dicom"}, "question": "q", "answer": "a"})
                    + "\n" + json.dumps({"source": "x.png", "adapter": ["images"], "answer": "a"}) + "\n"
                    + json.dumps({"source": ["a.dcm", {"b": 1}], "answer": "a"}) + "\n")
    rows = read_rows(path)
    assert ["'adapter' must be an adapter name" in " ".join(r.problems) for r in rows] == [True, True, False]
    assert "'source' must be a path" in rows[2].problems[0]
    with pytest.raises(InputError, match="a path must be a string"):
        resolve_data_path(3.5, tmp_path)

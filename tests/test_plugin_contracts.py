"""Plugin contract violations end in one PluginError line naming the distribution, the class and
the method, before any training work (issue 17 item 3); registry misses suggest the closest name
(issue 17 item 7); a plugin adapter of a new media kind works end to end (issue 16 item 4)."""

from __future__ import annotations

import importlib
import sys
import textwrap
import uuid

import pytest

from longllava_sdk.errors import ConfigError, PluginError, RegistryLookupError, unknown_name_error
from longllava_sdk.plugin_manager import get_plugin_manager, reset_plugin_manager

HEAD_MODULE = """
import torch
from longllava_sdk import hookimpl
from longllava_sdk.heads import TaskHead


class {cls}(TaskHead):
    name = "{name}"
    problem_type = "single_label"

    def __init__(self, hidden_size, labels):
        super().__init__(hidden_size, labels)
        self.linear = torch.nn.Linear(hidden_size, len(labels))

    @classmethod
    def check_labels(cls, labels):
        {check_labels}

    def forward(self, hidden_states, attention_mask):
        {forward}

    def loss(self, logits, targets):
        return torch.nn.functional.cross_entropy(logits, targets)

    def metrics(self, predictions, targets):
        {metrics}


@hookimpl
def longllava_register_heads():
    return [{cls}]
"""

GOOD = {"check_labels": "return []", "forward": "return self.linear(self.pool(hidden_states, attention_mask))",
        "metrics": "return {'accuracy': float((predictions == targets).float().mean())}"}


@pytest.fixture
def fake_dist(tmp_path, monkeypatch):
    """``fake_dist(dist, module_source)``: a distribution announcing one ``longllava_sdk`` entry point."""
    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))
    created = []

    def make(dist: str, source: str, version: str = "2.0") -> str:
        module = f"fake_contract_{uuid.uuid4().hex[:8]}"
        (site / f"{module}.py").write_text(textwrap.dedent(source))
        info = site / f"{dist.replace('-', '_')}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
        (info / "entry_points.txt").write_text(f"[longllava_sdk]\n{module} = {module}\n")
        created.append(module)
        importlib.invalidate_caches()
        reset_plugin_manager()
        return module

    yield make
    for module in created:
        sys.modules.pop(module, None)
    reset_plugin_manager()


def _head_plugin(cls: str, name: str, **overrides: str) -> str:
    return HEAD_MODULE.format(cls=cls, name=name, **{**GOOD, **overrides})


def test_check_labels_returning_none_is_one_plugin_error_naming_dist_class_and_method(fake_dist, tmp_path):
    """Issue 17 row 4: was ``TypeError: 'NoneType' object is not iterable`` from recipes.py."""
    from longllava_sdk.recipes import Recipe

    fake_dist("acme-heads", _head_plugin("NoneLabelsHead", "none_labels", check_labels="return None"))
    with pytest.raises(PluginError) as caught:
        Recipe.from_dict({"name": "r", "head": {"type": "none_labels", "labels": ["a", "b"]}},
                         source=tmp_path / "recipe.yaml")
    message = str(caught.value)
    assert "\n" not in message
    assert "distribution acme-heads 2.0" in message and "NoneLabelsHead.check_labels" in message
    assert "returned None" in message and "list of problem strings" in message


@pytest.mark.parametrize(("override", "method", "says"), [
    ({"forward": "return None"}, "forward", "returned None"),
    ({"forward": "raise RuntimeError('shape bug')"}, "forward", "raised RuntimeError: shape bug"),
    ({"metrics": "return 0.5"}, "metrics", "dict of metric name"),
])
def test_a_head_breaking_its_contract_fails_the_plan_before_training(fake_dist, tmp_path, override, method, says):
    from longllava_sdk.recipes import Recipe
    from longllava_sdk.training.finetuning import plan_finetune

    cls = f"Broken{method.title()}Head"
    fake_dist("acme-heads", _head_plugin(cls, "broken", **override))
    data = tmp_path / "rows.csv"
    data.write_text("source,labels\nmissing.png,a\n")
    recipe = Recipe(name="r", head=Recipe.from_dict({"name": "x"}).head)
    recipe.head.type, recipe.head.labels = "broken", ["a", "b"]
    with pytest.raises(PluginError) as caught:  # raised before the data (a missing image) is even read
        plan_finetune(recipe, data=data, output=tmp_path / "run")
    message = str(caught.value)
    assert f"distribution acme-heads 2.0: {cls}.{method}" in message and says in message
    assert not (tmp_path / "run").exists()


def test_a_run_time_hook_returning_none_where_a_list_is_due_is_a_plugin_error(fake_dist):
    fake_dist("acme-callbacks", """
        from longllava_sdk import hookimpl

        @hookimpl
        def longllava_trainer_callbacks(training_args, recipe):
            return None
    """)
    pm = get_plugin_manager()
    with pytest.raises(PluginError, match=r"distribution acme-callbacks 2\.0 .*longllava_trainer_callbacks returned "
                                          r"None; longllava_trainer_callbacks must return a list"):
        pm.call_checked("longllava_trainer_callbacks", returns="a list", check=lambda r: isinstance(r, list),
                        training_args=None, recipe=None)


def test_a_run_time_hook_that_raises_is_named(fake_dist):
    fake_dist("acme-loaded", """
        from longllava_sdk import hookimpl

        @hookimpl
        def longllava_model_loaded(model):
            raise KeyError("no such layer")
    """)
    with pytest.raises(PluginError, match=r"acme-loaded .*longllava_model_loaded raised KeyError"):
        get_plugin_manager().call_checked("longllava_model_loaded", returns="nothing", check=lambda r: True,
                                          model=None, config=None)


# -- "did you mean" ---------------------------------------------------------------------------

def test_unknown_domain_suggests_the_closest():
    from longllava_sdk.recipes import load_recipe

    with pytest.raises(RegistryLookupError) as caught:
        load_recipe("medcal")
    assert "unknown domain 'medcal' (did you mean 'medical'?)" in str(caught.value)
    assert caught.value.suggestion == "medical" and isinstance(caught.value, ConfigError)


def test_unknown_preset_head_and_adapter_suggest_the_closest(tmp_path):
    from longllava_sdk.config import LongLLaVAConfig
    from longllava_sdk.errors import UnsupportedSourceError
    from longllava_sdk.registry import get_head_class, resolve_adapter

    with pytest.raises(ConfigError, match=r"unknown preset 'tinny' \(did you mean 'tiny'\?\)"):
        LongLLaVAConfig.from_preset("tinny")
    with pytest.raises(ConfigError, match=r"unknown head 'multilable' \(did you mean 'multilabel'\?\)"):
        get_head_class("multilable")
    with pytest.raises(UnsupportedSourceError, match=r"unknown adapter 'dicm' \(did you mean 'dicom'\?\)"):
        resolve_adapter(tmp_path / "x.dcm", "dicm")


def test_the_one_helper_formats_any_registry_miss():
    error = unknown_name_error("importer format", "cocoo", ["coco", "llava", "sharegpt"])
    assert str(error) == "unknown importer format 'cocoo' (did you mean 'coco'?); available: coco, llava, sharegpt"
    assert "did you mean" not in str(unknown_name_error("format", "zzz", ["coco"]))


def test_a_recipe_head_type_typo_is_suggested(tmp_path):
    from longllava_sdk.recipes import Recipe

    with pytest.raises(ConfigError, match=r"head.type: unknown head 'clasify' \(did you mean 'classify'\?\)"):
        Recipe.from_dict({"name": "r", "head": {"type": "clasify", "labels": ["a", "b"]}})


# -- adapters declare their kind, client options and "bad data" libraries ------------------------

SPECTRO_MODULE = '''
import json
from pathlib import Path

import numpy as np
from PIL import Image

from longllava_sdk import hookimpl
from longllava_sdk.adapters import InputAdapter, confine, guarded_load
from longllava_sdk.media import Media


class SpectrogramAdapter(InputAdapter):
    """Reads ``.spec`` files (JSON lists of rows) as one image per file: a new media kind."""

    name = "spectro"
    kind = "spectrogram"
    extensions = (".spec",)
    client_options = ("gain",)
    data_error_libraries = {"json": "json (spectrogram)"}

    def __init__(self, gain: float = 1.0, max_side: int = 64) -> None:
        self.gain, self.max_side = gain, max_side

    @guarded_load
    def load(self, source, *, max_images=None):
        path = confine(Path(source))
        rows = json.loads(path.read_text())
        values = np.clip(np.asarray(rows, dtype=np.float32) * self.gain, 0, 255).astype(np.uint8)
        image = Image.fromarray(values).convert("RGB")
        return Media(kind="spectrogram", images=[image], source=str(path))


@hookimpl
def longllava_register_adapters():
    return [SpectrogramAdapter]
'''


@pytest.fixture
def spectro(fake_dist, tmp_path):
    fake_dist("acme-spectro", SPECTRO_MODULE)
    good = tmp_path / "a.spec"
    good.write_text("[[0, 64, 128], [255, 32, 16]]")
    return good


def test_a_plugin_adapter_of_a_new_media_kind_works_end_to_end(spectro, tiny_model_and_processor):
    from longllava_sdk.pipeline import Pipeline
    from longllava_sdk.processing import protocol
    from longllava_sdk.registry import available_adapters, resolve_adapter

    assert available_adapters("spectrogram").keys() == {"spectro"}
    assert type(resolve_adapter(spectro, kind="spectrogram")).name == "spectro"
    model, processor = tiny_model_and_processor
    pipe = Pipeline(model, processor)
    media = pipe.load_media(spectro, kind="spectrogram", options={"gain": "2"})  # text option typed by the adapter
    assert media.kind == "spectrogram" and len(media) == 1
    assert protocol.render_media(media) == protocol.render_images(1)
    answer = pipe("What is shown?", images=[media], max_new_tokens=3)
    assert isinstance(answer, str)


def test_a_plugin_adapter_declares_its_bad_data_library(spectro, tmp_path):
    from longllava_sdk.errors import AdapterError
    from longllava_sdk.registry import resolve_adapter

    broken = tmp_path / "b.spec"
    broken.write_text("[[0, 64,")
    with pytest.raises(AdapterError) as caught:
        resolve_adapter(broken, kind="spectrogram").load(broken)
    assert "corrupt or unsupported data: json (spectrogram) cannot read it" in str(caught.value)
    assert not caught.value.internal


def test_client_options_come_from_the_adapters_not_the_server(spectro):
    from longllava_sdk.registry import available_adapters
    from longllava_sdk.serving.api_errors import APIError
    from longllava_sdk.serving.content import ContentReader
    from longllava_sdk.serving.settings import ServerSettings

    adapters = available_adapters()
    limits = {"max_pixels", "max_side", "max_decoded_bytes", "time_budget_s", "max_files", "gdal_cache_mb"}
    for cls in adapters.values():  # a resource limit is never a client's choice
        assert set(cls.client_options) <= set(cls.options()) and not limits & set(cls.client_options), cls.name
    reader = ContentReader(ServerSettings(), jail=None, fetcher=None)
    reader._check_options({"gain": 2}, "messages[0]", "spectrogram", None)  # the plugin declared it
    reader._check_options({"window": "lung"}, "messages[0]", "volume", None)  # a built-in declared it
    with pytest.raises(APIError, match="max_side are fixed by this server's operator; clients may set: gain"):
        reader._check_options({"max_side": 4096}, "messages[0]", "spectrogram", "spectro")
    operator = ContentReader(ServerSettings(client_adapter_options=("max_side",)), jail=None, fetcher=None)
    operator._check_options({"max_side": 4096}, "messages[0]", "spectrogram", None)


def test_the_cli_suggests_the_closest_domain(capsys):
    from longllava_sdk.cli import main

    assert main(["finetune", "--domain", "medcal"]) == 1
    err = capsys.readouterr().err
    assert "unknown domain 'medcal' (did you mean 'medical'?)" in err and "Traceback" not in err

"""Recipes as data: YAML validation, the domain registry, and the bundled domain samples."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
from conftest import head_for
import yaml

from longllava_sdk.errors import ConfigError
from longllava_sdk.recipes import (
    JAMBA_LORA_TARGET_MODULES,
    JAMBA_LORA_TARGET_PARAMETERS,
    Recipe,
    available_domains,
    load_recipe,
)

DOMAINS = Path(__file__).resolve().parents[1] / "domains"
BUILTIN = {"medical", "medical_vqa", "remote_sensing", "remote_sensing_vqa", "video"}


@pytest.fixture(scope="module", autouse=True)
def builtin_plugins():
    """Domains and adapters through their entry points, or registered here if the install predates them."""
    from longllava_sdk.registry import available_adapters
    from longllava_sdk.plugin_manager import get_plugin_manager

    manager = get_plugin_manager()
    for name in ("images", "dicom", "nifti", "geotiff", "video"):
        if name not in available_adapters() and not manager.has_plugin(name):
            manager.register(importlib.import_module(f"longllava_plugins.{name}"), name=name)
    if not manager.has_plugin("domains"):
        manager.register(importlib.import_module("longllava_domains"), name="domains")


def test_builtin_domains_are_registered_through_the_hook():
    domains = available_domains()
    assert BUILTIN <= set(domains)
    medical = load_recipe("medical")
    assert medical.source == (DOMAINS / "medical" / "recipe.yaml").resolve()
    assert medical.head.type == "multilabel" and "Lung nodule" in medical.head.labels
    assert medical.adapter_options("dicom") == {"window": ["lung", "mediastinum", "bone"]}
    assert medical.adapter_max_images("dicom") == 4 and medical.adapter_max_images("other") == medical.max_images
    assert medical.data.path == (DOMAINS / "medical" / "data" / "ct_labels.csv").resolve()
    assert medical.training.warmup_ratio == 0.03 and medical.training.lr_scheduler == "cosine"
    assert medical.lora.target_modules == list(JAMBA_LORA_TARGET_MODULES)
    assert medical.lora.target_parameters == list(JAMBA_LORA_TARGET_PARAMETERS)
    assert load_recipe("remote-sensing").name == "remote_sensing"  # dashes accepted
    assert load_recipe("remote_sensing").head.type == "classify"
    assert load_recipe("video").adapter_options("video")["num_frames"] == 8
    assert load_recipe(DOMAINS / "video" / "recipe.yaml").name == "video"  # by path too
    with pytest.raises(ConfigError, match="unknown domain 'astronomy'; available: .*medical"):
        load_recipe("astronomy")
    with pytest.raises(ConfigError, match="does not exist"):
        load_recipe("no/such/recipe.yaml")


def test_every_problem_in_a_recipe_file_is_named_with_its_field(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump({
        "name": "broken",
        "stage": "pretrain",
        "head": {"type": "regress", "labels": ["a", "a"]},
        "lora": {"r": 0, "target_modules": ["q_proj", "dt_proj"], "dropout": 1.5},
        "training": {"learning_rate": "fast", "epochs": -1, "batch_size": 2.5, "lr_scheduler": "step"},
        "data": {"path": "missing.csv"},
        "prompts": {"user": "{question} {nope}"},
        "adapters": {"dicom": {"options": "lung"}},
        "colour": "blue",
    }))
    with pytest.raises(ConfigError) as caught:
        load_recipe(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: invalid recipe")
    for field in ["stage:", "head.type:", "head.labels: duplicate", "lora.r:", "lora.target_modules: 'dt_proj'",
                  "lora.dropout:", "training.learning_rate:", "training.epochs:", "training.batch_size:",
                  "training.lr_scheduler:", "data.path:", "prompts.user: unknown placeholder", "adapters.dicom.options:",
                  "colour: unknown field"]:
        assert field in message, f"{field} missing from:\n{message}"
    path.write_text("name: [unclosed")
    with pytest.raises(ConfigError, match=f"{path}: not valid YAML"):
        load_recipe(path)


def test_recipe_rules_and_defaults(tmp_path):
    with pytest.raises(ConfigError, match="classify head needs at least 2 labels"):
        Recipe.from_dict({"name": "x", "head": {"type": "classify", "labels": ["only"]}})
    with pytest.raises(ConfigError, match="all-linear"):
        Recipe.from_dict({"name": "x", "lora": {"target_modules": ["all-linear"]}})
    with pytest.raises(ConfigError, match="at most one <image>"):
        Recipe.from_dict({"name": "x", "prompts": {"user": "<image><image>{question}"}})
    with pytest.raises(ConfigError, match="name"):
        Recipe.from_dict({"description": "no name"})
    plain = Recipe.from_dict({"name": "plain", "training": {"learning_rate": "1e-5"}})  # YAML 1.1 string float
    assert plain.training.learning_rate == 1e-5 and plain.head.type == "generate" and plain.stage == "domain"
    assert plain.finetune == "lora" and plain.training.epochs == 3.0
    faster = plain.with_overrides(epochs=1, learning_rate=3e-4)
    assert (faster.training.epochs, faster.training.learning_rate, plain.training.epochs) == (1.0, 3e-4, 3.0)
    with pytest.raises(ConfigError, match="training.epochs"):
        plain.with_overrides(epochs=0)
    with pytest.raises(ConfigError, match="unknown training setting"):
        plain.with_overrides(epoch=1)
    medical = load_recipe("medical")
    assert Recipe.from_dict(medical.to_dict(), source=medical.source) == medical  # round trip


def test_a_third_party_plugin_adds_a_domain(tmp_path):
    from longllava_sdk.hookspecs import hookimpl
    from longllava_sdk.plugin_manager import get_plugin_manager

    (tmp_path / "astro.yaml").write_text("name: astronomy\ndescription: galaxies\nhead: generate\n")

    class AstroPlugin:
        @hookimpl
        def longllava_register_domains(self):
            return [tmp_path / "astro.yaml", Recipe(name="planets", description="in code")]

    manager = get_plugin_manager()
    plugin = AstroPlugin()
    manager.register(plugin, name="astro-test")
    try:
        domains = available_domains()
        assert domains["astronomy"].description == "galaxies" and domains["planets"].source is None
        assert BUILTIN <= set(domains)
    finally:
        manager.unregister(plugin)
    assert "astronomy" not in available_domains()


@pytest.mark.parametrize("name", sorted(BUILTIN))
def test_bundled_sample_data_is_small_real_and_valid(name):
    from longllava_sdk import LongLLaVAConfig, LongLLaVAProcessor
    from longllava_sdk.training.data import prepare_datasets

    recipe = load_recipe(name)
    data_dir = recipe.data.path.parent
    assert data_dir.parent.joinpath("MANIFEST.md").is_file()  # provenance of every file
    size = sum(p.stat().st_size for p in data_dir.rglob("*") if p.is_file())
    assert size < 1024 * 1024, f"{data_dir}: {size} bytes"
    processor = LongLLaVAProcessor.for_config(LongLLaVAConfig.from_preset("tiny"))
    head = head_for(recipe) if recipe.head.type != "generate" else None
    data = prepare_datasets(processor, recipe, head=head)  # validates every row with the real adapters
    assert 8 <= len(data.train) + len(data.eval) <= 24 and data.eval is not None and len(data.eval) >= 3
    assert max(data.train.lengths) <= recipe.training.max_length
    sample = data.train[0]
    assert 1 <= len(sample.images) <= recipe.max_images
    if recipe.head.type != "generate":
        assert sample.head_labels is not None

"""Issue 16 items 1 and 5: one validation stack (pydantic, every problem listed with its field)
and one implementation of each repeated rule."""

from __future__ import annotations

import os

import pytest

from longllava_sdk.errors import ConfigError


def test_server_settings_list_every_problem_with_its_option():
    from longllava_sdk.serving.settings import ServerSettings

    with pytest.raises(ConfigError) as caught:
        ServerSettings(max_body_mb=0, max_queue=-1, model_name=" ")
    message = str(caught.value)
    for field in ("max_body_mb: must be > 0", "max_queue: must be >= 0", "model_name: the model name must not be empty"):
        assert field in message, message
    assert "ValidationError" not in message and "pydantic" not in message


def test_adapter_options_list_every_bad_option():
    from longllava_sdk.registry import available_adapters

    dicom = available_adapters()["dicom"]
    with pytest.raises(ConfigError) as caught:
        dicom.coerce_options({"allow_non_parallel": "maybe", "max_images": "many", "series_uid": "1.2"})
    message = str(caught.value)
    assert "allow_non_parallel='maybe': expected bool" in message and "max_images='many': expected int | None" in message


def test_recipe_sections_left_empty_take_their_defaults(tmp_path):
    from longllava_sdk.recipes import Recipe

    path = tmp_path / "r.yaml"
    path.write_text("name: r\ntraining:\nlora:\n")
    recipe = Recipe.from_yaml(path)
    assert recipe.training.epochs == 3.0 and recipe.lora.r == 8


def test_no_raw_pydantic_error_reaches_a_recipe_user(tmp_path):
    from longllava_sdk.recipes import Recipe

    with pytest.raises(ConfigError) as caught:
        Recipe.from_dict({"name": "r", "training": {"batch_size": True, "packing": "yes", "seed": -1},
                          "freeze": {"brain": True}, "max_images": 0}, source=tmp_path / "r.yaml")
    message = str(caught.value)
    assert message.startswith(f"{tmp_path / 'r.yaml'}: invalid recipe (5 problem(s))")
    for field in ("training.batch_size:", "training.packing:", "training.seed: must be >= 0", "freeze.brain",
                  "max_images: must be >= 1"):
        assert field in message, message


def test_one_size_rule_everywhere():
    from longllava_sdk.convert_official import parse_shard_size
    from longllava_sdk.planner import parse_memory
    from longllava_sdk.units import parse_size

    assert parse_size("5GB") == parse_shard_size("5GB") == parse_memory("5GB") == 5 * 10**9
    assert parse_size("5GiB") == parse_shard_size("5GiB") == parse_memory("5GiB") == 5 << 30
    assert parse_memory(5) == 5 << 30 and parse_shard_size(5) == 5  # bare numbers: GiB of memory, bytes of a shard
    with pytest.raises(ValueError, match="GB = 10\\^9 bytes, GiB = 2\\^30 bytes"):
        parse_size("5 furlongs")


def test_one_stage_table_one_lora_type_one_image_format_list():
    from longllava_plugins import images
    from longllava_sdk import media, recipes
    from longllava_sdk.serving import images as served
    from longllava_sdk.training import lora, stages

    assert stages.STAGES is recipes.STAGES and set(recipes.STAGES) == set(recipes.STAGE_NAMES)
    assert lora.LoraOptions is recipes.LoraSettings
    assert images.ALLOWED_FORMATS is media.IMAGE_FORMATS is served.ACCEPTED_FORMATS


def test_one_path_jail(tmp_path):
    """The adapters' allowed root, training-data paths and the server's root refuse the same link."""
    from longllava_sdk.adapters import allowed_root, confine
    from longllava_sdk.errors import InputError, OutsideRootError
    from longllava_sdk.serving.api_errors import APIError, PathRedactor
    from longllava_sdk.serving.security import RootJail
    from longllava_sdk.training.data import resolve_data_path

    root, outside = tmp_path / "root", tmp_path / "secret.png"
    root.mkdir()
    outside.write_bytes(b"x")
    os.symlink(outside, root / "link.png")
    with allowed_root(root), pytest.raises(OutsideRootError, match="through a symlink"):
        confine(root / "link.png")
    with pytest.raises(InputError, match="leaves the data root .* through a symlink"):
        resolve_data_path("link.png", root)
    with pytest.raises(APIError, match="outside the server's allowed root"):
        RootJail(root.resolve()).resolve("link.png", param="p", redact=PathRedactor(root.resolve()))


def test_one_folder_swap(tmp_path):
    from longllava_sdk.checkpoint import atomic_directory, replace_directory

    target = tmp_path / "out"
    with atomic_directory(target) as staging:
        (staging / "a").write_text("1")
    staging = tmp_path / ".out.partial"
    staging.mkdir()
    (staging / "b").write_text("2")
    replace_directory(staging, target)
    assert [p.name for p in target.iterdir()] == ["b"] and not staging.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.old")]

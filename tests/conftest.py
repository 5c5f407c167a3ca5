"""Shared fixtures: a tiny random-weight model, its processor, and a saved checkpoint.

Everything is built locally from configs (no hub). Session-scoped so the ~1 M-parameter
model is built once per test run.
"""

from __future__ import annotations

import os

# Before torch loads: spinning OpenMP workers on a shared 2-core machine made tiny training
# steps 20-50x slower.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest  # noqa: E402
import torch  # noqa: E402

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def tiny_config():
    from longllava_sdk import LongLLaVAConfig

    return LongLLaVAConfig.from_preset("tiny")


@pytest.fixture(scope="session")
def tiny_model_and_processor():
    from longllava_sdk.model_folders import create_model

    model, processor = create_model("tiny", seed=0)
    return model.eval(), processor


@pytest.fixture(scope="session")
def tiny_model(tiny_model_and_processor):
    return tiny_model_and_processor[0]


@pytest.fixture(scope="session")
def processor(tiny_model_and_processor):
    return tiny_model_and_processor[1]


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory, tiny_model_and_processor):
    """A tiny model + processor saved in the SDK's format (safetensors)."""
    from longllava_sdk.model_folders import save_model

    model, processor = tiny_model_and_processor
    return save_model(model, processor, tmp_path_factory.mktemp("ckpt") / "tiny")


@pytest.fixture
def rgb_images():
    """Three small distinct RGB images (red, green, blue squares on grey)."""
    from PIL import Image, ImageDraw

    images = []
    for colour in [(255, 0, 0), (0, 255, 0), (0, 0, 255)]:
        img = Image.new("RGB", (120, 80), (128, 128, 128))
        ImageDraw.Draw(img).rectangle([20, 20, 60, 60], fill=colour)
        images.append(img)
    return images


def head_for(recipe, hidden_size: int = 64):
    """The task head a recipe names, built like a run builds it (labels from the recipe)."""
    from longllava_sdk.registry import get_head_class

    return get_head_class(recipe.head.type)(hidden_size, list(recipe.head.labels))

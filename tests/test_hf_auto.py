"""Model folders load through transformers' Auto classes in a fresh process (docs/checkpoints.md).

* ``trust_remote_code=True`` works WITHOUT ``import longllava_sdk``: the folder's ``auto_map``
  points at module files that only import the installed SDK;
* without it (and without the import) every Auto class refuses with transformers' "pass
  ``trust_remote_code=True``" message pointing at the folder, whose README.md opens with
  ``import longllava_sdk``; ``AutoProcessor`` never returns a bare tokenizer;
* with ``import longllava_sdk`` no remote code is needed;
* a model loaded through the folder's module files saves the same module files again (not
  copies of the SDK's sources).
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from longllava_sdk.hf_auto import AUTO_MAP, MODEL_CARD, SHIM_FILES
from longllava_sdk.model_folders import load_model
from trainer_fixtures import assert_auto_files, write_micro_model

AUTO_CLASSES = ("AutoConfig", "AutoProcessor", "AutoModelForImageTextToText", "AutoModelForCausalLM", "AutoModel")

# Loads the folder with every Auto class and prints one JSON line per class.
LOAD = textwrap.dedent("""
    import json, sys
    folder, mode, trust = sys.argv[1], sys.argv[2], sys.argv[3] == "trust"
    if mode == "import":  # the SDK first (import order as isort writes it): registers once transformers loads
        import longllava_sdk  # noqa: F401
        assert "torch" not in sys.modules  # still light until transformers is imported
    import transformers
    if mode == "import-after":  # after transformers: the import alone registers
        import longllava_sdk  # noqa: F401
    out = {}
    for name in %r:
        try:
            obj = getattr(transformers, name).from_pretrained(folder, **({"trust_remote_code": True} if trust else {}))
        except Exception as exc:
            out[name] = {"error": type(exc).__name__, "message": str(exc)}
            continue
        out[name] = {"class": type(obj).__module__ + "." + type(obj).__name__}
        if name == "AutoModelForImageTextToText":
            out[name]["checksum"] = float(sum(p.detach().double().sum() for p in obj.parameters()))
        if name in ("AutoProcessor", "AutoModelForImageTextToText"):
            obj.save_pretrained(sys.argv[4])  # re-saved by a class that came through the folder's modules
    print("\\nRESULT " + json.dumps(out))
""" % (AUTO_CLASSES,))


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return write_micro_model(tmp_path_factory.mktemp("auto") / "micro")


def _load(folder: Path, mode: str, trust: str, tmp_path: Path) -> dict:
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "hf_modules"), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", LOAD, str(folder), mode, trust, str(tmp_path / "resaved")],
                          capture_output=True, text=True, timeout=300, env=env, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr[-3000:]
    # (transformers' [y/N] prompt, answered by the closed stdin, leaves no newline before it)
    return json.loads(done.stdout.rpartition("RESULT ")[2])


def test_folder_carries_auto_map_module_files_and_model_card(folder):
    assert_auto_files(folder)
    config = json.loads((folder / "config.json").read_text())
    assert config["auto_map"] == AUTO_MAP
    for name in SHIM_FILES:  # the module files hold one import of the installed package, nothing else
        body = ast.parse((folder / name).read_text()).body
        statements = [node for node in body if not (isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant))]
        assert len(statements) == 1 and isinstance(statements[0], ast.ImportFrom), name
        assert statements[0].module.startswith("longllava_sdk"), name
    first = (folder / "README.md").read_text().splitlines()[0]
    assert first.startswith("`import longllava_sdk`") and "trust_remote_code=True" in first


def test_trust_remote_code_loads_without_importing_the_sdk(folder, tmp_path):
    out = _load(folder, "plain", "trust", tmp_path)
    assert out["AutoConfig"]["class"] == "longllava_sdk.config.LongLLaVAConfig"
    assert out["AutoProcessor"]["class"] == "longllava_sdk.processing.processor.LongLLaVAProcessor"
    for name in ("AutoModelForImageTextToText", "AutoModelForCausalLM", "AutoModel"):
        assert out[name]["class"] == "longllava_sdk.modeling.modeling_longllava.LongLLaVAForConditionalGeneration"
    model, _ = load_model(folder, dtype=torch.float32)
    expected = float(sum(p.detach().double().sum() for p in model.parameters()))
    assert out["AutoModelForImageTextToText"]["checksum"] == pytest.approx(expected, rel=1e-9)
    # re-saved after a remote-code load: the same module files, no copy of the SDK's sources
    resaved = tmp_path / "resaved"
    assert_auto_files(resaved)
    assert sorted(p.name for p in resaved.glob("*.py")) == sorted(SHIM_FILES)
    for name in SHIM_FILES:
        assert (resaved / name).read_text() == (folder / name).read_text()


def test_without_trust_remote_code_or_import_the_error_says_how(folder, tmp_path):
    out = _load(folder, "plain", "no", tmp_path)
    for name in AUTO_CLASSES:
        assert "error" in out[name], (name, out[name])  # AutoProcessor: never a bare tokenizer
        assert "trust_remote_code=True" in out[name]["message"]
        assert str(folder) in out[name]["message"]  # "you can inspect the repository content at FOLDER"
    # ... where the first line says `import longllava_sdk`
    assert (folder / "README.md").read_text().startswith(MODEL_CARD.splitlines()[0])
    assert "import longllava_sdk" in MODEL_CARD.splitlines()[0]


@pytest.mark.parametrize("mode", ["import", "import-after"])
def test_import_longllava_sdk_needs_no_remote_code(folder, tmp_path, mode):
    out = _load(folder, mode, "no", tmp_path)
    assert out["AutoProcessor"]["class"].endswith("LongLLaVAProcessor")
    assert out["AutoModelForImageTextToText"]["class"].endswith("LongLLaVAForConditionalGeneration")
    assert not (tmp_path / "hf_modules").exists() or not any((tmp_path / "hf_modules").rglob("modeling_longllava.py"))

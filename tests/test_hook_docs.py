"""Meta-test: every hookspec has a one-line docstring, a section in docs/plugin_hooks.md whose
signature matches the hookspec and whose examples compile, and is called in tests/test_plugins.py.

Adding a hook to longllava_sdk/hookspecs.py without documenting and testing it fails here.
"""

from __future__ import annotations

import inspect
import re
import types
from pathlib import Path

import pytest

from longllava_sdk import hookspecs
from longllava_sdk.plugin_manager import create_plugin_manager, hook_names

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs" / "plugin_hooks.md"
PLUGIN_TESTS = REPO / "tests" / "test_plugins.py"
HOOKS = hook_names()


def _sections() -> dict[str, str]:
    """``## heading`` -> the Markdown up to the next ``## `` heading."""
    sections: dict[str, str] = {}
    for chunk in re.split(r"^## ", DOCS.read_text(), flags=re.MULTILINE)[1:]:
        heading, _, body = chunk.partition("\n")
        sections[heading.strip()] = body
    return sections


def _python_blocks(markdown: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", markdown, flags=re.MULTILINE | re.DOTALL)


def test_hooks_are_found():
    assert len(HOOKS) >= 7
    assert {"longllava_register_adapters", "longllava_register_heads", "longllava_register_domains",
            "longllava_register_commands", "longllava_model_loaded", "longllava_apply_lora",
            "longllava_trainer_callbacks"} <= set(HOOKS)


@pytest.mark.parametrize("hook", HOOKS)
def test_hookspec_has_a_one_line_docstring(hook):
    doc = inspect.getdoc(getattr(hookspecs, hook))
    assert doc, f"hookspec {hook} has no docstring"
    assert "\n" not in doc.strip(), f"hookspec {hook}: the docstring must be one line (details go in {DOCS.name})"
    assert doc.strip().endswith("."), f"hookspec {hook}: the docstring should be a sentence"


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_is_documented(hook):
    sections = _sections()
    assert hook in sections, f"docs/plugin_hooks.md has no '## {hook}' section"
    body = sections[hook]
    blocks = _python_blocks(body)
    assert blocks, f"section {hook} has no python code"

    # The first block is the signature, with exactly the hookspec's arguments, in order.
    match = re.search(rf"def {hook}\(([^)]*)\)", blocks[0])
    assert match, f"section {hook}: the first code block must be the signature `def {hook}(...)`"
    documented = [arg.split(":")[0].strip() for arg in match.group(1).split(",") if arg.strip()]
    expected = list(inspect.signature(getattr(hookspecs, hook)).parameters)
    assert documented == expected, f"section {hook}: documents arguments {documented}, hookspec has {expected}"
    for arg in expected:
        assert f"`{arg}`" in body, f"section {hook}: argument `{arg}` is not described"
    assert "**Returns:**" in body and "**Arguments:**" in body, f"section {hook}: say what it takes and returns"

    # At least one example implements the hook, and every example is valid Python.
    examples = blocks[1:]
    assert any("@hookimpl" in code and f"def {hook}(" in code for code in examples), \
        f"section {hook}: no example implementing it with @hookimpl"
    for code in examples:
        compile(code, f"{DOCS.name}:{hook}", "exec")


def _example_plugins(hook: str, tmp_path: Path) -> list[types.ModuleType]:
    """Each example of a hook's section, executed as a module (as if it were a plugin file)."""
    modules = []
    for index, code in enumerate(_python_blocks(_sections()[hook])[1:]):
        module = types.ModuleType(f"docs_example_{hook}_{index}")
        module.__file__ = str(tmp_path / f"{module.__name__}.py")
        exec(compile(code, f"{DOCS.name}:{hook}:{index}", "exec"), module.__dict__)
        modules.append(module)
    return modules


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_examples_are_valid_plugins(hook, tmp_path):
    """Every example registers cleanly (the manager validates it against the hookspec)."""
    for module in _example_plugins(hook, tmp_path):
        pm = create_plugin_manager(autoload=False)
        assert pm.register(module, name=module.__name__) == module.__name__
        (record,) = pm.list_plugins()
        assert hook in record.hooks, f"{module.__name__} does not implement {hook}"
        if hook.startswith("longllava_register_"):
            (answer,) = getattr(pm.hook, hook)()
            assert isinstance(answer, list)


def test_adapter_and_head_examples_work(tmp_path):
    import torch
    from PIL import Image

    adapter_example, tiled_example = _example_plugins("longllava_register_adapters", tmp_path)
    for index, color in enumerate(["red", "green", "blue"]):
        Image.new("RGB", (20, 10), color).save(tmp_path / f"img{index}.png")
    listing = tmp_path / "scans.txt"
    listing.write_text("img0.png\n\nimg1.png\nimg2.png\n")
    media = adapter_example.ImageListAdapter().load(listing, max_images=2)
    assert media.kind == "images" and [m["file"] for m in media.metadata] == ["img0.png", "img2.png"]
    assert media.images[1].getpixel((0, 0)) == (0, 0, 255)

    # the tiled example: global view + tiles row-major, a dropped tile placed by its row/col,
    # reported in info["warnings"]; confine keeps it inside the allowed root
    from longllava_sdk.adapters import allowed_root
    from longllava_sdk.errors import OutsideRootError

    scene = tmp_path / "scene.tiles"
    scene.mkdir()
    Image.new("RGB", (30, 30), "white").save(scene / "overview.png")
    for row, col in [(0, 0), (0, 1), (1, 1)]:
        Image.new("RGB", (8, 8), (row * 100, col * 100, 0)).save(scene / f"r{row}_c{col}.png")
    tiled = tiled_example.TileFolderAdapter().load(scene)
    assert tiled.kind == "tiled" and tiled.grid == (2, 2) and len(tiled.images) == 4
    assert [(m["row"], m["col"]) for m in tiled.metadata[1:]] == [(0, 0), (0, 1), (1, 1)]
    assert tiled.info["warnings"] == ["1 tile(s) missing"]
    outside = tmp_path / "outside.png"
    Image.new("RGB", (8, 8), "black").save(outside)
    (scene / "r1_c0.png").symlink_to(outside)
    with allowed_root(scene), pytest.raises(OutsideRootError):
        tiled_example.TileFolderAdapter().load(scene)

    (head_example,) = _example_plugins("longllava_register_heads", tmp_path)
    head = head_example.MultiLabelHead(hidden_size=6, labels=["a", "b", "c"])
    logits = head(torch.randn(4, 5, 6), torch.ones(4, 5))
    assert logits.shape == (4, 3)
    targets = torch.randint(0, 2, (4, 3))
    head.loss(logits, targets).backward()
    assert 0.0 <= head.metrics(head.predict(logits), targets)["exact_match"] <= 1.0


def test_docs_document_no_unknown_hooks():
    stale = [h for h in _sections() if h.startswith("longllava_") and h not in HOOKS]
    assert not stale, f"docs/plugin_hooks.md documents hooks that do not exist: {stale}"


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_is_called_in_the_plugin_tests(hook):
    source = PLUGIN_TESTS.read_text()
    assert f".hook.{hook}(" in source, f"tests/test_plugins.py never calls pm.hook.{hook}(...)"
    assert f"def {hook}(" in source, f"tests/test_plugins.py has no plugin implementing {hook}"


def test_hook_markers_are_the_public_ones():
    import longllava_sdk

    assert longllava_sdk.hookimpl is hookspecs.hookimpl
    assert hookspecs.hookimpl.project_name == hookspecs.hookspec.project_name == "longllava_sdk"


# -- contracts: every hook's default, every base-class member, the example plugin against them --

@pytest.mark.parametrize("hook", HOOKS)
def test_hook_says_what_happens_without_an_implementation(hook):
    assert "**Default:**" in _sections()[hook], f"section {hook}: say what the SDK does when no plugin implements it"


def _contract_rows(section: str) -> dict[str, list[str]]:
    """``member name -> [arguments, returns, default]`` from a section's contract table."""
    rows = {}
    for line in _sections()[section].splitlines():
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]]
        match = re.match(r"`(\w+)", cells[0]) if len(cells) == 4 else None
        if match:
            rows[match.group(1)] = cells[1:]
    return rows


def _public_members(cls: type) -> set[str]:
    names = {n for n in vars(cls) if not n.startswith("_")} | set(getattr(cls, "__annotations__", {}))
    return names | {"__init__"}


@pytest.mark.parametrize(("section", "base"), [("InputAdapter", "longllava_sdk.adapters:InputAdapter"),
                                               ("TaskHead", "longllava_sdk.heads:TaskHead")])
def test_every_base_class_member_has_a_documented_contract(section, base):
    import importlib

    module, _, name = base.partition(":")
    cls = getattr(importlib.import_module(module), name)
    rows = _contract_rows(section)
    missing = sorted(_public_members(cls) - set(rows))
    assert not missing, f"docs/plugin_hooks.md '## {section}' has no contract row for {missing}"
    for member, (arguments, returns, default) in rows.items():
        assert arguments and returns and default, f"{section}.{member}: arguments, returns and default are all due"


def test_the_example_plugin_follows_the_documented_contracts():
    """docs/examples/longllava-example-plugin against the contract tables: only documented
    members overridden, with the base's arguments; its heads pass the run-time contract check."""
    import importlib
    import sys

    from longllava_sdk.adapters import InputAdapter
    from longllava_sdk.contracts import check_head
    from longllava_sdk.heads import TaskHead

    src = REPO / "docs" / "examples" / "longllava-example-plugin" / "src"
    sys.path.insert(0, str(src))
    try:
        plugin = importlib.import_module("longllava_example_plugin")
        classes = [*plugin.longllava_register_adapters(), *plugin.longllava_register_heads()]
        assert classes, "the example plugin registers nothing"
        for cls in classes:
            base, section = (InputAdapter, "InputAdapter") if issubclass(cls, InputAdapter) else (TaskHead, "TaskHead")
            documented = set(_contract_rows(section))
            for member in _public_members(base) & set(vars(cls)):
                assert member in documented, f"{cls.__name__}.{member} is not in the {section} contract"
                mine, theirs = getattr(cls, member), getattr(base, member, None)
                if callable(mine) and callable(theirs) and member != "__init__":
                    expected = [p for p in inspect.signature(theirs).parameters if p != "self"]
                    given = [p for p in inspect.signature(mine).parameters if p != "self"]
                    assert given[:len(expected)] == expected, f"{cls.__name__}.{member}{given}: the contract is {expected}"
            assert isinstance(cls.name, str) and cls.name
            if issubclass(cls, InputAdapter):
                assert isinstance(cls.kind, str) and isinstance(cls.extensions, tuple)
                assert set(cls.client_options) <= set(cls.options())
            else:
                check_head(cls, ["mild", "severe"] if cls.problem_type != "regression" else ["severity"])
    finally:
        sys.path.remove(str(src))
        for name in [m for m in sys.modules if m.startswith("longllava_example_plugin")]:
            del sys.modules[name]

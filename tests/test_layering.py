"""The import graph of the engine points down and has no cycle.

CLI -> Pipeline / training -> model folders -> model / processing -> plugin kernel -> contracts.
Every ``import`` counts, module-level or inside a function (a lazy import is still a
dependency). A module may import its own layer or lower ones; a cycle anywhere fails.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "longllava_sdk"

#: rank of each module (dotted name under longllava_sdk, prefixes match sub-packages); a
#: module may import modules of equal or lower rank only.
LAYERS: list[tuple[int, tuple[str, ...]]] = [
    (0, ("errors", "isolation", "options", "media", "hookspecs", "hf_auto", "config", "config_view", "prefill_sizes",
         "lazy_exports", "adapters", "heads", "contracts", "units", "validation", "root_jail", "local_files", "decode_cost",
         "checkpoint", "highres", "context_limit", "processing.protocol", "processing.tokenizer", "importers", "manifest",
         "deidentify", "atomic", "chance", "exporters")),
    (1, ("plugin_manager", "registry", "experts")),
    (2, ("recipes", "data_import", "export")),
    (3, ("modeling", "processing")),
    (4, ("model_folders", "convert_official", "quantization", "planner", "isolation_preload")),
    (5, ("pipeline",)),
    (6, ("training", "evaluation", "serving")),
    (7, ("cli", "__main__")),
]


def _rank(module: str) -> int:
    best = None
    for rank, prefixes in LAYERS:
        for prefix in prefixes:
            if module == prefix or module.startswith(prefix + "."):
                if best is None or len(prefix) > best[1]:
                    best = (rank, len(prefix))
    if best is None:
        raise AssertionError(f"longllava_sdk.{module} has no layer in tests/test_layering.py: add it")
    return best[0]


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Modules of the package that ``name`` imports (resolved relative imports included)."""
    is_package = path.name == "__init__.py"
    here = name.split(".") if name else []
    base = here if is_package else here[:-1]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = base[: len(base) - (node.level - 1)] if node.level > 1 else base
                module = ".".join(["longllava_sdk", *anchor, *([node.module] if node.module else [])])
            else:
                module = node.module or ""
            # ``from pkg import sub`` imports the submodule; ``from mod import name`` the module
            targets = [f"{module}.{a.name}" if f"{module}.{a.name}"[len("longllava_sdk."):] in known else module
                       for a in node.names]
        for target in targets:
            if target == "longllava_sdk" or not target.startswith("longllava_sdk."):
                continue
            inner = target[len("longllava_sdk."):]
            while inner and inner not in known:
                inner = inner.rpartition(".")[0]
            if inner and inner != name:
                found.add(inner)
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    return {name: _imports(name, path, known) for name, path in modules.items() if name}


def test_the_graph_is_read_correctly():
    graph = _graph()
    assert "model_folders" in graph["pipeline"] and "modeling.modeling_longllava" in graph["pipeline"]
    assert "processing.protocol" in graph["processing.processor"]
    assert "errors" in graph["plugin_manager"]


def test_every_import_points_down_or_sideways():
    upward = []
    for module, imported in sorted(_graph().items()):
        for target in sorted(imported):
            if _rank(target) > _rank(module):
                upward.append(f"{module} (layer {_rank(module)}) imports {target} (layer {_rank(target)})")
    assert not upward, "imports that point up:\n  " + "\n  ".join(upward)


def test_inference_never_depends_on_training():
    graph = _graph()
    for module in ("pipeline", "model_folders", "modeling.task_model", "processing.processor"):
        assert not any(t.startswith("training") for t in graph[module]), module


def test_there_is_no_import_cycle():
    graph = _graph()
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycle = stack[stack.index(nxt):] + [nxt]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module)


def test_the_engine_never_names_a_built_in_plugin():
    """Adapters and heads are chosen by contract: no engine module spells a built-in's name in code."""
    import re

    builtin_names = ("dicom", "nifti", "geotiff", "multilabel", "classify")
    offenders = []
    for name, path in _modules().items():
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in builtin_names:
                offenders.append(f"{name}:{node.lineno} {node.value!r}")
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("longllava_plugins"):
                offenders.append(f"{name}:{node.lineno} imports {node.module}")
    assert not offenders, "the engine names built-ins:\n  " + "\n  ".join(offenders)
    assert re.search(r"longllava_plugins", (PACKAGE / "pipeline.py").read_text()) is None

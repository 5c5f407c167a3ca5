"""The plugin kernel: entry-point loading, fault isolation, blocking, every hook, TaskHead, and
the third-party example plugin installed with pip and discovered through its entry point.

Fake third-party plugins are real distributions: a ``*.dist-info`` folder (METADATA +
entry_points.txt) and a module in a temporary directory put on ``sys.path``, so they go
through exactly the same ``importlib.metadata`` discovery as an installed package.
"""

from __future__ import annotations

import fcntl
import importlib
import json
import shutil
import subprocess
import sys
import textwrap
import tomllib
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch

from longllava_sdk import hookimpl
from longllava_sdk.errors import AdapterError, ConfigError, PluginError
from longllava_sdk.heads import TaskHead
from longllava_sdk.registry import available_heads, registered_classes
from longllava_sdk.plugin_manager import (
    BLOCK_ENV,
    DISABLE_AUTOLOAD_ENV,
    LongLLaVAPluginManager,
    PluginLoadWarning,
    create_plugin_manager,
    get_plugin_manager,
    hook_names,
    list_plugins,
    reset_plugin_manager,
)

pytestmark = pytest.mark.compat  # also run on the oldest allowed dependency versions (.ci/run)

REPO = Path(__file__).resolve().parents[1]
EXAMPLE_PLUGIN = REPO / "docs" / "examples" / "longllava-example-plugin"

# A plugin module source that registers one adapter and one head, both named after `tag`.
GOOD_PLUGIN = '''
from longllava_sdk import hookimpl
from longllava_sdk.adapters import InputAdapter
from longllava_sdk.heads import TaskHead
from longllava_sdk.media import Media
from PIL import Image


class Adapter(InputAdapter):
    name = "{tag}_adapter"
    kind = "images"
    extensions = (".{tag}",)

    def load(self, source, *, max_images=None):
        return Media(kind="images", images=[Image.new("RGB", (4, 4))], source=str(source))


class Head(TaskHead):
    name = "{tag}_head"
    problem_type = "single_label"

    def forward(self, hidden_states, attention_mask):
        return self.pool(hidden_states, attention_mask)[:, : self.num_labels]

    def loss(self, logits, targets):
        return logits.sum()

    def metrics(self, predictions, targets):
        return {{}}


@hookimpl
def longllava_register_adapters():
    return [Adapter]


@hookimpl
def longllava_register_heads():
    return [Head]
'''


@pytest.fixture(autouse=True)
def clean_plugin_state(monkeypatch):
    monkeypatch.delenv(BLOCK_ENV, raising=False)
    monkeypatch.delenv(DISABLE_AUTOLOAD_ENV, raising=False)
    reset_plugin_manager()
    yield
    reset_plugin_manager()


@pytest.fixture
def make_dist(tmp_path, monkeypatch):
    """Factory: ``make_dist(dist_name, {entry_point_name: module_source}, version)`` -> module names."""
    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))
    created: list[str] = []

    def make(dist: str, plugins: dict[str, str], version: str = "1.0") -> dict[str, str]:
        modules = {}
        for ep_name, source in plugins.items():
            module = f"fake_{ep_name}_{uuid.uuid4().hex[:8]}"
            (site / f"{module}.py").write_text(textwrap.dedent(source))
            modules[ep_name] = module
        info = site / f"{dist.replace('-', '_')}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
        (info / "entry_points.txt").write_text(
            "[longllava_sdk]\n" + "".join(f"{ep} = {module}\n" for ep, module in modules.items())
        )
        created.extend(modules.values())
        importlib.invalidate_caches()
        return modules

    yield make
    for module in created:
        sys.modules.pop(module, None)


def _record(pm: LongLLaVAPluginManager, name: str):
    matches = [r for r in pm.list_plugins() if r.name == name]
    assert len(matches) == 1, f"expected one record named {name!r}, got {matches}"
    return matches[0]


# -- fault isolation ----------------------------------------------------------------------


def test_failing_import_is_named_and_other_plugins_keep_working(make_dist, capsys):
    make_dist("fake-good", {"good": GOOD_PLUGIN.format(tag="good")}, version="2.5.0")
    make_dist("fake-broken", {
        "broken": "raise ImportError('this plugin needs the imaginary package frobnicate')",
        "missing_dep": "import frobnicate_does_not_exist_xyz\n",
    }, version="0.9")

    with pytest.warns(PluginLoadWarning) as caught:
        pm = create_plugin_manager()
    messages = "\n".join(str(w.message) for w in caught)
    assert "'broken'" in messages and "frobnicate" in messages and "fake-broken" in messages
    assert "'missing_dep'" in messages and "frobnicate_does_not_exist_xyz" in messages

    broken = _record(pm, "broken")
    assert broken.status == "failed" and broken.distribution == "fake-broken" and broken.version == "0.9"
    assert "ImportError" in broken.error and "frobnicate" in broken.error
    assert "Traceback" in broken.details
    assert _record(pm, "missing_dep").status == "failed"
    assert "ModuleNotFoundError" in _record(pm, "missing_dep").error

    good = _record(pm, "good")
    assert good.status == "loaded" and good.version == "2.5.0" and good.distribution == "fake-good"
    assert good.hooks == ["longllava_register_adapters", "longllava_register_heads"]
    assert "good_adapter" in registered_classes("longllava_register_adapters", object, "adapter", pm=pm)

    # The process-wide manager behaves the same: the good plugin's classes are available.
    with pytest.warns(PluginLoadWarning):
        from longllava_sdk.registry import available_adapters

        assert "good_adapter" in available_adapters()
    assert "good_head" in available_heads()

    with pytest.raises(PluginError, match=r"broken.*frobnicate"):
        get_plugin_manager().raise_for_errors()

    from longllava_sdk.cli.cmd_plugins import plugins

    capsys.readouterr()
    assert plugins() == 0
    table = capsys.readouterr().out
    assert "good" in table and "2.5.0" in table and "failed" in table and "frobnicate" in table
    assert plugins(strict=True) == 1


def test_hookspec_violations_are_rejected_by_name(make_dist):
    make_dist("fake-good", {"good": GOOD_PLUGIN.format(tag="good")})
    make_dist("fake-bad", {
        # A typo in a hook name; its valid hook must not stay half-registered either.
        "typo": GOOD_PLUGIN.format(tag="typo").replace(
            "def longllava_register_adapters", "def longllava_register_adaptors"),
        # An argument the hook does not pass.
        "wrong_args": """
            from longllava_sdk import hookimpl

            @hookimpl
            def longllava_register_heads():
                return []

            @hookimpl
            def longllava_model_loaded(modle, config):
                pass
        """,
    })
    with pytest.warns(PluginLoadWarning) as caught:
        pm = create_plugin_manager()
    messages = "\n".join(str(w.message) for w in caught)
    assert "'typo'" in messages and "'wrong_args'" in messages

    typo = _record(pm, "typo")
    assert typo.status == "rejected"
    assert "longllava_register_adaptors" in typo.error
    assert "did you mean 'longllava_register_adapters'" in typo.error
    wrong = _record(pm, "wrong_args")
    assert wrong.status == "rejected" and "modle" in wrong.error and "longllava_model_loaded" in wrong.error

    assert pm.get_plugin("typo") is None and pm.get_plugin("wrong_args") is None
    assert not hasattr(pm.hook, "longllava_register_adaptors")  # no trace of the unknown hook
    heads = registered_classes("longllava_register_heads", TaskHead, "head", pm=pm)
    assert "typo_head" not in heads and "good_head" in heads  # rejected as a whole, others fine
    pm.check_pending()


def test_programmatic_register_validates(make_dist):
    pm = create_plugin_manager(autoload=False)

    class Typo:
        @staticmethod
        def longllava_register_heads():  # no marker: ignored, with a warning
            return []

        @hookimpl
        def longllava_model_loaded(self, model, config, extra):
            pass

    with pytest.raises(PluginError, match=r"'typo_plugin'.*extra"):
        pm.register(Typo(), name="typo_plugin")
    assert pm.get_plugin("typo_plugin") is None
    assert pm.hook.longllava_model_loaded.get_hookimpls() == []

    class Unmarked:
        def longllava_register_heads(self):
            return []

    with pytest.warns(PluginLoadWarning, match=r"'unmarked'.*longllava_register_heads.*@hookimpl"):
        assert pm.register(Unmarked(), name="unmarked") == "unmarked"

    with pytest.raises(PluginError, match="unmarked"):
        pm.register(object(), name="unmarked")  # name already taken


def test_registration_hook_failures_are_isolated():
    pm = get_plugin_manager(autoload=False)

    class GoodHead(TaskHead):
        name = "iso_head"
        problem_type = "single_label"

        def forward(self, hidden_states, attention_mask):
            return hidden_states[:, 0, : self.num_labels]

        def loss(self, logits, targets):
            return logits.mean()

        def metrics(self, predictions, targets):
            return {}

    class SameName(GoodHead):
        pass

    class Good:
        @hookimpl
        def longllava_register_heads(self):
            return [GoodHead]

    class Raises:
        @hookimpl
        def longllava_register_heads(self):
            raise RuntimeError("database of heads is down")

    class Junk:
        @hookimpl
        def longllava_register_heads(self):
            return [int, SameName]

    pm.register(Good(), name="good")
    pm.register(Raises(), name="raises")
    pm.register(Junk(), name="junk")
    with pytest.warns(PluginLoadWarning) as caught:
        heads = available_heads()
    messages = "\n".join(str(w.message) for w in caught)
    # Later-registered plugins are called first (pluggy's order), so `junk`'s class wins the
    # name conflict, and the warning names both plugins.
    assert heads == {"iso_head": SameName}
    assert "'raises'" in messages and "database of heads is down" in messages
    assert "'junk'" in messages and "<class 'int'>" in messages
    assert "head name 'iso_head' is registered by plugins 'junk' and 'good'" in messages
    assert "database of heads is down" in _record(pm, "raises").error


# -- blocking and autoload ------------------------------------------------------------------


def test_block_by_environment_variable(make_dist, monkeypatch):
    make_dist("fake-one", {"one": GOOD_PLUGIN.format(tag="one")})
    make_dist("fake-two", {"two": GOOD_PLUGIN.format(tag="two")})
    make_dist("fake-three", {"three": GOOD_PLUGIN.format(tag="three")})
    monkeypatch.setenv(BLOCK_ENV, "one, fake-three")  # a plugin name and a distribution name
    pm = get_plugin_manager()
    assert _record(pm, "one").status == "blocked" and _record(pm, "three").status == "blocked"
    assert _record(pm, "two").status == "loaded"
    from longllava_sdk.registry import available_adapters

    adapters = available_adapters()
    assert "two_adapter" in adapters and "one_adapter" not in adapters and "three_adapter" not in adapters


def test_block_by_argument(make_dist):
    make_dist("fake-one", {"one": GOOD_PLUGIN.format(tag="one")})
    make_dist("fake-two", {"two": GOOD_PLUGIN.format(tag="two")})
    pm = create_plugin_manager(block=["one"])
    assert pm.get_plugin("one") is None and pm.get_plugin("two") is not None

    # On the existing process-wide manager, blocking unregisters what was loaded.
    pm = get_plugin_manager()
    assert "two_head" in available_heads()
    assert get_plugin_manager(block=["two"]) is pm
    assert _record(pm, "two").status == "blocked" and "two_head" not in available_heads()
    assert pm.register(object(), name="two") is None  # stays blocked


def test_autoload_disabled_by_environment_variable(make_dist, monkeypatch):
    make_dist("fake-one", {"one": GOOD_PLUGIN.format(tag="one")})
    monkeypatch.setenv(DISABLE_AUTOLOAD_ENV, "1")
    pm = get_plugin_manager()
    assert pm.autoload is False and list_plugins() == []

    class Mine:
        @hookimpl
        def longllava_register_domains(self):
            return ["mine.yaml"]

    assert pm.register(Mine(), name="mine") == "mine"
    (record,) = list_plugins()
    assert (record.name, record.source, record.hooks) == ("mine", "programmatic", ["longllava_register_domains"])
    assert Path(record.module_file) == Path(__file__)

    with pytest.raises(ConfigError, match="reset_plugin_manager"):
        get_plugin_manager(autoload=True)
    reset_plugin_manager()
    monkeypatch.delenv(DISABLE_AUTOLOAD_ENV)
    assert _record(get_plugin_manager(), "one").status == "loaded"
    reset_plugin_manager()
    assert get_plugin_manager(autoload=False).get_plugin("one") is None


# -- every hook, called through the manager -------------------------------------------------


class _AllHooks:
    """A programmatic plugin implementing every hook, recording what it was given."""

    def __init__(self, adapter_cls, head_cls, command, callback, importer_cls=None, exporter_cls=None):
        self.adapter_cls, self.head_cls, self.command, self.callback = adapter_cls, head_cls, command, callback
        self.importer_cls, self.exporter_cls = importer_cls, exporter_cls
        self.seen: dict[str, tuple] = {}

    @hookimpl
    def longllava_register_adapters(self):
        return [self.adapter_cls]

    @hookimpl
    def longllava_register_heads(self):
        return [self.head_cls]

    @hookimpl
    def longllava_register_domains(self):
        return ["recipes/chest_ct.yaml"]

    @hookimpl
    def longllava_register_commands(self):
        return [self.command]

    @hookimpl
    def longllava_register_importers(self):
        return [self.importer_cls]

    @hookimpl
    def longllava_register_exporters(self):
        return [self.exporter_cls]

    @hookimpl
    def longllava_expert_findings(self, media):
        self.seen["expert_findings"] = (media,)
        return f"{len(media)} image(s) seen by the all-hooks expert"

    @hookimpl
    def longllava_model_loaded(self, model, config):
        self.seen["model_loaded"] = (model, config)
        model.seen_by_plugin = True

    @hookimpl
    def longllava_apply_lora(self, model, lora_config):
        if lora_config.get("r") != 4:
            return None  # not ours: let the default (or another plugin) decide
        return torch.nn.Sequential(model)

    @hookimpl
    def longllava_trainer_callbacks(self, training_args, recipe):
        self.seen["trainer_callbacks"] = (training_args, recipe)
        return [self.callback]


def test_every_hook_is_called_through_the_manager(monkeypatch, capsys, tmp_path):
    from transformers import TrainerCallback

    from longllava_sdk.adapters import InputAdapter
    from longllava_sdk.exporters import ExportOption, Exporter, ExportResult
    from longllava_sdk.importers import ImportedRow, Importer
    from longllava_sdk.registry import available_adapters, available_exporters, available_importers

    monkeypatch.setenv(DISABLE_AUTOLOAD_ENV, "1")

    class TxtAdapter(InputAdapter):
        name = "all_hooks_txt"
        kind = "images"
        extensions = (".allhooks",)

        def load(self, source, *, max_images=None):
            raise AdapterError(source, "not needed here")

    class Head(TaskHead):
        name = "all_hooks_head"
        problem_type = "multi_label"

        def forward(self, hidden_states, attention_mask):
            return hidden_states.mean(1)[:, : self.num_labels]

        def loss(self, logits, targets):
            return torch.nn.functional.binary_cross_entropy_with_logits(logits, targets.float())

        def metrics(self, predictions, targets):
            return {"exact": float((predictions == targets).all(-1).float().mean())}

    def shout_twice(word: str, times: int = 2) -> int:
        """Print WORD in capitals TIMES times.

        Args:
            word: what to print.
            times: how often.
        """
        print(" ".join([word.upper()] * times))
        return 0

    class LinesImporter(Importer):
        name = "all_hooks_lines"
        description = "one question per line"
        media_lookup = "none"

        def iter_rows(self, source, media_root):
            for number, line in enumerate(source.read_text().splitlines(), start=1):
                yield ImportedRow(number, f"q{number}", [("human", line), ("gpt", "ok")])

    class ShoutExporter(Exporter):
        name = "all-hooks-shout"
        description = "the answer in capitals, in a text file"
        source_kind = "images"
        source_option = "image"
        source_help = "the image the answer is about"
        suffixes = (".txt",)
        options = {"times": ExportOption(int, 1, "how often")}

        def export(self, source, answer, output, *, times=1):
            output.write_text("\n".join([answer.upper()] * times))
            return ExportResult(self.name, output, f"{times} line(s)")

    callback = TrainerCallback()
    plugin = _AllHooks(TxtAdapter, Head, shout_twice, callback, LinesImporter, ShoutExporter)
    pm = get_plugin_manager()
    assert pm.register(plugin, name="all_hooks") == "all_hooks"
    assert _record(pm, "all_hooks").hooks == sorted(hook_names())

    assert pm.hook.longllava_register_adapters() == [[TxtAdapter]]
    assert available_adapters() == {"all_hooks_txt": TxtAdapter}
    assert pm.hook.longllava_register_heads() == [[Head]]
    assert available_heads() == {"all_hooks_head": Head}
    assert pm.hook.longllava_register_domains() == [["recipes/chest_ct.yaml"]]
    assert pm.hook.longllava_register_commands() == [[shout_twice]]
    assert pm.hook.longllava_register_importers() == [[LinesImporter]]
    assert available_importers() == {"all_hooks_lines": LinesImporter}
    assert pm.hook.longllava_register_exporters() == [[ShoutExporter]]
    assert available_exporters() == {"all-hooks-shout": ShoutExporter}
    from longllava_sdk.media import Media

    from PIL import Image

    media = Media("images", [Image.new("RGB", (4, 4))], [{}], source="none")
    assert pm.hook.longllava_expert_findings(media=media) == ["1 image(s) seen by the all-hooks expert"]
    assert plugin.seen["expert_findings"] == (media,)

    model, config = torch.nn.Linear(2, 2), {"preset": "tiny"}
    assert pm.hook.longllava_model_loaded(model=model, config=config) == []
    assert plugin.seen["model_loaded"] == (model, config) and model.seen_by_plugin

    wrapped = pm.hook.longllava_apply_lora(model=model, lora_config={"r": 4})
    assert isinstance(wrapped, torch.nn.Sequential) and wrapped[0] is model  # firstresult: one answer
    assert pm.hook.longllava_apply_lora(model=model, lora_config={"r": 8}) is None

    class Counting:
        calls = 0

        @hookimpl(wrapper=True)
        def longllava_apply_lora(self, model, lora_config):
            answer = yield
            Counting.calls += 1
            return answer

    pm.register(Counting(), name="counting")
    assert pm.hook.longllava_apply_lora(model=model, lora_config={"r": 4})[0] is model
    assert Counting.calls == 1

    args = {"output_dir": "/tmp/x"}
    assert pm.hook.longllava_trainer_callbacks(training_args=args, recipe=None) == [[callback]]
    assert plugin.seen["trainer_callbacks"] == (args, None)

    # A plugin command is a real `longllava-sdk` sub-command.
    from longllava_sdk.cli import available_commands, main

    assert available_commands()["shout-twice"] is shout_twice
    capsys.readouterr()
    assert main(["shout-twice", "hello", "--times", "3"]) == 0
    assert capsys.readouterr().out.strip() == "HELLO HELLO HELLO"
    # A plugin exporter is a real `longllava-sdk export NAME` sub-command, flags from its declaration.
    source, target = tmp_path / "scan.png", tmp_path / "answer.txt"
    source.write_bytes(b"x")
    assert main(["export", "all-hooks-shout", "--image", str(source), "--answer", "ok", "--output", str(target),
                 "--times", "2"]) == 0
    assert target.read_text() == "OK\nOK"


def test_collect_rejects_unknown_hooks_and_bad_arguments():
    pm = create_plugin_manager(autoload=False)
    with pytest.raises(PluginError, match="unknown hook 'longllava_nope'"):
        pm.collect("longllava_nope")
    with pytest.raises(TypeError, match="longllava_model_loaded"):
        pm.collect("longllava_model_loaded", model=None)


# -- TaskHead -------------------------------------------------------------------------------


class _Probe(TaskHead):
    name = "probe_for_tests"
    problem_type = "single_label"

    def __init__(self, hidden_size, labels, scale=1.0):
        super().__init__(hidden_size, labels)
        self.scale = scale
        self.linear = torch.nn.Linear(hidden_size, self.num_labels)

    def forward(self, hidden_states, attention_mask):
        return self.linear(self.pool(hidden_states, attention_mask)) * self.scale

    def loss(self, logits, targets):
        return torch.nn.functional.cross_entropy(logits, targets)

    def metrics(self, predictions, targets):
        return {"accuracy": float((predictions == targets).float().mean())}

    def config_dict(self):
        return {**super().config_dict(), "scale": self.scale}


def test_task_head_pool_is_a_masked_mean():
    hidden = torch.arange(2 * 4 * 3, dtype=torch.float32).reshape(2, 4, 3)
    mask = torch.tensor([[1, 1, 0, 0], [0, 0, 0, 0]])
    pooled = TaskHead.pool(hidden, mask)
    assert pooled.shape == (2, 3)
    torch.testing.assert_close(pooled[0], hidden[0, :2].mean(0))
    torch.testing.assert_close(pooled[1], torch.zeros(3))  # no valid position -> zeros, not NaN
    with pytest.raises(ValueError, match=r"\(B, L\)"):
        TaskHead.pool(hidden, mask[:, :3])


def test_task_head_contract_and_config_round_trip():
    head = _Probe(8, ["cat", "dog", "eel"], scale=2.0)
    hidden, mask = torch.randn(5, 7, 8), torch.ones(5, 7, dtype=torch.long)
    logits = head(hidden, mask)
    assert logits.shape == (5, 3)
    targets = torch.tensor([0, 1, 2, 0, 1])
    head.loss(logits, targets).backward()
    assert head.linear.weight.grad is not None
    predictions = head.predict(logits)
    assert predictions.shape == (5,) and head.metrics(predictions, targets)["accuracy"] <= 1.0

    config = head.config_dict()
    assert config == {"name": "probe_for_tests", "problem_type": "single_label", "hidden_size": 8,
                      "labels": ["cat", "dog", "eel"], "scale": 2.0}
    rebuilt = _Probe.from_config(json.loads(json.dumps(config)))
    assert rebuilt.labels == head.labels and rebuilt.scale == 2.0
    with pytest.raises(ConfigError, match="cannot build"):
        _Probe.from_config({**config, "name": "other"})

    with pytest.raises(ConfigError, match="duplicate labels"):
        _Probe(8, ["a", "a"])
    with pytest.raises(ConfigError, match="at least one label"):
        _Probe(8, [])
    with pytest.raises(ConfigError, match="hidden_size"):
        _Probe(0, ["a"])
    with pytest.raises(TypeError):
        TaskHead(8, ["a"])  # abstract


# -- the third-party example plugin, pip-installed --------------------------------------------


@pytest.fixture(scope="module")
def example_plugin_installed(tmp_path_factory):
    """pip-install docs/examples/longllava-example-plugin (from a copy, so the source tree
    stays clean); uninstall afterwards. A file lock serialises concurrent test runs."""
    lock = open(Path(tmp_path_factory.getbasetemp()).parent / "longllava-example-plugin.lock", "w")
    fcntl.flock(lock, fcntl.LOCK_EX)
    source = tmp_path_factory.mktemp("example") / "longllava-example-plugin"
    shutil.copytree(EXAMPLE_PLUGIN, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]
    try:
        subprocess.run(pip + ["install", "--no-deps", "--no-build-isolation", "--no-index", "--no-cache-dir",
                              "--force-reinstall", "-q", str(source)], check=True, capture_output=True, text=True)
        importlib.invalidate_caches()
        yield tomllib.loads((EXAMPLE_PLUGIN / "pyproject.toml").read_text())["project"]
    finally:
        subprocess.run(pip + ["uninstall", "-y", "-q", "longllava-example-plugin"], capture_output=True)
        for name in [m for m in sys.modules if m.startswith("longllava_example_plugin")]:
            del sys.modules[name]
        importlib.invalidate_caches()
        fcntl.flock(lock, fcntl.LOCK_UN)
        lock.close()


def test_example_expert_reads_the_bundled_ct_and_its_text_reaches_the_prompt(example_plugin_installed,
                                                                              tiny_model_and_processor):
    """The example plugin's Hounsfield-unit expert on the bundled CT series, through the Pipeline's prompt."""
    import numpy as np
    import pydicom

    from longllava_sdk import Pipeline
    from longllava_sdk.experts import FINDINGS_HEADER, available_experts

    assert "example_plugin" in available_experts()
    series = REPO / "domains" / "medical" / "data" / "ct" / "series_01"
    pipe = Pipeline(*tiny_model_and_processor)
    media = pipe.collect_media(volume=series)
    messages = [{"role": "user", "content": "Any nodules?", "media": media}]
    prompt = pipe.processor.tokenizer.decode(pipe.inputs(messages)["input_ids"][0])
    # the same figures computed here from the files, independently of the plugin
    hu = np.stack([pydicom.dcmread(m["file"]).pixel_array * float(pydicom.dcmread(m["file"]).RescaleSlope)
                   + float(pydicom.dcmread(m["file"]).RescaleIntercept) for m in media[0].metadata])
    air, bone = (hu < -400).mean(), (hu >= 300).mean()
    expected = f"- example_plugin: HU screen of {len(hu)} CT slice(s): air/lung {air:.0%}, "
    assert f"{FINDINGS_HEADER}\n{expected}" in prompt, prompt[-600:]
    assert f"bone {bone:.0%}." in prompt and prompt.index(FINDINGS_HEADER) < prompt.index("Any nodules?")
    assert FINDINGS_HEADER not in pipe.processor.tokenizer.decode(pipe.inputs(messages, experts=[])["input_ids"][0])
    # a non-CT source gets no findings: nothing added
    scene = pipe.collect_media(tiled=REPO / "domains" / "remote_sensing" / "data" / "scenes" / "rmnp_01.tif")
    text = pipe.processor.tokenizer.decode(pipe.inputs([{"role": "user", "content": "x", "media": scene}])
                                           ["input_ids"][0])
    assert FINDINGS_HEADER not in text


def test_example_expert_counts_nodule_candidates_in_a_chest_phantom(example_plugin_installed):
    """Two lungs in a soft-tissue body with three 8 mm nodules: three candidates, lung volume as built."""
    import numpy as np

    from longllava_example_plugin.lung_expert import lung_nodule_candidates

    z, y, x = np.mgrid[0:12, 0:96, 0:96]
    hu = np.full((12, 96, 96), -1000.0)
    hu[((x - 48) / 44) ** 2 + ((y - 48) / 36) ** 2 < 1] = 40
    lungs = np.zeros(hu.shape, bool)
    for cx in (28, 68):
        lungs |= ((x - cx) / 14) ** 2 + ((y - 48) / 22) ** 2 < 1
    hu[lungs] = -850
    for cz, cy, cx in [(5, 40, 28), (6, 56, 68), (4, 44, 72)]:
        hu[((z - cz) * 5) ** 2 + (y - cy) ** 2 + (x - cx) ** 2 < 16] = 30
    found = lung_nodule_candidates(hu, (5.0, 1.0, 1.0))
    assert found["candidates"] == 3
    assert found["lung_ml"] == pytest.approx(lungs.sum() * 5.0 / 1000.0)
    hu[lungs] = 40  # no aerated lung: no screen
    assert lung_nodule_candidates(hu, (5.0, 1.0, 1.0)) is None


def test_example_plugin_is_discovered_through_its_entry_point(example_plugin_installed, capsys):
    project = example_plugin_installed
    pm = get_plugin_manager()
    record = _record(pm, "example_plugin")
    assert record.status == "loaded", record.error
    assert record.version == project["version"] and record.distribution == project["name"]
    assert record.entry_point == "longllava_example_plugin"
    assert "site-packages" in record.module_file  # the installed copy, not the docs/ sources
    assert record.hooks == ["longllava_expert_findings", "longllava_register_adapters", "longllava_register_commands",
                            "longllava_register_heads"]

    from longllava_sdk.registry import available_adapters

    assert available_adapters()["npy_volume"].__module__ == "longllava_example_plugin.npy_volume"
    assert available_heads()["example_linear_probe"].__module__ == "longllava_example_plugin.probe_head"

    from longllava_sdk.cli import main

    capsys.readouterr()
    assert main(["plugins"]) == 0
    table = capsys.readouterr().out
    row = next(line for line in table.splitlines() if line.startswith("example_plugin "))
    assert project["version"] in row and "loaded" in row and "register_heads" in row and project["name"] in row
    assert main(["plugins", "--json"]) == 0
    listed = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert listed["example_plugin"]["version"] == project["version"]
    assert listed["example_plugin"]["source"] == f"distribution {project['name']}"


def test_example_plugin_adapter_reads_real_npy_volumes(example_plugin_installed, tmp_path, capsys):
    from longllava_sdk.registry import resolve_adapter

    # 40 slices of 24x32; slice i holds the constant value 10*i, slice 7 has a NaN hole.
    volume = np.repeat((np.arange(40, dtype=np.float32) * 10)[:, None, None], 24 * 32, axis=1).reshape(40, 24, 32)
    volume[7, :4, :4] = np.nan
    path = tmp_path / "stack.npy"
    np.save(path, volume)

    adapter = resolve_adapter(path)  # claimed by extension + magic, through the entry point
    assert adapter.name == "npy_volume"
    media = adapter.load(path, max_images=5)
    assert media.kind == "volume" and len(media) == 5
    indices = [m["slice_index"] for m in media.metadata]
    assert indices[0] == 0 and indices[-1] == 39 and indices == sorted(indices)
    assert media.info["window"] == (0.0, 390.0) and media.info["total_slices"] == 40
    for image, index in zip(media.images, indices):
        pixels = np.asarray(image)
        assert image.mode == "RGB" and pixels.shape == (24, 32, 3)
        assert np.all(pixels == round(index * 10 / 390 * 255))

    spaced = resolve_adapter(path, options={"spacing": 2.5, "window": (0.0, 100.0)}).load(path, max_images=None)
    assert len(spaced) == 40 and spaced.metadata[3]["slice_position"] == 7.5
    assert np.asarray(spaced.images[7])[0, 0, 0] == 0  # NaN -> low end of the window
    assert np.asarray(spaced.images[20])[0, 0, 0] == 255  # 200 clipped to the window

    # Bad inputs: typed errors naming the file.
    truncated = tmp_path / "truncated.npy"
    truncated.write_bytes(path.read_bytes()[:1000])
    objects = tmp_path / "objects.npy"
    np.save(objects, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    flat = tmp_path / "flat.npy"
    np.save(flat, np.zeros((4, 4)))
    fake = tmp_path / "fake.npy"
    fake.write_bytes(b"PK\x03\x04 not numpy")
    for bad, problem in [(truncated, "unreadable"), (objects, "unreadable"), (flat, "shape"), (fake, "magic")]:
        with pytest.raises(AdapterError, match=problem) as info:
            adapter.load(bad)
        assert info.value.path == str(bad)
    assert not adapter.claims(fake)

    # The plugin's CLI command.
    from longllava_sdk.cli import main

    capsys.readouterr()
    assert main(["npy-info", str(path)]) == 0
    described = json.loads(capsys.readouterr().out)
    assert described["shape"] == [40, 24, 32] and described["max"] == 390.0


def test_example_plugin_head_trains(example_plugin_installed):
    head_cls = available_heads()["example_linear_probe"]
    torch.manual_seed(0)
    head = head_cls(hidden_size=16, labels=["normal", "abnormal"], dropout=0.0)
    hidden = torch.randn(32, 6, 16)
    mask = torch.ones(32, 6, dtype=torch.long)
    targets = (hidden.mean(1)[:, 0] > 0).long()  # learnable from the pooled features
    optimizer = torch.optim.SGD(head.parameters(), lr=1.0)
    for _ in range(100):
        optimizer.zero_grad()
        loss = head.loss(head(hidden, mask), targets)
        loss.backward()
        optimizer.step()
    scores = head.metrics(head.predict(head(hidden, mask)), targets)
    assert scores["accuracy"] >= 0.9 and 0.0 <= scores["macro_f1"] <= 1.0
    assert head_cls.from_config(head.config_dict()).config_dict() == head.config_dict()


def test_a_third_party_head_trains_from_a_recipe_and_serves_with_no_engine_change(example_plugin_installed,
                                                                                tmp_path):
    """The promise end to end: a plugin head with its own label format, named by a recipe, is
    fine-tuned, saved, restored by Pipeline.from_pretrained and run."""
    from PIL import Image, ImageDraw
    from trainer_fixtures import write_micro_model

    from longllava_sdk import Pipeline
    from longllava_sdk.errors import DatasetError
    from longllava_sdk.recipes import Recipe
    from longllava_sdk.training.finetuning import finetune

    data = tmp_path / "data"
    (data / "img").mkdir(parents=True)
    rows = ["source,answer,labels,split"]
    for index in range(10):
        side = 6 + 5 * (index % 5)
        image = Image.new("RGB", (56, 56), (128, 128, 128))
        ImageDraw.Draw(image).rectangle([4, 4, 4 + side, 4 + side], fill=(200, 30, 30))
        image.save(data / "img" / f"s{index}.png")
        # two spellings of the head's own format: a number in labels, or the answer text
        answer, labels = (f"severity {index % 5} of 4", "") if index % 2 else ("", f"{index % 5}")
        rows.append(f"img/s{index}.png,{answer},{labels},{'eval' if index >= 8 else 'train'}")
    (data / "rows.csv").write_text("\n".join(rows) + "\n")
    recipe_path = tmp_path / "severity.yaml"
    recipe_path.write_text(
        "name: severity\nhead: {type: example_severity, labels: [severity]}\nmax_images: 1\n"
        "prompts: {question: 'How severe is it?'}\n"
        "training: {epochs: 1, batch_size: 2, learning_rate: 1.0e-3, max_length: 256}\n"
        f"data: {{path: {data / 'rows.csv'}}}\n")
    assert Recipe.from_yaml(recipe_path).head.type == "example_severity"
    base = write_micro_model(tmp_path / "base")

    result = finetune(str(recipe_path), model=str(base), output=str(tmp_path / "run"), max_steps=4)
    assert result.head == "example_severity" and not result.generates
    assert {"eval_mae", "eval_rmse", "eval_loss"} <= set(result.metrics)
    pipe = Pipeline.from_pretrained(result.model_dir, device="cpu")
    assert type(pipe.head).__module__ == "longllava_example_plugin.severity_head"
    answer = pipe.classify("How severe is it?", images=[str(data / "img" / "s3.png")])
    assert set(answer) == {"severity", "scale"} and 0.0 <= answer["severity"] <= 4.0

    # the head's own validation of its label format reaches the dataset report
    (data / "bad.csv").write_text("source,answer\nimg/s1.png,looks mild\nimg/s2.png,severity 9 of 4\n")
    with pytest.raises(DatasetError) as caught:
        finetune(str(recipe_path), model=str(base), data=str(data / "bad.csv"), output=str(tmp_path / "bad"))
    problems = "\n".join(caught.value.problems)
    assert "no severity score" in problems and "outside 0..4" in problems
    assert not (tmp_path / "bad").exists()  # validated before the output folder was created


def test_recipes_name_any_installed_head_and_list_them_when_unknown(example_plugin_installed):
    from longllava_sdk.recipes import Recipe

    recipe = Recipe.from_dict({"name": "x", "head": {"type": "example_linear_probe", "labels": ["a", "b"]}})
    assert recipe.head.type == "example_linear_probe"
    with pytest.raises(ConfigError, match="installed heads: .*example_severity.*generate"):
        Recipe.from_dict({"name": "x", "head": {"type": "no_such_head"}})
    with pytest.raises(ConfigError, match="exactly one score"):
        Recipe.from_dict({"name": "x", "head": {"type": "example_severity", "labels": ["a", "b"]}})


def test_example_plugin_can_be_blocked_by_distribution_name(example_plugin_installed, monkeypatch):
    monkeypatch.setenv(BLOCK_ENV, "longllava-example-plugin")
    pm = get_plugin_manager()
    assert _record(pm, "example_plugin").status == "blocked"
    assert "example_linear_probe" not in available_heads()



def test_adapters_are_chosen_within_the_asked_kind(tmp_path):
    """An image file asked for as a volume is not read by the images adapter; a named adapter of
    another kind is refused, naming both kinds."""
    from PIL import Image

    from longllava_sdk.errors import UnsupportedSourceError
    from longllava_sdk.registry import resolve_adapter

    png = tmp_path / "photo.png"
    Image.new("RGB", (16, 16), (1, 2, 3)).save(png)
    assert resolve_adapter(png).name == "images"
    assert resolve_adapter(png, kind="images").name == "images"
    with pytest.raises(UnsupportedSourceError) as refused:
        resolve_adapter(png, kind="volume")
    message = str(refused.value)  # each volume adapter says why, the images adapter is not asked
    assert "photo.png" in message and "dicom:" in message and "nifti:" in message and "images:" not in message
    with pytest.raises(UnsupportedSourceError, match="reads images sources, not volume"):
        resolve_adapter(png, "images", kind="volume")

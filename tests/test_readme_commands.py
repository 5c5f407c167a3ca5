"""Every command of the README's command list runs on the README's install (issue 17, row 3).

The README's install is ``pip install -e .`` (core dependencies) plus the extra a line names
(``serve``'s). The commands run through a ``longllava-sdk`` that cannot import matplotlib
(the plotting library a user of the core install does not have), in a folder holding the
inputs the lines name (``a.png``, ``clip.mp4``, a tiny official-format ``LongLLaVA-9B/``,
a CT-RATE ``dataset/``, a ``dicom_export/`` and ``ct/`` series, a ``scene.tif``). Changed, and
said here: ``serve`` runs in the background on a free port until it says ``ready`` (it would
serve forever); the ``eval niah`` and ``eval vnbench`` sweeps get small sizes appended (their defaults run up to 1000 images);
``bench`` (every benchmark suite, many minutes) is checked with ``--help``, its suites run in
their own tests and in ``.ci/run``'s README test command; ``infer --export geojson`` on the
random-weight ``out/tiny`` may end with the typed "holds no box to export" refusal (its answer
is noise). Slow: .ci/run runs it explicitly.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[1]
BLOCKED = ("matplotlib",)  # optional libraries the README's install does not bring
SMALL = {
    "eval niah": ["--num-images", "2", "4", "--depths", "0.5", "--samples-per-cell", "1"],
    "eval vnbench": ["--num-images", "4", "--samples-per-task", "1"],
}


def readme_commands() -> list[str]:
    """The ``longllava-sdk ...`` lines of the README's command block (comments dropped)."""
    block = next(b for b in re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)
                 if "longllava-sdk init-model" in b)
    return [shlex.join(shlex.split(line, comments=True)) for line in block.splitlines()
            if line.startswith("longllava-sdk ")]


def test_the_command_list_is_found():
    commands = readme_commands()
    assert len(commands) >= 10 and commands[0].startswith("longllava-sdk init-model")
    assert any(c.startswith("longllava-sdk eval niah") for c in commands)


def _prepare(folder: Path) -> None:
    from PIL import Image

    from test_convert_official import official_config, official_state_dict, write_official
    from test_data_import import write_ct_rate

    Image.new("RGB", (64, 48), (200, 30, 30)).save(folder / "a.png")
    shutil.copy(ROOT / "domains" / "video" / "data" / "clips" / "bigbuckbunny_1.mp4", folder / "clip.mp4")
    write_official(folder / "LongLLaVA-9B", official_state_dict(num_experts=4), official_config(num_experts=4))
    write_ct_rate(folder, bad_rows=False)
    shutil.copytree(ROOT / "domains" / "medical" / "data" / "ct" / "series_01", folder / "dicom_export")
    shutil.copytree(ROOT / "domains" / "medical" / "data" / "ct" / "series_01", folder / "ct")  # export dicom-sr
    shutil.copy(ROOT / "domains" / "remote_sensing" / "data" / "scenes" / "rmnp_01.tif", folder / "scene.tif")
    (folder / "data").mkdir()


@pytest.mark.slow
def test_every_readme_command_runs_on_the_readme_install(tmp_path):
    _prepare(tmp_path)
    shim = tmp_path / "bin" / "longllava-sdk"
    shim.parent.mkdir()
    shim.write_text(f"#!{sys.executable}\nimport sys\n"
                    + "".join(f"sys.modules[{name!r}] = None  # not in the README's install\n" for name in BLOCKED)
                    # the guard a console script has: serve's decoding workers re-import __main__
                    + "if __name__ == '__main__':\n"
                    + "    from longllava_sdk.cli import main\n    sys.exit(main(sys.argv[1:]))\n")
    shim.chmod(0o755)
    env = {**os.environ, "PATH": f"{shim.parent}{os.pathsep}{os.environ['PATH']}", "OMP_NUM_THREADS": "1"}
    failures = []
    for line in readme_commands():
        argv = shlex.split(line)
        command = " ".join(argv[1:3])
        if argv[1] == "bench":
            argv.append("--help")
        argv += SMALL.get(command, [])
        if argv[1] == "serve":
            failures += _serve(argv, tmp_path, env)
            continue
        done = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
                              stdin=subprocess.DEVNULL)
        if "--export" in argv and done.returncode == 1 and "box to export" in done.stderr.strip().splitlines()[-1]:
            continue  # init-model's random weights answer without a box: the typed refusal is the run's end
        if done.returncode != 0 or "Traceback" in done.stderr:
            failures.append(f"{line}\n{done.stderr[-2000:]}")
    assert not failures, "\n\n".join(failures)
    assert (tmp_path / "out" / "9b" / "config.json").is_file() and (tmp_path / "ct_rate.jsonl").is_file()
    assert list(tmp_path.glob("eval-runs/niah-*/heatmap.png")), "eval niah drew no heatmap"


def _serve(argv: list[str], folder: Path, env: dict[str, str]) -> list[str]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen([*argv, "--port", str(port)], cwd=folder, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and process.poll() is None:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).json().get("status") == "ready":
                    return []
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        return [f"{' '.join(argv)}: never ready"]
    finally:
        process.terminate()
        _, err = process.communicate(timeout=30)
        if "Traceback" in err:
            return [f"{' '.join(argv)}\n{err[-2000:]}"]

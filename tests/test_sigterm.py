"""SIGTERM during training: a complete checkpoint at the next step boundary, exit status 143, resumable."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from trainer_fixtures import write_colour_dataset

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent

WORKER = "import sys; from trainer_fixtures import sigterm_worker; sigterm_worker(sys.argv[1], sys.argv[2], False, 10**6)"


def _run(*argv: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), str(REPO), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.Popen([sys.executable, "-c", WORKER, *argv], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=env)


@pytest.mark.skipif(not hasattr(signal, "SIGTERM") or os.name != "posix", reason="POSIX signals")
def test_sigterm_saves_at_the_next_step_and_exits_143(tmp_path, capsys):
    from longllava_sdk.training.checkpointing import latest_complete_checkpoint, list_checkpoints

    data_root = tmp_path / "data"
    write_colour_dataset(data_root, n=64, head="classify", eval_fraction=0.0, training={"batch_size": 1})
    output = tmp_path / "run"
    output.mkdir()

    process = _run(str(data_root), str(output))
    deadline = time.time() + 240
    while not (output / "step-2").exists():
        if process.poll() is not None or time.time() > deadline:
            process.kill()
            pytest.fail(f"worker did not start training:\n{process.communicate()[0]}")
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    log, _ = process.communicate(timeout=240)
    assert process.returncode == 143, log

    checkpoint = latest_complete_checkpoint(output)
    assert checkpoint is not None, log
    stopped_at = json.loads((checkpoint / "trainer_state.json").read_text())["global_step"]
    assert 2 <= stopped_at < 400 and checkpoint.name == f"checkpoint-{stopped_at}"
    assert [c for _, _, c in list_checkpoints(output)] == [True]  # only the SIGTERM save, and it is complete
    assert f"step {stopped_at}" in log and f"step {stopped_at + 1}" not in log  # stopped at that boundary
    assert not any(p.name.endswith(".partial") for p in output.iterdir())

    # resume in this process (saves a second interpreter start-up)
    import torch

    from trainer_fixtures import sigterm_worker

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        capsys.readouterr()
        final = sigterm_worker(data_root, output, True, stopped_at + 2)
    finally:
        torch.set_num_threads(threads)
    log = capsys.readouterr().out
    assert final == stopped_at + 2
    assert f"start checkpoint-{stopped_at}" in log
    assert f"step {stopped_at + 1}" in log and f"final {stopped_at + 2}" in log
    assert "step 1\n" not in log  # it continued, it did not start over

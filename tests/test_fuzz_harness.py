"""The fuzz harness (``python -m tests.fuzz``) keeps working: a short campaign per target, and
the sandbox classifies deliberately bad jobs correctly (so a real finding cannot pass unseen).

The full campaigns (10,000 iterations per target) are run by hand; see docs/reliability.md.
"""

from __future__ import annotations

import json
import os

import pytest

from fuzz.campaign import run_campaign
from fuzz.sandbox import OUTCOMES, run_job
from fuzz.targets import TARGET_NAMES

pytestmark = pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")
SMOKE_ITERATIONS = 20
ADAPTERS = ("dicom", "nifti", "geotiff", "video", "images", "hostile")


@pytest.mark.timeout(300)
@pytest.mark.parametrize("target", TARGET_NAMES)
def test_smoke_campaign(target, tmp_path):
    summary = run_campaign(target, iterations=SMOKE_ITERATIONS, seed=7, out=tmp_path, progress=None)
    assert summary["iterations"] == SMOKE_ITERATIONS
    assert sum(summary["outcomes"].values()) == SMOKE_ITERATIONS
    assert set(summary["outcomes"]) == set(OUTCOMES)
    assert json.loads((tmp_path / "summary.json").read_text())["target"] == target
    assert summary["slowest_case"]["wall_s"] < 10
    if target in ADAPTERS:
        findings = summary["cases_with_findings"]
        assert summary["findings"] == 0, findings
        assert summary["typed_not_naming_the_file"] == 0
    else:  # the manifest loader: findings can only come from the loader itself, never an adapter
        for finding in summary["cases_with_findings"]:
            record = json.loads(next((tmp_path / "repro").glob(f"*-{finding['case']:06d}-*.json")).read_text())
            assert "longllava_plugins" not in (record["traceback"] or ""), record["traceback"]


@pytest.mark.timeout(120)
def test_campaign_is_reproducible(tmp_path):
    first = run_campaign("nifti", iterations=6, seed=3, out=tmp_path / "a", progress=None)
    again = run_campaign("nifti", iterations=6, seed=3, out=tmp_path / "b", progress=None)
    assert first["outcomes"] == again["outcomes"] and first["error_types"] == again["error_types"]


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    ("function", "args", "expected"),
    [
        ("untyped", [], "untyped"),
        ("typed", ["/data/x.dcm"], "typed"),
        ("hang", [], "hang"),
        ("allocate", [], "memory"),
        ("crash", [], "crash"),
        ("libc_abort", [], "crash"),
        ("network", [], "network"),
        ("write", [], "wrote"),
    ],
)
def test_sandbox_classifies(function, args, expected):
    result = run_job({"kind": "call", "call": f"fuzz.selftest:{function}", "args": args}, timeout_s=3,
                     memory_mb=512)
    assert result.outcome == expected, result
    if expected == "network":
        assert result.sockets and "127.0.0.1" in result.sockets[0]
    if expected == "typed":
        assert result.error_path == "/data/x.dcm"


@pytest.mark.timeout(60)
def test_sandbox_reports_files_opened_outside_the_root(tmp_path):
    secret = tmp_path / "outside" / "secret.txt"
    secret.parent.mkdir()
    secret.write_text("x")
    job = {"kind": "call", "call": "fuzz.selftest:escape", "args": [str(secret)], "forbidden": [str(secret.parent)]}
    result = run_job(job, timeout_s=5)
    assert result.outcome == "escape" and result.forbidden_opens == [os.path.realpath(secret)]

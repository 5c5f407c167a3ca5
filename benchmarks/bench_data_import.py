"""``data import`` and ``data deidentify``: throughput and peak memory, side by side.

Cases (each in its own process, so ``ru_maxrss`` is that case's peak):

* ``llava`` over a generated JSONL file of N rows (streamed) and the same rows as one
  ``.json`` document (parsed whole), for two sizes: the JSONL peak should stay flat as N
  grows tenfold while the JSON peak grows with the file;
* ``ct-rate`` over a generated reports CSV (N rows, every row's volume found by the folder
  convention, 1/8 of them labelled bad on purpose);
* ``deidentify`` over the bundled CT series (48 DICOM files).

Media are a few real PNG patches and NIfTI files shared by many rows (only ``stat`` is paid
per row: the importers check media, they do not decode them).

Usage: ``python benchmarks/bench_data_import.py [--rows 20000]`` (or ``longllava-sdk bench
--suite data-import``). Figures vary with machine load; compare rows within one run.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MEDICAL = REPO / "domains" / "medical" / "data"


def _llava_rows(folder: Path, n: int) -> list[dict]:
    images = sorted((MEDICAL / "pathology").glob("*.png"))
    for image in images:
        shutil.copy(image, folder / image.name)
    return [{"id": f"r{i}", "image": images[i % len(images)].name,
             "conversations": [{"from": "human", "value": f"<image>\nQuestion {i}: what stain is this?"},
                               {"from": "gpt", "value": "An immunohistochemistry stain " + "x" * 200}]}
            for i in range(n)]


def _ct_rate(folder: Path, n: int) -> Path:
    dataset = folder / "dataset"
    raw = gzip.compress((MEDICAL / "mri" / "anatomical.nii").read_bytes())
    dataset.mkdir()
    (dataset / "volume.nii.gz").write_bytes(raw)  # one real volume; each listed one links to it
    (dataset / "radiology_text_reports").mkdir(parents=True)
    source = dataset / "radiology_text_reports" / "train_reports.csv"
    with open(source, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["VolumeName", "ClinicalInformation_EN", "Technique_EN", "Findings_EN", "Impressions_EN"])
        for patient in range(1, n + 1):
            name = f"train_{patient}_a_1.nii.gz"
            if patient % 8:  # every 8th volume is missing: a bad row
                target = dataset / "train" / f"train_{patient}" / f"train_{patient}_a"
                target.mkdir(parents=True)
                (target / name).symlink_to(dataset / "volume.nii.gz")
            writer.writerow([name, "Cough.", "Non-contrast chest CT.", "Findings " + "y" * 400, "Impression."])
    return source


def _prepare(kind: str, base: Path, rows: int) -> None:
    """Write the case's input files (in the parent: the child's peak memory is the import's alone)."""
    if kind in ("jsonl", "json"):
        data = _llava_rows(base, rows)
        with open(base / f"data.{kind}", "w") as handle:
            if kind == "jsonl":
                handle.writelines(json.dumps(row) + "\n" for row in data)
            else:
                json.dump(data, handle)
    elif kind == "ct-rate":
        _ct_rate(base, rows)
    else:
        shutil.copytree(MEDICAL / "ct", base / "src")


def _case(kind: str, folder: str, rows: int) -> None:
    """Run one prepared case in this process and print a JSON line with its figures."""
    from longllava_sdk.data_import import import_dataset
    from longllava_sdk.deidentify import deidentify

    base = Path(folder)
    before, started = _rss_mb(), time.perf_counter()
    if kind in ("jsonl", "json"):
        report = import_dataset("llava", str(base / f"data.{kind}"), output=str(base / "out.jsonl"))
        done, bad = report.imported, len(report.problems)
    elif kind == "ct-rate":
        source = base / "dataset" / "radiology_text_reports" / "train_reports.csv"
        report = import_dataset("ct-rate", str(source), output=str(base / "out.jsonl"))
        done, bad = report.imported, len(report.problems)
    else:
        result = deidentify(str(base / "src"), output=str(base / "out"))
        done, bad = len(result.files), 0
    seconds = time.perf_counter() - started
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"case": kind, "rows": rows, "written": done, "bad": bad, "seconds": seconds,
                      "peak_mb": peak_mb, "growth_mb": max(0.0, peak_mb - before)}))


def _rss_mb() -> float:
    """The process's resident memory now (Linux ``/proc``), MB; the peak is compared to it."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def run(rows: int) -> list[dict]:
    plan = [("jsonl", rows), ("jsonl", rows * 10), ("json", rows), ("json", rows * 10), ("ct-rate", rows),
            ("deidentify", 48)]
    results = []
    for kind, n in plan:
        with tempfile.TemporaryDirectory() as folder:
            _prepare(kind, Path(folder), n)
            out = subprocess.run([sys.executable, __file__, "--case", kind, "--folder", folder, "--rows", str(n)],
                                 capture_output=True, text=True, check=True)
            results.append(json.loads(out.stdout.strip().splitlines()[-1]))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=10000)
    parser.add_argument("--case")
    parser.add_argument("--folder")
    args = parser.parse_args()
    if args.case:
        _case(args.case, args.folder, args.rows)
        return
    results = run(args.rows)
    print(f"{'case':<12}{'rows':>9}{'written':>9}{'bad':>7}{'seconds':>9}{'rows/s':>10}{'peak MB':>9}"
          f"{'import MB':>11}")
    for r in results:
        rate = r["rows"] / r["seconds"] if r["seconds"] else float("inf")
        print(f"{r['case']:<12}{r['rows']:>9}{r['written']:>9}{r['bad']:>7}{r['seconds']:>9.2f}{rate:>10.0f}"
              f"{r['peak_mb']:>9.0f}{r['growth_mb']:>11.1f}")
    jsonl = [r for r in results if r["case"] == "jsonl"]
    as_json = [r for r in results if r["case"] == "json"]
    print(f"\nmemory the import itself took (peak over the RSS before it): {jsonl[0]['growth_mb']:.1f} -> "
          f"{jsonl[1]['growth_mb']:.1f} MB for 10x the rows as JSONL (streamed); {as_json[0]['growth_mb']:.1f} -> "
          f"{as_json[1]['growth_mb']:.1f} MB as one JSON document (parsed whole)")


if __name__ == "__main__":
    main()

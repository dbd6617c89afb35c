"""Resumable cohort extraction: a cohort run killed midway (SIGKILL) and run again gives the uninterrupted table,
computing only the cases not yet logged in ``<out>.partial.jsonl``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

N_CASES = 14


def _pet_case(folder: Path, k: int) -> tuple[Path, Path]:
    """A small PET-like image in SUV (background ~1 g/ml with noise, 4 mm voxels) with two spherical lesions of
    uptake 4-9 g/ml, and their label map (labels 1 and 2)."""
    import nibabel as nib

    rng = np.random.default_rng(k)
    shape = (28, 28, 20)
    img = rng.normal(1.0, 0.15, shape).clip(0)
    lab = np.zeros(shape, np.int16)
    z, y, x = np.indices(shape)
    for label, (cx, cy, cz, r, suv) in enumerate([(9, 10, 9, 3 + k % 3, 4 + k % 5), (19, 17, 11, 2.5, 6.0)], 1):
        inside = (x - cx) ** 2 + (y - cy) ** 2 + (z - cz) ** 2 <= r ** 2
        img[inside] = rng.normal(suv, 0.1 * suv, inside.sum())
        lab[inside] = label
    affine = np.diag([4.0, 4.0, 4.0, 1.0])
    image, mask = folder / f"case{k:02d}_pet.nii.gz", folder / f"case{k:02d}_lesions.nii.gz"
    nib.save(nib.Nifti1Image(np.transpose(img, (2, 1, 0)).astype(np.float32), affine), image)
    nib.save(nib.Nifti1Image(np.transpose(lab, (2, 1, 0)), affine), mask)
    return image, mask


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    """A case table (nmkit-dataset/1) of N_CASES synthetic PET cases, each with two lesions selected by label."""
    from nmkit.dataset import MaskRef, new_table, write_dataset

    folder = tmp_path_factory.mktemp("resume_cohort")
    rows = []
    for k in range(N_CASES):
        image, mask = _pet_case(folder, k)
        rows.append({"case_id": f"C{k:02d}", "patient_id": f"P{k:02d}", "image": str(image), "units": "g/ml",
                     "masks": [MaskRef(file=str(mask), kind="labelmap", label=1, structure="lesion1"),
                               MaskRef(file=str(mask), kind="labelmap", label=2, structure="lesion2")]})
    path = folder / "cases.csv"
    write_dataset(new_table(rows), path, {"made_by": "test_radiomics_resume"})
    config = folder / "config.yaml"
    config.write_text("base: ibsi-c\nname: resume-test\nnew_spacing: [4, 4, 4]\nreseg_range: null\n"
                      "discretisation: {method: FBN, n_bins: 16}\n")
    return path


def _config(cohort: Path):
    from nmkit.radiomics.presets import load_config

    return load_config(str(cohort.parent / "config.yaml"))


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "nmkit", "radiomics", *args]


def _logged_cases(log: Path) -> int:
    if not log.is_file():
        return 0
    complete = 0
    for line in log.read_text().splitlines():
        try:  # a line torn by the kill (SIGKILL mid-write) is not a finished case: the re-run recomputes it
            complete += "key" in json.loads(line)
        except json.JSONDecodeError:
            pass
    return complete


def test_killed_cli_run_resumes_to_the_uninterrupted_table(cohort, tmp_path, capsys):
    """SIGKILL the CLI after a few logged cases; the re-run computes only the rest and writes the same table."""
    from nmkit.radiomics.cohort import extract_cohort
    from nmkit.radiomics.resume import partial_path

    out = tmp_path / "killed.csv"
    log = partial_path(out)
    args = _cli("--manifest", str(cohort), "--config", str(cohort.parent / "config.yaml"), "--no-progress", "--out", str(out))
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while _logged_cases(log) < 3 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    assert proc.poll() is None, f"the run ended before it could be killed: {proc.stderr.read().decode()[-500:]}"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL and not out.exists()
    done_before = _logged_cases(log)
    assert 3 <= done_before < N_CASES

    from nmkit.cli import main

    assert main(args[3:]) == 0  # the same command again (in this process: no second interpreter start)
    assert f"{done_before} of {N_CASES} case(s) taken from" in capsys.readouterr().out
    assert json.loads(Path(str(out) + ".provenance.json").read_text())["resumed_cases"] == done_before
    assert _logged_cases(log) == N_CASES  # only the missing cases were added to the log

    reference = extract_cohort(cohort, _config(cohort), progress=False).table  # uninterrupted, no log
    table = pd.read_csv(out)
    assert len(table) == 2 * N_CASES and list(table.case_id) == [f"C{k // 2:02d}" for k in range(2 * N_CASES)]
    expected = tmp_path / "reference.csv"
    reference.to_csv(expected, index=False)
    pd.testing.assert_frame_equal(table, pd.read_csv(expected))
    assert table.loc[0, "stat_max"] > 3.0 and table.loc[0, "image_units"] == "g/ml"  # lesion uptake, units carried


def test_resume_computes_only_missing_cases(cohort, tmp_path, monkeypatch):
    """An injected failure stops the run after 5 cases; the re-run computes the other cases only, once each."""
    from nmkit.radiomics import cohort as cohort_mod
    from nmkit.radiomics.resume import PartialStore

    config = _config(cohort)
    log = tmp_path / "out.csv.partial.jsonl"
    real = cohort_mod.run_case_rows
    calls: list[str] = []

    def crashing(case, *a, **k):
        if len(calls) == 5:
            raise KeyboardInterrupt  # not an Exception: it stops the whole cohort, like a crash
        calls.append(case["case_id"])
        return real(case, *a, **k)

    monkeypatch.setattr(cohort_mod, "run_case_rows", crashing)
    with pytest.raises(KeyboardInterrupt):
        cohort_mod.extract_cohort(cohort, config, progress=False, partial=log)
    assert len(PartialStore(log, next(iter(json.loads(l)["config_hash"] for l in log.read_text().splitlines()[1:2]))).done) == 5

    def counting(case, *a, **k):
        calls.append(case["case_id"])
        return real(case, *a, **k)

    calls.clear()
    monkeypatch.setattr(cohort_mod, "run_case_rows", counting)
    resumed = cohort_mod.extract_cohort(cohort, config, progress=False, partial=log)
    assert calls == [f"C{k:02d}" for k in range(5, N_CASES)]
    calls.clear()
    again = cohort_mod.extract_cohort(cohort, config, progress=False, partial=log)  # everything logged: nothing computed
    assert calls == []
    monkeypatch.setattr(cohort_mod, "run_case_rows", real)
    fresh = cohort_mod.extract_cohort(cohort, config, progress=False, partial=tmp_path / "fresh.jsonl")
    pd.testing.assert_frame_equal(resumed.table, fresh.table)
    pd.testing.assert_frame_equal(again.table, fresh.table)
    plain = cohort_mod.extract_cohort(cohort, config, progress=False).table  # no log at all: same numbers
    pd.testing.assert_frame_equal(fresh.table, plain, check_dtype=False)


def test_changed_config_or_case_is_recomputed_and_torn_line_ignored(cohort, tmp_path, monkeypatch):
    """Another configuration does not reuse the log; a truncated last line (killed mid-write) is recomputed."""
    from nmkit.radiomics import cohort as cohort_mod
    from nmkit.radiomics.cohort import extract_cohort, read_cases

    config = _config(cohort)
    cases = read_cases(cohort).iloc[:3].reset_index(drop=True)
    log = tmp_path / "out.csv.partial.jsonl"
    first = extract_cohort(cases, config, progress=False, partial=log)
    text = log.read_text()
    log.write_text(text[: len(text) - 40])  # the last case's line torn
    real = cohort_mod.run_case_rows
    calls: list[str] = []
    monkeypatch.setattr(cohort_mod, "run_case_rows", lambda case, *a, **k: calls.append(case["case_id"]) or real(case, *a, **k))
    second = extract_cohort(cases, config, progress=False, partial=log)
    assert calls == ["C02"]
    pd.testing.assert_frame_equal(first.table, second.table)
    calls.clear()
    config.discretisation.n_bins = 8
    extract_cohort(cases, config, progress=False, partial=log)
    assert calls == ["C00", "C01", "C02"]
    calls.clear()
    cases.loc[1, "patient_id"] = "renamed"
    extract_cohort(cases, config, progress=False, partial=log)
    assert calls == ["C01"]
    calls.clear()
    extract_cohort(cases, config, progress=False, partial=log, restart=True)
    assert calls == ["C00", "C01", "C02"]


@pytest.mark.parametrize("where", ["pool", "dask-local"])
def test_resume_with_process_pool_and_dask(cohort, tmp_path, where):
    """A log half-written by a serial run is completed by 2 worker processes or a Dask LocalCluster: same table."""
    from nmkit.radiomics.cohort import extract_cohort, read_cases

    config = _config(cohort)
    cases = read_cases(cohort)
    log = tmp_path / "out.csv.partial.jsonl"
    extract_cohort(cases.iloc[:6].reset_index(drop=True), config, progress=False, partial=log)
    kwargs = {"n_workers": 2} if where == "pool" else {"scheduler": "dask-local"}
    resumed = extract_cohort(cases, config, progress=False, partial=log, **kwargs)
    assert _logged_cases(log) == N_CASES
    fresh = extract_cohort(cases, config, progress=False, partial=tmp_path / "fresh.jsonl")
    pd.testing.assert_frame_equal(resumed.table, fresh.table)


def test_a_second_run_on_the_same_log_fails_at_once(cohort, tmp_path):
    """Two runs appending to one log would interleave lines: the second one stops with a clear error."""
    from nmkit.errors import InputError
    from nmkit.radiomics.cohort import extract_cohort
    from nmkit.radiomics.resume import PartialStore

    log = tmp_path / "out.csv.partial.jsonl"
    first = PartialStore(log, "0" * 16)
    first.open()
    try:
        with pytest.raises(InputError, match="another nmkit radiomics run is writing"):
            extract_cohort(cohort, _config(cohort), progress=False, partial=log)
    finally:
        first.close()
    assert len(extract_cohort(cohort, _config(cohort), progress=False, partial=log).table) == 2 * N_CASES

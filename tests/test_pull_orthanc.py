"""`nmkit pull` against a real Orthanc on loopback (DIMSE C-FIND/C-MOVE/C-GET and the DICOMweb plugin's QIDO/WADO).

The PACS holds a small multi-study cohort: 3 planar thyroid scans from `nmkit phantom thyroid` (3 patients) and the
real FDG-PET of pet_sts patient STS_002 (DICOM PET series + its RTSTRUCT). Checks: the three retrieval methods give
identical catalogs that match the files uploaded (series/instance UIDs, counts, pixel data); a re-run transfers
nothing; a pull that crashes midway (injected exception) or is SIGKILLed, then restarted, completes without
duplicates; an unknown C-MOVE destination and a QIDO URL that 404s give one clear line and leave no catalog.
Skipped when Orthanc or its DICOMweb plugin (Debian packages orthanc, orthanc-dicomweb) is not installed.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest

from nmkit.catalog import pull as pull_module
from nmkit.catalog.pull import PullOptions, PullQuery, pull
from nmkit.cli import main
from orthanc_pacs import DICOMWEB_PLUGIN, ORTHANC, OrthancPacs, free_port

ROOT = Path(__file__).resolve().parents[1]
pytestmark = [
    pytest.mark.skipif(ORTHANC is None, reason="Orthanc (Debian package orthanc) not installed"),
    pytest.mark.skipif(DICOMWEB_PLUGIN is None, reason="Orthanc DICOMweb plugin (Debian package orthanc-dicomweb) "
                                                       "not installed"),
    pytest.mark.slow,
]
MOVE_AET = "NMKIT_PULL"


class Orthanc(OrthancPacs):
    """Orthanc with the DICOMweb plugin on free loopback ports; knows MOVE_AET at ``store_port``."""

    def __init__(self, folder: Path):
        self.store_port = free_port()
        super().__init__(folder, {"nmkit": [MOVE_AET, "127.0.0.1", self.store_port],
                                  "nmkit-default": ["NMKIT", "127.0.0.1", self.store_port]},
                         dicomweb=True, name="nmkit-pull-test")


@pytest.fixture(scope="module")
def cohort(tmp_path_factory, external_data):
    """Orthanc loaded with 3 thyroid phantom studies and STS_002's PET + RTSTRUCT; the uploaded files' UIDs."""
    root = tmp_path_factory.mktemp("pull")
    assert main(["phantom", "thyroid", "--out", str(root / "thyroid"), "--n", "3", "--readers", "1", "--workers", "1",
                 "--no-progress"]) == 0
    pet = external_data / "pet_sts" / "sts_images" / "STS_002" / "PET" / "dicom"
    if not pet.is_dir():
        pytest.skip(f"external data item missing: {pet}")
    files = sorted((root / "thyroid" / "dicom").rglob("*.dcm")) + sorted(pet.rglob("*.dcm"))
    orthanc = Orthanc(root / "orthanc")
    try:
        expected: dict[str, set[str]] = {}
        for path in files:
            orthanc.upload(path)
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            expected.setdefault(ds.SeriesInstanceUID, set()).add(ds.SOPInstanceUID)
        yield {"orthanc": orthanc, "expected": expected, "root": root, "files": files}
    finally:
        orthanc.stop()


def catalog(db: Path) -> dict[str, set[str]]:
    """series UID -> SOP instance UIDs of a catalog, checking n_instances and that no SOP UID is there twice."""
    con = sqlite3.connect(db)
    try:
        rows = con.execute("SELECT series_uid, sop_uid FROM instance").fetchall()
        counts = dict(con.execute("SELECT series_uid, n_instances FROM series").fetchall())
    finally:
        con.close()
    out: dict[str, set[str]] = {}
    for series, sop in rows:
        out.setdefault(series, set()).add(sop)
    assert len(rows) == len({sop for _, sop in rows}), "an instance is in the catalog twice"
    assert counts == {s: len(v) for s, v in out.items()}
    return out


def n_files(folder: Path) -> int:
    return sum(1 for _ in folder.rglob("*.dcm"))


def test_dimse_move_get_and_dicomweb_give_identical_catalogs_and_rerun_transfers_nothing(cohort, tmp_path, capsys):
    orthanc, expected = cohort["orthanc"], cohort["expected"]
    total = sum(len(v) for v in expected.values())
    assert len(expected) == 5 and total >= 40  # 3 NM + PET + RTSTRUCT series
    runs = {"move": [orthanc.dimse, "--method", "move", "--aet", MOVE_AET, "--store-port", str(orthanc.store_port)],
            "get": [orthanc.dimse, "--method", "get"], "wado": [orthanc.web]}
    catalogs = {}
    for name, args in runs.items():
        out, db = tmp_path / name, tmp_path / f"{name}.sqlite"
        assert main(["pull", *args, "--out", str(out), "--db", str(db), "--no-progress"]) == 0
        line = capsys.readouterr().out.strip().splitlines()[-1]
        assert f"{total} instance(s) at the PACS: 0 already here, {total} fetched, 0 failed" in line
        catalogs[name] = catalog(db)
        assert n_files(out) == total
    assert catalogs["move"] == catalogs["get"] == catalogs["wado"] == expected
    # the pixel data came through unchanged (one PET slice, read independently with pydicom)
    source = next(p for p in cohort["files"] if pydicom.dcmread(p, stop_before_pixels=True).Modality == "PT")
    src = pydicom.dcmread(source)
    for name in runs:
        (copy,) = (tmp_path / name).rglob(f"{src.SOPInstanceUID}.dcm")
        np.testing.assert_array_equal(pydicom.dcmread(copy).pixel_array, src.pixel_array)
    # a re-run fetches nothing and rewrites nothing
    mtimes = {p: p.stat().st_mtime_ns for p in (tmp_path / "get").rglob("*.dcm")}
    report, _ = pull(orthanc.dimse, PullQuery(), PullOptions(out=tmp_path / "get", db=tmp_path / "get.sqlite", method="get"))
    assert (report.present, report.fetched, report.failed, report.failures) == (total, 0, 0, [])
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "get").rglob("*.dcm")} == mtimes
    assert catalog(tmp_path / "get.sqlite") == expected


def test_filters_select_series_the_same_way_over_dimse_and_dicomweb(cohort, tmp_path):
    orthanc = cohort["orthanc"]
    for address in (orthanc.dimse, orthanc.web):
        _, plans = pull(address, PullQuery(modality="pt"), PullOptions(out=tmp_path / "x"), dry_run=True)
        assert [(p.patient_id, p.modality, len(p.instances)) for p in plans] == [("STS_002", "PT", 48)]
        _, plans = pull(address, PullQuery(patient="THY1-*", description="*THYROID*"), PullOptions(out=tmp_path / "x"),
                        dry_run=True)
        assert sorted(p.patient_id for p in plans) == ["THY1-00000", "THY1-00001", "THY1-00002"]
        _, plans = pull(address, PullQuery(date="20060101-20061231"), PullOptions(out=tmp_path / "x"), dry_run=True)
        assert {p.modality for p in plans} == {"PT", "RTSTRUCT"}
    assert not (tmp_path / "x").exists()  # a dry run writes nothing
    # QIDO-RS paging (limit/offset, as servers cap answers) finds the same series and instances as one big page
    from nmkit.catalog.pull import DicomWebPacs, plan_dicomweb

    with warnings.catch_warnings():  # STS_002's over-long SH value, reported by `pull` itself elsewhere
        warnings.simplefilter("ignore")
        paged, whole = [plan_dicomweb(DicomWebPacs(orthanc.web, page=n), PullQuery()) for n in (3, 1000)]
    assert [(p.series_uid, p.instances) for p in paged] == [(p.series_uid, p.instances) for p in whole]
    assert sum(len(p.instances) for p in paged) == sum(len(v) for v in cohort["expected"].values())


def test_crash_midway_then_restart_completes_without_duplicates_deidentified(cohort, tmp_path, monkeypatch):
    """An exception injected after 10 stored files stops the pull; the re-run fetches exactly the rest."""
    orthanc, expected = cohort["orthanc"], cohort["expected"]
    total = sum(len(v) for v in expected.values())
    out, db, mapping = tmp_path / "out", tmp_path / "c.sqlite", tmp_path / "secret" / "map.csv"
    opts = PullOptions(out=out, db=db, deid_profile="research", salt="test-salt", map_path=mapping)
    real, calls = pull_module._store_file, []

    def crashing(sink, ds, ts):
        if len(calls) == 10:
            raise KeyboardInterrupt("injected crash")
        calls.append(1)
        return real(sink, ds, ts)

    monkeypatch.setattr(pull_module, "_store_file", crashing)
    with pytest.raises(KeyboardInterrupt):
        pull(orthanc.web, PullQuery(), opts)
    assert n_files(out) == 10 and not list(out.rglob("*.part")) and not db.exists()  # no catalog half-written
    monkeypatch.setattr(pull_module, "_store_file", real)
    report, _ = pull(orthanc.web, PullQuery(), opts)
    assert (report.present, report.fetched, report.failed) == (10, total - 10, 0)
    got = catalog(db)
    assert sum(len(v) for v in got.values()) == total == n_files(out)
    # de-identified on the fly, with the UIDs `nmkit anonymize` would give (same salt -> same mapping)
    from nmkit.io.deid import hashed_uid

    assert got == {hashed_uid(s, "test-salt"): {hashed_uid(i, "test-salt") for i in sops} for s, sops in expected.items()}
    ds = pydicom.dcmread(next(out.rglob("*.dcm")), stop_before_pixels=True)
    assert ds.PatientIdentityRemoved == "YES" and ds.PatientID.startswith("NMK")
    assert "STS_002" in mapping.read_text() and "THY1-00000" in mapping.read_text()
    report, _ = pull(orthanc.web, PullQuery(), opts)
    assert (report.present, report.fetched) == (total, 0)


def test_sigkill_midway_then_restart_completes_without_duplicates(cohort, tmp_path):
    orthanc, expected = cohort["orthanc"], cohort["expected"]
    total = sum(len(v) for v in expected.values())
    out, db = tmp_path / "out", tmp_path / "c.sqlite"
    cmd = [sys.executable, "-m", "nmkit", "pull", orthanc.dimse, "--method", "get", "--out", str(out), "--db", str(db),
           "--no-progress"]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while proc.poll() is None and time.monotonic() < deadline and (not out.is_dir() or n_files(out) < 3):
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    before = n_files(out) if out.is_dir() else 0
    report, _ = pull(orthanc.dimse, PullQuery(), PullOptions(out=out, db=db, method="get"))
    assert report.present == before and report.fetched == total - before and report.failed == 0
    assert catalog(db) == expected and n_files(out) == total and not list(out.rglob("*.part"))


def test_unknown_move_destination_and_qido_404_are_one_line_and_write_nothing(cohort, tmp_path, capsys):
    orthanc = cohort["orthanc"]
    out, db = tmp_path / "out", tmp_path / "c.sqlite"
    code = main(["pull", orthanc.dimse, "--aet", MOVE_AET, "--move-aet", "NOT_KNOWN", "--store-port", str(free_port()),
                 "--out", str(out), "--db", str(db), "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "'NOT_KNOWN'" in err[0] and "modality" in err[0]
    assert not out.exists() and not db.exists()
    code = main(["pull", f"http://127.0.0.1:{orthanc.http_port}/no-such-root", "--out", str(out), "--db", str(db)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "HTTP 404" in err[0] and "no-such-root" in err[0]
    assert not out.exists() and not db.exists()


def test_failed_instances_are_summarised_with_the_reason_and_fetched_by_the_next_run(cohort, tmp_path, monkeypatch, capsys):
    orthanc, expected = cohort["orthanc"], cohort["expected"]
    total = sum(len(v) for v in expected.values())
    pet_series = next(s for s, sops in expected.items() if len(sops) > 40)
    victim = sorted(expected[pet_series])[0]
    real = pull_module._store_file

    def failing(sink, ds, ts):
        if ds.SOPInstanceUID == victim:
            raise OSError(28, "No space left on device")
        return real(sink, ds, ts)

    monkeypatch.setattr(pull_module, "_store_file", failing)
    out, db = tmp_path / "out", tmp_path / "c.sqlite"
    code = main(["pull", orthanc.dimse, "--method", "get", "--out", str(out), "--db", str(db), "--no-progress"])
    printed = capsys.readouterr().out.strip().splitlines()
    assert code == 1
    assert printed[0].startswith(f"FAILED series {pet_series}: 1 of {len(expected[pet_series])} instance(s) missing")
    assert "No space left on device" in printed[0] and printed[-1].endswith(f"{total - 1} fetched, 1 failed -> {out}, catalog {db}")
    assert sum(len(v) for v in catalog(db).values()) == total - 1  # what arrived is indexed
    monkeypatch.setattr(pull_module, "_store_file", real)
    assert main(["pull", orthanc.dimse, "--method", "get", "--out", str(out), "--db", str(db), "--no-progress"]) == 0
    assert f"{total - 1} already here, 1 fetched, 0 failed" in capsys.readouterr().out
    assert catalog(db) == expected

"""Robustness: every file of the DICOM corpus either loads or fails with a named nmkit error (never a crash or hang).

The corpus (../shared/data/dicom_corpus) holds pydicom, pydicom-data, highdicom and dcmqi test files: malformed
headers, every codec, character sets, SEG/SR/RT objects. ``dicom_corpus_survey.csv`` records, per file, whether
pydicom could read and decode it; every file the survey decoded that is an image must load here.
"""

from __future__ import annotations

import csv
import signal
import time
from pathlib import Path

import pytest

from conftest import need
from nmkit.errors import NmkitError
from nmkit.io.dicom_series import read_header
from nmkit.io.reader import is_image_series, read_image

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

PER_FILE_TIMEOUT_S = 20
HEADER_ONLY_MODALITIES = {"SEG", "RTSTRUCT"}


class _Timeout(Exception):
    pass


def _alarm(signum, frame):  # pragma: no cover - only runs on a hang
    raise _Timeout()


def _survey(root: Path) -> dict[str, dict[str, str]]:
    with open(root / "dicom_corpus_survey.csv", newline="") as handle:
        return {row["path"]: row for row in csv.DictReader(handle)}


def test_every_corpus_file_loads_or_fails_with_a_named_error(external_data):
    root = need(external_data, "dicom_corpus")
    survey = _survey(root)
    files = sorted(p for p in root.rglob("*") if p.is_file())
    assert len(files) >= len(survey) > 250

    loaded: dict[str, object] = {}
    refused: dict[str, str] = {}
    wrong: list[str] = []
    headers_read = 0
    previous = signal.signal(signal.SIGALRM, _alarm)
    start = time.monotonic()
    try:
        for path in files:
            rel = path.relative_to(root).as_posix()
            row = survey.get(rel, {})
            signal.alarm(PER_FILE_TIMEOUT_S)
            try:
                if row.get("modality") in HEADER_ONLY_MODALITIES and row.get("pydicom_read") == "ok":
                    header = read_header(path)  # ROIs are read by the ROI readers; here only the header
                    assert str(header.Modality) == row["modality"]
                    headers_read += 1
                image = read_image(path)
                loaded[rel] = image
            except NmkitError as exc:
                refused[rel] = str(exc)
                if path.name not in str(exc):
                    wrong.append(f"{rel}: error does not name the file: {exc}")
            except _Timeout:
                wrong.append(f"{rel}: no answer within {PER_FILE_TIMEOUT_S} s")
            except Exception as exc:  # the point of this test: no other exception type may escape
                wrong.append(f"{rel}: {type(exc).__name__}: {exc}")
            finally:
                signal.alarm(0)
    finally:
        signal.signal(signal.SIGALRM, previous)
    elapsed = time.monotonic() - start

    assert not wrong, "\n".join(wrong)
    assert elapsed < 60, f"corpus walk took {elapsed:.0f} s"
    assert headers_read >= 25  # the SEG variants and the RTSTRUCT

    # every image the survey could decode must load (SEG/RTSTRUCT are not images for read_image)
    decodable = {p for p, r in survey.items() if r["pixel_decode"].startswith("ok") and is_image_series(r["modality"], "")
                 and r["sop_class"] not in ("Segmentation Storage",)}
    missing = sorted(decodable - set(loaded))
    assert not missing, "decodable images that did not load:\n" + "\n".join(f"{m}: {refused.get(m)}" for m in missing)
    assert len(loaded) >= 180

    # non-images are refused with a reason, not loaded as pictures
    for rel in ("pydicom_wheel/pydicom/data/test_files/rtstruct.dcm", "highdicom/data/test_files/seg_image_ct_binary.dcm"):
        assert rel in refused and "not an image" in refused[rel]
    assert "DICOMDIR" in refused["pydicom_wheel/pydicom/data/test_files/dicomdirtests/DICOMDIR"]
    assert any("cannot be decoded" in msg and "transfer syntax" in msg for msg in refused.values())
    # a few loaded images keep their geometry and units
    ct = loaded["pydicom_wheel/pydicom/data/test_files/CT_small.dcm"]
    assert ct.units == "HU" and ct.array.shape == (1, 128, 128) and ct.spacing[0] == pytest.approx(0.661468)
    dose = loaded["pydicom_wheel/pydicom/data/test_files/rtdose.dcm"]
    assert dose.modality == "RTDOSE" and dose.array.shape == (15, 10, 10)

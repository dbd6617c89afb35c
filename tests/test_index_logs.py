"""Quiet, honest logs: pydicom warnings once per file, non-DICOM files counted apart (`nmkit index`, DicomWarnings)."""

from __future__ import annotations

import logging
import re
import sqlite3
import subprocess
import sys
import warnings
from pathlib import Path

import pydicom

from conftest import need
from nmkit.io.dicom_warnings import DicomWarnings

SUBSET = "dicom_corpus/pydicom_wheel/pydicom/data"  # 203 files: DICOM, broken DICOM, README, .txt, .dump, .icc


def _is_dicom_by_magic(path: Path) -> bool:
    with open(path, "rb") as fh:
        head = fh.read(132)
    return head[128:] == b"DICM" or path.suffix == ".dcm"


def test_index_subset_counts_non_dicom_apart_and_warns_once_per_file(external_data: Path, tmp_path: Path):
    folder = need(external_data, SUBSET)
    db = tmp_path / "cat.sqlite"
    done = subprocess.run([sys.executable, "-m", "nmkit.cli", "index", str(folder), "--db", str(db)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    m = re.search(r"(\d+) file\(s\) seen, (\d+) indexed, \d+ unchanged, (\d+) unreadable DICOM .*?, (\d+) not DICOM", done.stdout)
    assert m, done.stdout
    seen, indexed, unreadable, non_dicom = map(int, m.groups())
    files = [p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")]
    assert seen == len(files) and seen == indexed + unreadable + non_dicom
    texts = [p for p in files if p.name in ("README.md", "README", "FileInfo.txt") or p.suffix == ".dump"]
    assert len(texts) >= 4 and non_dicom >= len(texts)
    con = sqlite3.connect(db)
    errors = [Path(r[0]) for r in con.execute("SELECT path FROM errors")]
    assert errors and not any(p in texts for p in errors)  # README & co. are not "unreadable DICOM"
    n_magic_errors = sum(_is_dicom_by_magic(p) for p in errors)
    assert n_magic_errors >= len(errors) // 2  # errors are (mostly) real DICOM files that fail
    # every pydicom warning at most once per file, never the raw UserWarning/log pair
    err = done.stderr.splitlines()
    assert not any("UserWarning" in line or "WARNING pydicom" in line for line in err)
    warned = [line for line in err if "DICOM warning (" in line]
    assert 1 <= len(warned) <= len(files) and len(err) <= len(warned) + 2
    assert "badVR.dcm" in done.stderr and done.stderr.count("badVR.dcm") == 1
    # -v gives every message of every file (still one line each)
    again = subprocess.run([sys.executable, "-m", "nmkit.cli", "-v", "index", str(folder), "--db", str(tmp_path / "v.sqlite")],
                           capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and "badVR.dcm: 1 DICOM warning(s): Invalid value for VR IS: '1A'" in again.stderr
    # re-indexing reads nothing and still counts the non-DICOM files apart
    third = subprocess.run([sys.executable, "-m", "nmkit.cli", "index", str(folder), "--db", str(db)],
                           capture_output=True, text=True, timeout=120)
    assert f"0 indexed, {indexed + unreadable} unchanged, 0 unreadable DICOM (see the errors table), {non_dicom} not DICOM" in third.stdout
    assert "DICOM warning" not in third.stderr


def test_collector_keeps_each_message_once_and_silences_pydicom(external_data: Path, caplog):
    path = need(external_data, "dicom_corpus/pydicom_wheel/pydicom/data/test_files/badVR.dcm")
    collector = DicomWarnings()
    with warnings.catch_warnings(record=True) as outside:
        warnings.simplefilter("always")
        with collector.capture(path):
            ds = pydicom.dcmread(path)
            str(ds)  # values are validated lazily: reading them warns (warning + log record each time)
            str(ds)
    assert outside == []  # nothing escaped
    (msgs,) = collector.by_file.values()
    assert list(collector.by_file) == [str(path)] and len(msgs) == len(set(msgs)) == 2  # IS '1A' and a bad UI, once each
    assert msgs[0].startswith("Invalid value for VR IS: '1A'.") and msgs[1].startswith("Invalid value for VR UI")
    # a second capture for the series does not repeat what its file already said
    with collector.capture("series X", known=[path]):
        str(pydicom.dcmread(path))
        logging.getLogger("pydicom").warning("a new problem")
    assert collector.by_file["series X"] == ["a new problem"]
    lines = collector.lines()
    assert len(lines) == 2 and lines[0].startswith(f"DICOM warning ({path}): Invalid value for VR IS: '1A'.")
    assert "Please see" not in lines[0] and "(+1 other message(s); -v lists them)" in lines[0]
    assert collector.summary() == "2 file(s) with DICOM warnings (3 distinct message(s))"
    # the pydicom logger is restored
    assert logging.getLogger("pydicom").propagate is True
    with caplog.at_level(logging.WARNING, logger="pydicom"):
        logging.getLogger("pydicom").warning("after")
    assert "after" in caplog.text


def test_collector_groups_files_with_the_same_first_message():
    collector = DicomWarnings()
    for name in ("a.dcm", "b.dcm", "c.dcm"):
        with collector.capture(name):
            warnings.warn("The value length (18) exceeds the maximum length of 16 allowed for VR SH.", UserWarning)
            if name == "c.dcm":
                warnings.warn("another", UserWarning)
    (line,) = collector.lines()
    assert line.startswith("DICOM warning (3 files, first a.dcm): The value length (18)") and "+1 other message(s)" in line
    assert len(collector.lines(verbose=True)) == 3

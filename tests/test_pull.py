"""`nmkit pull` without a PACS: address and filter parsing, multipart/related parsing of WADO-RS answers,
retrieve identifiers, resumability bookkeeping, and bad input (unreachable PACS: one line, nothing written).
The Orthanc end-to-end tests are in test_pull_orthanc.py."""

from __future__ import annotations

import io
import socket
from pathlib import Path

import pydicom
import pytest

from nmkit.catalog.pull import (Dimse, PullQuery, SeriesPlan, _retrieve_identifiers, multipart_parts, parse_pacs,
                                present_uids)
from nmkit.cli import main
from nmkit.errors import InputError

ROOT = Path(__file__).resolve().parents[1]


def closed_port() -> int:
    """A loopback port nobody listens on (bound then released)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def test_parse_pacs_addresses():
    assert parse_pacs("ORTHANC@127.0.0.1:4242") == Dimse("ORTHANC", "127.0.0.1", 4242)
    assert parse_pacs("http://pacs:8042/dicom-web/") == "http://pacs:8042/dicom-web"
    for bad in ("ORTHANC", "127.0.0.1:4242", "A@host:0", "A@host:99999", "WAY_TOO_LONG_AE_TITLE@h:1"):
        with pytest.raises(InputError, match="AET@host:port"):
            parse_pacs(bad)


def test_date_ranges_are_validated():
    for good in ("20240101", "20240101-20241231", "20240101-", "-20241231", ""):
        PullQuery(date=good)
    for bad in ("2024", "20240101-2024", "-", "2024-01-01", "2024010120241231"):
        with pytest.raises(InputError, match="--date"):
            PullQuery(date=bad)


def test_multipart_related_parts_round_trip(tmp_path):
    """Two DICOM parts in a WADO-RS style body come back byte-identical and readable."""
    blobs = []
    for k in range(2):
        ds = pydicom.Dataset()
        ds.SOPClassUID, ds.SOPInstanceUID = "1.2.840.10008.5.1.4.1.1.20", f"1.2.3.{k}"
        ds.PatientID = f"P{k}"
        ds.file_meta = pydicom.dataset.FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
        path = tmp_path / f"{k}.dcm"
        ds.save_as(path, enforce_file_format=True)
        blobs.append(path.read_bytes() + b"\r\n--notTheBoundary\r\n")  # payload bytes that look like a delimiter
    boundary = "b0undary-42"
    body = b"".join(b"--" + boundary.encode() + b"\r\nContent-Type: application/dicom\r\n\r\n" + blob + b"\r\n"
                    for blob in blobs) + b"--" + boundary.encode() + b"--\r\n"
    parts = multipart_parts(body, f'multipart/related; type="application/dicom"; boundary="{boundary}"')
    assert parts == blobs
    assert pydicom.dcmread(io.BytesIO(parts[1]), force=True).PatientID == "P1"
    with pytest.raises(InputError, match="not multipart"):
        multipart_parts(body, "application/dicom")


def test_retrieve_identifiers_series_or_missing_instances():
    plan = SeriesPlan("P", "N", "1.2", "1.2.3", "NM", "d", instances={"1.2.3.1": "c", "1.2.3.2": "c", "1.2.3.3": "c"})
    (whole,) = _retrieve_identifiers(plan, list(plan.instances))
    assert whole.QueryRetrieveLevel == "SERIES" and whole.SeriesInstanceUID == "1.2.3" and "SOPInstanceUID" not in whole
    some = _retrieve_identifiers(plan, ["1.2.3.2", "1.2.3.3"])
    assert [(i.QueryRetrieveLevel, i.SOPInstanceUID) for i in some] == [("IMAGE", "1.2.3.2"), ("IMAGE", "1.2.3.3")]


def test_present_uids_ignores_and_removes_partial_files(tmp_path):
    series = tmp_path / "P" / "1.2" / "1.2.3"
    series.mkdir(parents=True)
    (series / "1.2.3.1.dcm").write_bytes(b"x")
    (series / "1.2.3.2.dcm.part").write_bytes(b"half")
    assert present_uids(tmp_path) == {"1.2.3.1"}
    assert not (series / "1.2.3.2.dcm.part").exists()
    assert present_uids(tmp_path / "absent") == set()


@pytest.mark.parametrize("pacs", ["DIMSE", "DICOMweb"])
def test_unreachable_pacs_is_one_line_and_writes_nothing(tmp_path, capsys, pacs):
    port = closed_port()
    address = f"ORTHANC@127.0.0.1:{port}" if pacs == "DIMSE" else f"http://127.0.0.1:{port}/dicom-web"
    code = main(["pull", address, "--out", str(tmp_path / "out"), "--db", str(tmp_path / "c.sqlite"), "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "unreachable" in err[0] and str(port) in err[0]
    assert not (tmp_path / "out").exists() and not (tmp_path / "c.sqlite").exists()


def test_method_must_fit_the_address(tmp_path, capsys):
    assert main(["pull", "http://127.0.0.1:1/dicom-web", "--method", "get", "--out", str(tmp_path / "o")]) == 2
    assert "AET@host:port" in capsys.readouterr().err
    assert main(["pull", "A@127.0.0.1:1", "--method", "wado", "--out", str(tmp_path / "o")]) == 2
    assert "http" in capsys.readouterr().err


def test_anonymize_needs_salt_and_map_outside_out(tmp_path, capsys):
    out = tmp_path / "out"
    args = ["pull", "A@127.0.0.1:1", "--out", str(out), "--anonymize", "research"]
    assert main(args + ["--salt", "", "--map", str(tmp_path / "m.csv")]) == 2
    assert "--salt" in capsys.readouterr().err
    assert main(args + ["--salt", "s3cret", "--map", str(out / "m.csv")]) == 2
    assert "outside" in capsys.readouterr().err
    assert not out.exists()

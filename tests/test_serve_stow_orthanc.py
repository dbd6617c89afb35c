"""Issue 20 acceptance: "STOW-RS delivery to Orthanc produces the same objects as C-STORE delivery".

The server segments real-looking thyroid scans with the shipped model and delivers each result (SEG, SR,
overlay) to two Orthanc PACS on loopback: one by C-STORE, one by STOW-RS through Orthanc's DICOMweb plugin; a third
destination (DICOMweb, nobody listening) is retried and parked while the others are served. The objects fetched
back from both PACS must be the same: the same SOP Instance UIDs, and datasets equal element by element (pixel data
included) to each other and to the files the server made."""

from __future__ import annotations

import io
import json
import urllib.request
from pathlib import Path

import pydicom
import pytest

from nmkit.serve import demo
from nmkit.serve.config import parse_config
from nmkit.serve.registry import Registry
from nmkit.serve.server import Server
from orthanc_pacs import DICOMWEB_PLUGIN, ORTHANC, OrthancPacs, free_port
from test_serve_node import scu_send
from test_serve_server import SC_CLASS, SEG_CLASS, SR_CLASS, wait_for

ROOT = Path(__file__).resolve().parents[1]
SHIPPED_BUNDLE = ROOT / "src" / "nmkit" / "data" / "bundles" / "thyroid-unet2d"
N_STUDIES = 2

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(ORTHANC is None, reason="Orthanc not installed (Debian package orthanc)"),
              pytest.mark.skipif(DICOMWEB_PLUGIN is None, reason="Orthanc's DICOMweb plugin not installed (Debian package orthanc-dicomweb)")]


def fetch_all(pacs: OrthancPacs) -> dict[str, pydicom.Dataset]:
    """Every instance a PACS holds, as stored (Orthanc's /instances/{id}/file), by SOP Instance UID."""
    out = {}
    for oid in pacs.get("/instances"):
        data = urllib.request.urlopen(f"http://127.0.0.1:{pacs.http_port}/instances/{oid}/file", timeout=30).read()
        ds = pydicom.dcmread(io.BytesIO(data))
        out[str(ds.SOPInstanceUID)] = ds
    return out


def test_stow_rs_delivery_gives_the_same_objects_as_c_store(tmp_path):
    reg = Registry(tmp_path / "reg")
    reg.register("thyroid", SHIPPED_BUNDLE, version="1.0.0")
    reg.promote("thyroid", "1.0.0")
    by_dimse = OrthancPacs(tmp_path / "orthanc-dimse", name="nmkit-cstore")
    by_web = None
    try:
        by_web = OrthancPacs(tmp_path / "orthanc-web", dicomweb=True, name="nmkit-stow")
        raw = {"ae_title": "NMKIT", "port": free_port(), "storage": str(tmp_path / "srv"), "registry": str(tmp_path / "reg"),
               "allowed_calling_aets": ["SCU"], "quiet_seconds": 0.3, "poll_seconds": 0.05, "lease_seconds": 30.0,
               "send_retry_base_seconds": 0.2, "send_max_backoff_seconds": 1.0, "send_timeout_seconds": 10.0,
               "send_horizon_hours": 4.0 / 3600,
               "destinations": {"pacs_dimse": {"ae_title": "ORTHANC", "host": "127.0.0.1", "port": by_dimse.dicom_port},
                                "pacs_web": {"kind": "dicomweb", "url": by_web.web, "timeout_seconds": 30},
                                "web_down": {"kind": "dicomweb", "url": f"http://127.0.0.1:{free_port()}/dicom-web"}},
               "instances": [{"name": "thyroid", "ae_title": "NMKIT_THYR", "match": {"modality": "NM"},
                              "outputs": ["seg", "sr", "overlay"], "destinations": ["pacs_dimse", "pacs_web", "web_down"]}]}
        cfg = parse_config(raw, None, tmp_path)
        studies = [demo.thyroid_study(tmp_path / "in", s) for s in range(40, 40 + N_STUDIES)]
        with Server(cfg) as server:
            for st in studies:
                assert scu_send(server.port, [st["path"]], called="NMKIT_THYR") == [0]

            def states(dest: str) -> list[str]:
                return [r["state"] for r in server.store.outbox() if r["destination"] == dest]

            n = 3 * N_STUDIES
            wait_for(lambda: states("pacs_dimse") == ["sent"] * n and states("pacs_web") == ["sent"] * n, 240,
                     "every result at both PACS")
            wait_for(lambda: states("web_down") == ["parked"] * n, 60, "the unreachable destination parked at the horizon")
            outbox = server.store.outbox()
            status = server.status()
            jobs = server.store.jobs()
        made = {r["sop_uid"]: pydicom.dcmread(r["path"]) for r in outbox if r["destination"] == "pacs_web"}
        stored_dimse, stored_web = fetch_all(by_dimse), fetch_all(by_web)
    finally:
        by_dimse.stop()
        if by_web is not None:
            by_web.stop()

    assert [j.attempts for j in jobs] == [1] * N_STUDIES and all(j.state == "done" for j in jobs)
    # the same objects: the same UIDs ...
    assert len(made) == 3 * N_STUDIES
    assert set(stored_web) == set(stored_dimse) == set(made)
    classes = sorted(str(ds.SOPClassUID) for ds in stored_web.values())
    assert classes == sorted([SEG_CLASS, SR_CLASS, SC_CLASS] * N_STUDIES)
    # ... and the same content, element by element (file meta aside: it records who wrote the file)
    for uid, ds in stored_web.items():
        assert ds == stored_dimse[uid], f"{ds.SOPClassUID}: STOW-RS and C-STORE copies differ"
        assert ds == made[uid], f"{ds.SOPClassUID}: the STOW-RS copy differs from the server's result"
        if "PixelData" in ds:
            assert ds.PixelData == stored_dimse[uid].PixelData == made[uid].PixelData
    segs = [ds for ds in stored_web.values() if ds.SOPClassUID == SEG_CLASS]
    assert all(int((ds.pixel_array > 0).sum()) > 0 for ds in segs)  # a gland was segmented and travelled intact
    assert {str(ds.StudyInstanceUID) for ds in segs} == {st["study_uid"] for st in studies}
    # the unreachable DICOMweb destination: retried, parked with the reason, while the others were served
    down = [r for r in outbox if r["destination"] == "web_down"]
    assert all("connection refused" in r["last_error"] and "web_down" in r["last_error"] for r in down)
    assert max(r["attempts"] for r in down) >= 2
    assert status["destinations"]["web_down"]["reachable"] is False and status["destinations"]["web_down"]["parked"] == 3 * N_STUDIES
    assert status["destinations"]["pacs_web"]["sent"] == status["destinations"]["pacs_dimse"]["sent"] == 3 * N_STUDIES
    json.dumps(status)  # /status stays serialisable with DICOMweb destinations

"""Acceptance of issue #20's feedback loop through nmkit's own server: a study is segmented by the server, the AI SEG
that reached the PACS is edited (a known block added, part of the gland removed) and sent back by C-STORE; it is
linked, scored in the background, reported with the right Dice and added/removed area, and exported as a dataset
that read_dataset accepts. A correction for an unknown study: stored as unlinked, nothing half-written.
The slow test closes the loop: `nmkit train` on the export, then `nmkit model register/promote` through the gate."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pydicom
import pytest
from pydicom.uid import generate_uid

from nmkit.cli import main
from nmkit.dataset import read_dataset
from nmkit.serve import demo
from nmkit.serve.config import parse_config
from nmkit.serve.registry import Registry
from nmkit.serve.server import Server
from test_feedback import edit_seg, expected
from test_serve_node import scu_send
from test_serve_server import SEG_CLASS, CaptureSCP, server_config, wait_for


@pytest.fixture(scope="module")
def bundle():
    """The shipped thyroid model (no training in the test): its SEGs are the 'AI output'."""
    from nmkit.segment.bundle import shipped_bundle

    path = shipped_bundle("thyroid-unet2d")
    if path is None:
        pytest.skip("the shipped thyroid-unet2d bundle is not installed")
    return path


def _version(bundle) -> str:
    return json.loads((bundle / "bundle.json").read_text())["version"]


@pytest.fixture
def pacs():
    p = CaptureSCP()
    yield p
    p.stop()


def _segment(tmp_path, bundle, pacs, studies: list[dict]) -> tuple[Server, list[pydicom.Dataset]]:
    """Start the server, send the studies to the thyroid AE and return it with the AI SEGs the PACS received."""
    reg = Registry(tmp_path / "reg")
    reg.register("thyroid", bundle)
    reg.promote("thyroid", _version(bundle))
    cfg = parse_config(server_config(tmp_path, pacs.port, tmp_path / "reg"), None, tmp_path)
    server = Server(cfg).start()
    for st in studies:
        assert scu_send(server.port, [st["path"]], called="NMKIT_THYR") == [0]
    wait_for(lambda: len(pacs.by_class(SEG_CLASS)) >= len(studies), 90, "the AI SEGs at the PACS")
    segs = pacs.by_class(SEG_CLASS)
    return server, [next(d for d in segs if d.ReferencedSeriesSequence[0].SeriesInstanceUID == st["series_uid"]) for st in studies]


def _save(ds: pydicom.Dataset, path) -> str:
    ds.save_as(str(path), enforce_file_format=True)
    return str(path)


def test_corrected_seg_sent_back_is_scored_reported_and_exported(tmp_path, bundle, pacs, capsys):
    study = demo.thyroid_study(tmp_path / "in", 11)
    server, (ai_seg,) = _segment(tmp_path, bundle, pacs, [study])
    try:
        version = _version(bundle)
        assert f"AI SEG thyroid v{version}" in ai_seg.SeriesDescription
        fix = tmp_path / "corrected.dcm"
        ai, new = edit_seg(_save(ai_seg, tmp_path / "ai.dcm"), fix, add=(slice(1, 5), slice(1, 8)), remove_rows_below=34)
        want = expected(ai, new, float(pydicom.dcmread(str(study["path"])).PixelSpacing[0]))
        assert ai.sum() > 20 and want["added_mm2"] > 0 and want["removed_mm2"] > 0
        assert scu_send(server.port, [fix], called="NMKIT") == [0]
        store = server.store
        wait_for(lambda: store.feedback_rows("scored"), 30, "the correction to be scored")
        # a correction for a study the server never saw: kept as unlinked (status success: it is stored), nothing else
        stranger = tmp_path / "stranger.dcm"
        edit_seg(_save(ai_seg, tmp_path / "ai2.dcm"), stranger, add=(slice(1, 5), slice(1, 8)), study_uid=generate_uid(), refs="unknown")
        assert scu_send(server.port, [stranger], called="NMKIT") == [0]
        wait_for(lambda: store.unlinked_rows(), 10, "the unlinked correction")
        assert server.node.counts["feedback"] == 1 and server.node.counts["feedback_unlinked"] == 1
    finally:
        server.stop()
    (row,) = store.feedback_rows()
    assert row["reader"] == "Expert^Anna" and row["via"] == "c-store" and row["model_version"] == version
    assert (unl := store.unlinked_rows()[0])["via"] == "c-store" and "unknown study" in unl["reason"]
    assert len(store.query("SELECT * FROM feedback_scores")) == 1  # the stranger left no score, no case
    # the report, with the numbers computed here with numpy
    storage = str(tmp_path / "srv")
    assert main(["feedback", "report", "--server-dir", storage, "--out", str(tmp_path / "report.html")]) == 0
    seg = pd.read_csv(tmp_path / "report.csv")
    assert seg.loc[0, "dice"] == pytest.approx(want["dice"], rel=1e-9) and seg.loc[0, "model_version"] == version
    assert seg.loc[0, "added_mm2"] == pytest.approx(want["added_mm2"]) and seg.loc[0, "removed_mm2"] == pytest.approx(want["removed_mm2"])
    assert "Unlinked corrections" in (tmp_path / "report.html").read_text()
    # the export: the corrected case, with the expert as reader and the AI version in its provenance
    assert main(["feedback", "export", "--server-dir", storage, "--out", str(tmp_path / "ds" / "dataset.csv")]) == 0
    table = read_dataset(tmp_path / "ds" / "dataset.csv", require=("image", "split"), need_masks=True)
    assert list(table["reader"]) == ["Expert^Anna"] and table.loc[0, "series_uid"] == study["series_uid"]
    assert json.loads((tmp_path / "ds" / "dataset.provenance.json").read_text())["ai_models"] == [f"thyroid v{version}"]


@pytest.mark.slow
def test_the_loop_closes_train_on_corrections_then_register_and_promote(tmp_path, bundle, pacs):
    """Corrections of 4 studies -> export -> nmkit train -> model register -> promote through the regression gate."""
    import yaml

    studies = [demo.thyroid_study(tmp_path / "in", s) for s in range(21, 25)]
    server, segs = _segment(tmp_path, bundle, pacs, studies)
    try:
        fixes = []
        for k, (st, ai_seg) in enumerate(zip(studies, segs)):
            fix = tmp_path / f"fix{k}.dcm"  # the expert draws the true gland (from the phantom) over the AI's output
            ds = ai_seg
            from pydicom.pixels import pack_bits

            ds.PixelData = pack_bits(st["gland"].astype(np.uint8).ravel())
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
            ds.SeriesInstanceUID, ds.ContentCreatorName, ds.Manufacturer = generate_uid(), "Expert^Ben", "ReviewStation"
            fixes.append(_save(ds, fix))
        assert scu_send(server.port, [tmp_path / f"fix{k}.dcm" for k in range(4)], called="NMKIT") == [0] * 4
        wait_for(lambda: len(server.store.feedback_rows("scored")) == 4, 60, "four scored corrections")
    finally:
        server.stop()
    out = tmp_path / "ds" / "dataset.csv"
    assert main(["feedback", "export", "--server-dir", str(tmp_path / "srv"), "--out", str(out), "--val-fraction", "0.25"]) == 0
    assert set(read_dataset(out)["split"]) == {"train", "val"}
    assert main(["train", str(out), "--out", str(tmp_path / "v2"), "--labels", "1=thyroid", "--epochs", "2", "--size", "32", "32",
                 "--version", "99.0.0", "--name", "thyroid", "--device", "cpu"]) == 0
    cfg = server_config(tmp_path, pacs.port, tmp_path / "reg")
    cfg["instances"][0]["validation"] = str(demo.validation_manifest(tmp_path / "val", range(7000, 7003)))
    (tmp_path / "server.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["model", "--config", str(tmp_path / "server.yaml"), "register", "thyroid", str(tmp_path / "v2")]) == 0
    code = main(["model", "--config", str(tmp_path / "server.yaml"), "promote", "thyroid", "99.0.0"])
    history = [h["action"] for h in Registry(tmp_path / "reg").history("thyroid")]
    assert (code == 0 and history[-1] == "promote") or (code == 2 and history[-1] == "refused")  # the gate decided either way
    shutil.rmtree(tmp_path / "v2", ignore_errors=True)

"""Expert feedback: corrected SEG/RTSTRUCT objects sent back (C-STORE) or imported, linked to the AI result they
correct, stored as labelled cases of their reader and scored against the AI output per model version.

Linking (first rule that matches): the correction references (anywhere in its header) the SOP Instance UID of an AI
SEG this server produced; else the Series Instance UID of such a SEG; else the source series a job segmented (the
latest finished job of that series). A correction whose study differs from the linked source study, or that matches
nothing, is *unlinked*: kept under ``<storage>/feedback/unlinked/`` and in the ``feedback_unlinked`` table with the
reason, never scored. A SEG/RTSTRUCT counts as a correction when it is not an nmkit result itself (ContentCreatorName
``nmkit^...``).

The reader (the correction's author) is its ContentCreatorName, else OperatorsName, else the RTSTRUCT's ROI
Interpreter, else the configured ``feedback_reader``, else ``unknown``.

Scoring (per AI segment, on the source image grid; the correction's structures are matched by label, then by
number; an AI segment absent from the correction counts as deleted): Dice, HD95 (mm, surfel definition of
:mod:`nmkit.metrics.surface`), the AI and corrected sizes and the added (corrected, not AI) and removed (AI, not
corrected) parts, in ml for volumes and mm2 for planar images. The corrected label map (values = AI segment
numbers) is written next to the correction for ``nmkit feedback export``.

Files: ``<storage>/feedback/<id>/correction-<digest>.dcm``, ``corrected_labels.nii.gz`` (+ ``.labels.json``) and
``image/`` (hard links to the source image's files, so the labelled case outlives the retention of job inputs).
The file is written durably before its row; a failed row removes the file, so nothing is half-written.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from .db import Store, write_durably
from .logs import event, uid_hash

log = logging.getLogger(__name__)

CORRECTION_MODALITIES = {"SEG": "seg", "RTSTRUCT": "rtstruct"}
SEG_CLASSES = ("1.2.840.10008.5.1.4.1.1.66.4", "1.2.840.10008.5.1.4.1.1.66.7")
RTSTRUCT_CLASS = "1.2.840.10008.5.1.4.1.1.481.3"


# ----- recognising and linking ---------------------------------------------------------------------------------
def correction_kind(ds: Any) -> str | None:
    """``seg``/``rtstruct`` when the object may be an expert correction (a SEG/RTSTRUCT that nmkit did not make)."""
    sop_class = str(getattr(ds, "SOPClassUID", "") or "")
    modality = str(getattr(ds, "Modality", "") or "").upper()
    kind = "seg" if sop_class in SEG_CLASSES else "rtstruct" if sop_class == RTSTRUCT_CLASS else CORRECTION_MODALITIES.get(modality)
    if kind is None:
        return None
    if str(getattr(ds, "ContentCreatorName", "") or "").startswith("nmkit^"):
        return None  # an AI result of an nmkit server sent back, not a correction
    return kind


def referenced_uids(ds: Any) -> tuple[set[str], set[str]]:
    """(series UIDs, SOP instance UIDs) the object references anywhere in nested sequences (ReferencedSeriesSequence,
    SourceImageSequence, RT referenced series, predecessor documents ...); its own UIDs are not included."""
    series: set[str] = set()
    sops: set[str] = set()

    def walk(item: Any, depth: int) -> None:
        for elem in item:
            if elem.VR != "SQ":
                continue
            for sub in elem.value:
                if "SeriesInstanceUID" in sub:
                    series.add(str(sub.SeriesInstanceUID))
                if "ReferencedSOPInstanceUID" in sub:
                    sops.add(str(sub.ReferencedSOPInstanceUID))
                if depth < 8:
                    walk(sub, depth + 1)

    walk(ds, 0)
    return series, sops


def reader_of(ds: Any, default: str | None = None) -> str:
    """The correction's author: ContentCreatorName, OperatorsName, RTSTRUCT ROI Interpreter, ``default``, ``unknown``."""
    for attr in ("ContentCreatorName", "OperatorsName"):
        value = getattr(ds, attr, None)
        if isinstance(value, (list, tuple)) or (value is not None and type(value).__name__ == "MultiValue"):
            value = value[0] if len(value) else ""
        text = str(value or "").strip()
        if text:
            return text
    for obs in getattr(ds, "RTROIObservationsSequence", None) or []:
        text = str(getattr(obs, "ROIInterpreter", "") or "").strip()
        if text:
            return text
    return default or "unknown"


def corrected_at(ds: Any, fallback: float) -> float:
    """When the correction was made (ContentDate/Time, else StructureSetDate/Time, else ``fallback``), UTC seconds."""
    for date_attr, time_attr in (("ContentDate", "ContentTime"), ("StructureSetDate", "StructureSetTime"), ("SeriesDate", "SeriesTime")):
        date = str(getattr(ds, date_attr, "") or "").strip()
        if len(date) >= 8:
            clock = (str(getattr(ds, time_attr, "") or "").strip().split(".")[0] + "000000")[:6]
            try:
                when = dt.datetime.strptime(date[:8] + clock, "%Y%m%d%H%M%S")
            except ValueError:
                continue
            return when.replace(tzinfo=dt.timezone.utc).timestamp()
    return fallback


@dataclass
class AiResult:
    """One AI SEG this server produced (an output of a finished job)."""

    job_id: str
    instance: str
    model: str
    version: str
    output: str  # seg, or seg-K for the K-th image of a multi-image planar series
    sop_uid: str
    path: str
    series_uid: str  # the source series the job segmented
    finished: float

    @property
    def seg_series_uid(self) -> str:
        from .outputs import output_uid

        unit = self.job_id if self.output == "seg" else f"{self.job_id}-img{self.output.split('-')[1]}"
        return output_uid(unit, self.version, "seg", "series")


def ai_results(store: Store) -> list[AiResult]:
    """Every AI SEG of a finished job, newest job first."""
    import json

    out = []
    for r in store.query("SELECT id, instance, series_uid, model_version, finished, result FROM jobs WHERE state='done' AND result IS NOT NULL "
                         "ORDER BY finished DESC, id DESC"):
        result = json.loads(r["result"])
        for name, o in sorted((result.get("outputs") or {}).items()):
            if name == "seg" or name.startswith("seg-"):
                out.append(AiResult(job_id=r["id"], instance=r["instance"], model=str(result.get("model") or r["instance"]),
                                    version=str(result.get("version") or r["model_version"]), output=name, sop_uid=str(o["sop_uid"]),
                                    path=str(o["path"]), series_uid=r["series_uid"], finished=float(r["finished"] or 0)))
    return out


def structure_labels(ds: Any) -> list[str]:
    """Structure names of a SEG (Segment Labels) or RTSTRUCT (ROI Names), from the header."""
    items = getattr(ds, "SegmentSequence", None) or []
    names = [str(getattr(i, "SegmentLabel", "") or "") for i in items]
    names += [str(getattr(i, "ROIName", "") or "") for i in getattr(ds, "StructureSetROISequence", None) or []]
    return [n for n in names if n]


def _ai_labels(result: AiResult) -> list[str]:
    import pydicom

    try:
        return structure_labels(pydicom.dcmread(result.path, stop_before_pixels=True))
    except Exception:  # noqa: BLE001 - a purged result does not narrow the choice
        return []


def _ai_sources(result: AiResult) -> set[str]:
    """SOP Instance UIDs of the source images an AI SEG references (its header)."""
    import pydicom

    try:
        return referenced_uids(pydicom.dcmread(result.path, stop_before_pixels=True))[1]
    except Exception:  # noqa: BLE001 - a purged/unreadable result simply does not narrow the choice
        return set()


def link(store: Store, ds: Any) -> tuple[AiResult | None, str]:
    """The AI result a correction corrects and how it was found (``ai_sop``, ``ai_series``, ``source_series``), or
    ``(None, reason)`` for an unlinked one."""
    series, sops = referenced_uids(ds)
    results = ai_results(store)
    hit = next((r for r in results if r.sop_uid in sops), None)
    how = "ai_sop"
    if hit is None:
        hit, how = next((r for r in results if r.seg_series_uid in series), None), "ai_series"
    if hit is None:
        candidates = [r for r in results if r.series_uid in series]
        how = "source_series"
        if candidates:
            newest: dict[str, str] = {}  # instance -> its newest job of this series (results are newest first)
            for r in candidates:
                newest.setdefault(r.instance, r.job_id)
            latest = [r for r in candidates if newest[r.instance] == r.job_id]
            if len(newest) > 1:  # several instances segmented the series: the one whose structure names the correction has
                names = {n.casefold() for n in structure_labels(ds)}
                latest = [r for r in latest if names & {n.casefold() for n in _ai_labels(r)}] or latest
                first = next(r.job_id for r in latest)  # still several: the newest job
                latest = [r for r in latest if r.job_id == first]
            if len(latest) > 1:  # a multi-image planar series: the image whose source instance the correction references
                latest = [r for r in latest if _ai_sources(r) & sops] or latest
            if len(latest) > 1:
                return None, f"references a multi-image series with {len(latest)} AI results and none of its images; cannot tell which it corrects"
            hit = latest[0]
    study = str(getattr(ds, "StudyInstanceUID", "") or "")
    if hit is None:
        known = store.query("SELECT 1 FROM received WHERE study_uid=? LIMIT 1", (study,)) if study else []
        what = "a study this server received but" if known else "an unknown study:"
        return None, (f"correction for {what} none of its {len(series)} referenced series and {len(sops)} referenced instances is an "
                      "AI result of this server or a series it segmented")
    source_study = store.query("SELECT study_uid FROM received WHERE series_uid=? AND instance=? LIMIT 1", (hit.series_uid, hit.instance))
    if study and source_study and source_study[0]["study_uid"] and source_study[0]["study_uid"] != study:
        return None, f"references the AI result of job {hit.job_id} but lies in another study (StudyInstanceUID differs)"
    return hit, how


# ----- receiving -----------------------------------------------------------------------------------------------
def feedback_id(sop_uid: str) -> str:
    return "fb-" + hashlib.sha256(sop_uid.encode()).hexdigest()[:16]


def accept(store: Store, storage: Path, ds: Any, data: bytes | list, *, digest: str, via: str, calling_ae: str = "",
           default_reader: str | None = None, reader: str | None = None, keep_unlinked: bool = True) -> dict[str, Any]:
    """Store one correction (header ``ds``, file content ``data``): linked -> a pending feedback row and its file;
    unlinked -> the quarantine folder and an unlinked row (nothing at all when not ``keep_unlinked``).
    Returns ``{"linked", "id"|"reason", "outcome", "path"}``."""
    import time

    sop_uid = str(ds.SOPInstanceUID)
    kind = correction_kind(ds) or "seg"
    hit, how = link(store, ds)
    now = time.time()
    if hit is None and not keep_unlinked:
        event("feedback_unlinked", logging.WARNING, sop=uid_hash(sop_uid), via=via, reason=how, kept=False)
        return {"linked": False, "reason": how, "path": None, "outcome": "refused"}
    if hit is None:
        path = storage / "feedback" / "unlinked" / f"{hashlib.sha256(sop_uid.encode()).hexdigest()[:24]}-{digest[:12]}.dcm"
        if not path.exists():
            write_durably(data, path)
        try:
            store.record_unlinked(sop_uid=sop_uid, path=str(path), kind=kind, study_uid=str(getattr(ds, "StudyInstanceUID", "") or ""),
                                  reason=how, via=via, calling_ae=calling_ae, when=now)
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        # the server's log warns; `nmkit feedback import` prints the reason itself (one line, no log noise)
        event("feedback_unlinked", logging.WARNING if via == "c-store" else logging.INFO, sop=uid_hash(sop_uid), via=via, reason=how)
        return {"linked": False, "reason": how, "path": str(path), "outcome": "unlinked"}
    fid = feedback_id(sop_uid)
    path = storage / "feedback" / fid / f"correction-{digest[:12]}.dcm"
    existed = path.exists()
    if not existed:
        write_durably(data, path)
    row = {"id": fid, "sop_uid": sop_uid, "path": str(path), "kind": kind, "reader": reader or reader_of(ds, default_reader),
           "job_id": hit.job_id, "instance": hit.instance, "model": hit.model, "model_version": hit.version, "ai_output": hit.output,
           "ai_sop_uid": hit.sop_uid, "ai_path": hit.path, "source_series_uid": hit.series_uid,
           "study_uid": str(getattr(ds, "StudyInstanceUID", "") or ""), "linked_by": how, "via": via, "calling_ae": calling_ae,
           "received_at": now, "corrected_at": corrected_at(ds, now)}
    quarantined = [r["path"] for r in store.query("SELECT path FROM feedback_unlinked WHERE sop_uid=?", (sop_uid,))]
    try:
        outcome = store.record_feedback(row)
    except BaseException:
        if not existed:
            path.unlink(missing_ok=True)
        raise
    for q in quarantined:  # linked now (its AI result finished after it arrived): the quarantined copy goes
        if q != str(path):
            Path(q).unlink(missing_ok=True)
    event("feedback_received", job=hit.job_id, feedback=fid, model=hit.model, version=hit.version, linked_by=how, via=via, outcome=outcome)
    return {"linked": True, "id": fid, "outcome": outcome, "path": str(path), "job": hit.job_id}


def import_path(store: Store, storage: Path, target: str | Path, reader: str | None = None,
                default_reader: str | None = None) -> list[dict[str, Any]]:
    """``nmkit feedback import``: every SEG/RTSTRUCT file under ``target`` (a file or a folder) as a correction."""
    import pydicom

    target = Path(target)
    files = [target] if target.is_file() else sorted(p for p in target.rglob("*") if p.is_file())
    out = []
    for f in files:
        try:
            ds = pydicom.dcmread(str(f), stop_before_pixels=True)
        except Exception:  # noqa: BLE001 - not DICOM: skipped (a folder may hold anything)
            if target.is_file():
                raise InputError(f, "not a DICOM file (a corrected SEG or RTSTRUCT is expected)") from None
            continue
        if correction_kind(ds) is None or "SOPInstanceUID" not in ds:
            if target.is_file():
                raise InputError(f, f"not a correction: a SEG or RTSTRUCT not made by nmkit is expected (Modality "
                                    f"{getattr(ds, 'Modality', '?')}, ContentCreatorName {str(getattr(ds, 'ContentCreatorName', '') or '-')})")
            continue
        data = f.read_bytes()
        res = accept(store, storage, ds, data, digest=hashlib.sha256(data).hexdigest(), via="import", reader=reader,
                     default_reader=default_reader)
        out.append(dict(res, file=str(f)))
    return out


def relink_unlinked(store: Store, storage: Path) -> int:
    """Try the quarantined corrections again (one may arrive before the AI result it corrects is finished); returns
    how many are linked now. Each keeps the way it came (``via``) and its calling AE."""
    import pydicom

    linked = 0
    for r in store.unlinked_rows():
        f = Path(r["path"])
        if not f.is_file():
            continue
        try:
            ds = pydicom.dcmread(str(f), stop_before_pixels=True)
            if link(store, ds)[0] is None:
                continue
            data = f.read_bytes()
            res = accept(store, storage, ds, data, digest=hashlib.sha256(data).hexdigest(), via=r["via"] or "c-store",
                         calling_ae=r["calling_ae"] or "")
        except Exception as exc:  # noqa: BLE001 - an unreadable quarantined file stays where it is
            log.debug("cannot relink %s: %s", f, exc)
            continue
        linked += bool(res["linked"])
    return linked


# ----- scoring -------------------------------------------------------------------------------------------------
def _source_files(store: Store, row: dict[str, Any]) -> list[str]:
    """The received files of the image the AI result was computed on (one image of a multi-image planar series)."""
    from .worker import planar_units

    files = store.series_files(row["instance"], row["source_series_uid"])
    missing = [f for f in files if not Path(f).is_file()]
    if not files or missing:
        raise InputError(None, "the source series' files are no longer stored (retention purged them); cannot score")
    if row["ai_output"] != "seg":
        files = planar_units(files)[int(str(row["ai_output"]).split("-")[1]) - 1]
    return files


def keep_source(files: list[str], folder: Path) -> str:
    """The case's own copy of its source image under ``folder`` (hard links where the file system allows, else
    copies), so that the labelled case outlives the server's retention of job inputs; returns the file (one) or folder."""
    import os
    import shutil

    folder.mkdir(parents=True, exist_ok=True)
    kept = []
    for i, f in enumerate(files):
        dst = folder / f"{i:05d}.dcm"
        if not dst.exists():
            try:
                os.link(f, dst)
            except OSError:
                shutil.copy2(f, dst)
        kept.append(dst)
    return str(kept[0] if len(kept) == 1 else folder)


def structures(path: str | Path, kind: str, image: Any, datasets: list[Any]) -> dict[int, tuple[str, np.ndarray]]:
    """``{number: (name, boolean array on the image grid)}`` of a SEG (planar: by source instance) or RTSTRUCT."""
    if kind == "seg" and image.ndim_spatial == 2:
        import highdicom as hd
        import pydicom

        seg = hd.seg.Segmentation.from_dataset(pydicom.dcmread(str(path)), copy=False)
        numbers = [int(n) for n in seg.segment_numbers if int(n) != 0]
        sop = str(datasets[0].SOPInstanceUID)
        px = np.asarray(seg.get_pixels_by_source_instance([sop], segment_numbers=numbers, combine_segments=False,
                                                          ignore_spatial_locations=True, assert_missing_frames_are_empty=True,
                                                          skip_overlap_checks=True))
        if px.shape[1:3] != tuple(image.spatial_shape):
            raise InputError(path, f"SEG frames are {px.shape[1]}x{px.shape[2]}, the image {image.spatial_shape[0]}x{image.spatial_shape[1]}")
        return {n: (str(seg.get_segment_description(n).segment_label or f"segment_{n}"), px[0, :, :, i] > 0) for i, n in enumerate(numbers)}
    from ..io.roi import load_rois

    mask = load_rois(path, reference=image)
    return {int(n): (str(name), np.asarray(mask.binary(n), dtype=bool)) for n, name in sorted(mask.labels.items())}


def match_segments(ai: dict[int, tuple[str, Any]], corrected: dict[int, tuple[str, Any]]) -> dict[int, int | None]:
    """AI segment number -> the correction's structure number: same label (case-insensitive), else same number."""
    out: dict[int, int | None] = {}
    used: set[int] = set()
    for n, (name, _) in sorted(ai.items()):
        same = [m for m, (cname, _) in sorted(corrected.items()) if cname.strip().casefold() == name.strip().casefold() and m not in used]
        choice = (n if n in same else same[0]) if same else None
        if choice is None and n in corrected and n not in used and all(corrected[n][0].casefold() != a[0].casefold() for a in ai.values()):
            choice = n
        out[n] = choice
        if choice is not None:
            used.add(choice)
    return out


def compare(ai: np.ndarray, corrected: np.ndarray, spacing: tuple[float, ...]) -> dict[str, Any]:
    """Dice, HD95 (mm), sizes and added/removed parts of one structure (AI vs correction) on one grid."""
    from ..metrics import dice, surface_metrics

    a, b = np.asarray(ai, bool), np.asarray(corrected, bool)
    planar = a.ndim == 2
    unit = float(np.prod(spacing[: a.ndim]))
    if not a.any() and not b.any():
        d, hd95 = 1.0, 0.0
    else:
        d = float(dice(a, b))
        hd95 = float(surface_metrics(a, b, tuple(spacing[: a.ndim]), tolerance_mm=None)["hd95"])
    n = {"ai_voxels": int(a.sum()), "corrected_voxels": int(b.sum()), "added_voxels": int((b & ~a).sum()), "removed_voxels": int((a & ~b).sum())}
    row: dict[str, Any] = {"geometry": "planar" if planar else "volume", "dice": d, "hd95_mm": hd95, **n, "voxel_mm3": None if planar else unit}
    for key in ("ai", "corrected", "added", "removed"):
        row[f"{key}_ml"] = None if planar else n[f"{key}_voxels"] * unit / 1000.0
        row[f"{key}_mm2"] = n[f"{key}_voxels"] * unit if planar else None
    return row


def score(store: Store, row: dict[str, Any]) -> list[dict[str, Any]]:
    """Score one linked correction against its AI result; writes the corrected label map and stores the scores."""
    import json

    import SimpleITK as sitk

    from ..io.image import Mask

    from .worker import read_series

    files = _source_files(store, row)
    image, datasets = read_series(files)
    ai = structures(row["ai_path"], "seg", image, datasets)
    corrected = structures(row["path"], row["kind"], image, datasets)
    pairs = match_segments(ai, corrected)
    rows = []
    labels = np.zeros(image.spatial_shape, np.uint8 if max(ai, default=0) < 256 else np.uint16)
    spacing = tuple(float(s) for s in image.spacing)
    for n, m in sorted(pairs.items()):
        name, a = ai[n]
        b = corrected[m][1] if m is not None else np.zeros_like(a)
        rows.append({"segment_number": n, "structure": name, "corrected_segment": m, **compare(a, b, spacing)})
        labels[b] = n
    extra = sorted(set(corrected) - {m for m in pairs.values() if m is not None})
    if extra:
        log.info("feedback %s: structure(s) %s of the correction have no AI counterpart; not scored", row["id"], extra)
    mask = Mask.like(image, labels, labels={n: ai[n][0] for n in sorted(ai)})
    out = Path(row["path"]).parent / "corrected_labels.nii.gz"
    tmp = out.with_name(".corrected_labels.tmp.nii.gz")
    sitk.WriteImage(mask.to_sitk(), str(tmp))
    tmp.replace(out)
    out.with_name("corrected_labels.labels.json").write_text(json.dumps({str(n): ai[n][0] for n in sorted(ai)}, indent=1))
    store.save_scores(row["id"], rows, str(out), keep_source(files, out.parent / "image"))
    return rows


def score_pending(store: Store) -> dict[str, int]:
    """Score every pending correction (the node's scorer thread, and the CLI before a report/export); a correction
    that cannot be scored is ``failed`` with its reason, never retried in a loop."""
    counts = {"scored": 0, "failed": 0}
    for row in store.feedback_rows("pending"):
        try:
            score(store, row)
            counts["scored"] += 1
            event("feedback_scored", feedback=row["id"], job=row["job_id"])
        except Exception as exc:  # noqa: BLE001 - one bad correction never stops the others
            reason = exc.problem if isinstance(exc, InputError) else f"{type(exc).__name__}: {exc}"
            store.feedback_failed(row["id"], reason)
            counts["failed"] += 1
            event("feedback_failed", logging.WARNING, feedback=row["id"], job=row["job_id"], reason=str(reason)[:300])
    return counts


class Scorer:
    """A background thread of the DICOM node that scores received corrections (outside the C-STORE handler)."""

    def __init__(self, store: Store, storage: Path, relink_seconds: float = 60.0):
        self.store = store
        self.storage = storage
        self.relink_seconds = relink_seconds  # how often quarantined corrections are tried again
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="nmkit-feedback", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=30)

    def _loop(self) -> None:
        import time

        last_relink = 0.0
        while not self._stop.is_set():
            self._wake.wait(5.0)
            self._wake.clear()
            if self._stop.is_set():
                break
            try:
                if time.time() - last_relink > self.relink_seconds:
                    last_relink = time.time()
                    relink_unlinked(self.store, self.storage)
                score_pending(self.store)
            except Exception as exc:  # noqa: BLE001 - a busy database must not end scoring
                event("feedback_error", logging.ERROR, error=f"{type(exc).__name__}: {exc}"[:300])

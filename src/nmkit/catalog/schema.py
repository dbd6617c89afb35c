"""SQLite schema of the DICOM catalog (patient / study / series / instance, ROI links, errors).

Why SQLite: one portable file that any tool (Python, R, the sqlite3 shell) can query, with indexes for
cohort questions such as "PT series with an RTSTRUCT referencing them". Energy windows get their own table
so that questions like "NM series with a window around 208 keV" are plain SQL.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

SCHEMA_VERSION = 1

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT);
CREATE TABLE IF NOT EXISTS patient (
    patient_id TEXT PRIMARY KEY, patient_name TEXT, sex TEXT, birth_date TEXT);
CREATE TABLE IF NOT EXISTS study (
    study_uid TEXT PRIMARY KEY, patient_id TEXT, study_date TEXT, study_time TEXT, description TEXT,
    accession TEXT, study_id TEXT);
CREATE TABLE IF NOT EXISTS series (
    series_uid TEXT PRIMARY KEY, study_uid TEXT, patient_id TEXT, modality TEXT, description TEXT,
    series_number INTEGER, series_date TEXT, series_time TEXT, body_part TEXT, manufacturer TEXT, model TEXT,
    protocol TEXT, image_type TEXT, units TEXT, reconstruction_method TEXT, convolution_kernel TEXT,
    frame_of_reference_uid TEXT, sop_class_uid TEXT,
    radiopharmaceutical TEXT, radiopharmaceutical_code TEXT, radionuclide TEXT, injected_dose_bq REAL,
    half_life_s REAL, injection_time TEXT, collimator TEXT, n_energy_windows INTEGER,
    roi_creator TEXT, n_instances INTEGER DEFAULT 0, n_frames INTEGER DEFAULT 0);
CREATE TABLE IF NOT EXISTS instance (
    sop_uid TEXT, series_uid TEXT, path TEXT PRIMARY KEY, sop_class_uid TEXT, instance_number INTEGER,
    number_of_frames INTEGER, rows INTEGER, columns INTEGER);
CREATE TABLE IF NOT EXISTS energy_window (
    series_uid TEXT, window_index INTEGER, name TEXT, lower_kev REAL, upper_kev REAL,
    PRIMARY KEY (series_uid, window_index));
CREATE TABLE IF NOT EXISTS reference (
    roi_series_uid TEXT, referenced_series_uid TEXT, referenced_sop_uid TEXT, kind TEXT, path TEXT);
CREATE TABLE IF NOT EXISTS file (path TEXT PRIMARY KEY, mtime_ns INTEGER, size INTEGER, status TEXT);
CREATE TABLE IF NOT EXISTS errors (path TEXT PRIMARY KEY, reason TEXT, mtime_ns INTEGER, size INTEGER);
CREATE INDEX IF NOT EXISTS ix_instance_series ON instance(series_uid);
CREATE INDEX IF NOT EXISTS ix_instance_sop ON instance(sop_uid);
CREATE INDEX IF NOT EXISTS ix_series_study ON series(study_uid);
CREATE INDEX IF NOT EXISTS ix_series_modality ON series(modality);
CREATE INDEX IF NOT EXISTS ix_reference_roi ON reference(roi_series_uid);
CREATE INDEX IF NOT EXISTS ix_reference_ref ON reference(referenced_series_uid);
CREATE INDEX IF NOT EXISTS ix_reference_path ON reference(path);
-- ROI series -> image series. Explicit references first (series UID, or SOP UID resolved through the
-- instance table); an ROI series none of whose references is indexed falls back to image series of the
-- same study sharing its FrameOfReferenceUID (via = 'frame_of_reference'), e.g. contours drawn on an
-- uncropped original of the stored series.
CREATE VIEW IF NOT EXISTS roi_link AS
    WITH explicit AS (
        SELECT DISTINCT r.roi_series_uid, COALESCE(NULLIF(r.referenced_series_uid, ''), i.series_uid) AS image_series_uid, r.kind
        FROM reference r LEFT JOIN instance i ON i.sop_uid = r.referenced_sop_uid),
    resolved AS (
        SELECT e.roi_series_uid, e.image_series_uid, e.kind FROM explicit e JOIN series s ON s.series_uid = e.image_series_uid)
    SELECT roi_series_uid, image_series_uid, kind, 'reference' AS via FROM resolved
    UNION
    SELECT rs.series_uid, s.series_uid, rs.modality, 'frame_of_reference'
    FROM series rs JOIN series s ON s.frame_of_reference_uid = rs.frame_of_reference_uid AND s.study_uid = rs.study_uid
        AND s.series_uid != rs.series_uid AND s.modality NOT IN ('RTSTRUCT', 'SEG', 'RTPLAN', 'RTDOSE', 'SR', 'PR', 'REG')
    WHERE rs.modality IN ('RTSTRUCT', 'SEG') AND rs.frame_of_reference_uid != ''
        AND rs.series_uid NOT IN (SELECT roi_series_uid FROM resolved);
"""


def connect(db: str | Path, read_only: bool = False) -> sqlite3.Connection:
    """Open (and for writing, create) a catalog database; a path that is not one is an ``InputError``."""
    from ..errors import InputError

    db = Path(db)
    check_database_file(db)
    if read_only:
        if not db.exists():
            raise InputError(db, "catalog database does not exist (build it with `nmkit index DIR --db ...`)")
        con = sqlite3.connect(f"file:{db.resolve()}?mode=ro", uri=True)
        if con.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'series'").fetchone() is None:
            con.close()
            raise InputError(db, "an SQLite database but not an nmkit catalog (no 'series' table); build one with `nmkit index`")
    else:
        db.parent.mkdir(parents=True, exist_ok=True)
        con = sqlite3.connect(str(db))
        con.executescript(SCHEMA)
        con.execute("INSERT OR REPLACE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
    con.row_factory = sqlite3.Row
    return con


_SQLITE_MAGIC = b"SQLite format 3\x00"


def check_database_file(db: Path) -> None:
    """Refuse a folder, or an existing non-empty file that is not SQLite (a CSV, an image ...), before sqlite3 opens it."""
    from ..errors import InputError

    if db.is_dir():
        raise InputError(db, "is a folder; give the catalog database file (e.g. catalog.sqlite)")
    if db.is_file() and db.stat().st_size > 0:
        with db.open("rb") as handle:
            if handle.read(len(_SQLITE_MAGIC)) != _SQLITE_MAGIC:
                raise InputError(db, "not an SQLite database (an nmkit catalog is made by `nmkit index DIR --db FILE`)")

"""Cohort queries on a catalog: ``Catalog(db).series(modality="PT", tracer="FDG", has_roi=True)``.

Results are pandas DataFrames (one row per series, with patient/study columns, instance counts and the
UIDs of ROI series — RTSTRUCT/SEG — that reference it). ``Catalog.sql`` runs a raw read-only query.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from ..errors import InputError
from .schema import connect

#: common tracer names -> extra patterns matched against radiopharmaceutical / code meaning / radionuclide
TRACER_ALIASES: dict[str, tuple[str, ...]] = {
    "FDG": ("%FDG%", "%fluorodeoxyglucose%", "%Fludeoxyglucose%"),
    "PSMA": ("%PSMA%",),
    "DOTATATE": ("%DOTATATE%", "%DOTA-TATE%"),
    "LU177": ("%Lu-177%", "%177Lu%", "%Lu177%", "%177 Lutetium%", "%Lutetium%177%", "%^177^Lu%"),
    "TC99M": ("%Tc-99m%", "%99mTc%", "%Tc99m%", "%Technetium%"),
    "GA68": ("%Ga-68%", "%68Ga%", "%Ga68%", "%Gallium%"),
}

_SERIES_COLUMNS = """
    s.*, p.patient_name, p.sex AS patient_sex, p.birth_date AS patient_birth_date,
    st.study_date, st.description AS study_description, st.accession,
    (SELECT GROUP_CONCAT(rl.roi_series_uid, ';') FROM roi_link rl WHERE rl.image_series_uid = s.series_uid) AS roi_series,
    (SELECT GROUP_CONCAT(DISTINCT rs.modality) FROM roi_link rl JOIN series rs ON rs.series_uid = rl.roi_series_uid
        WHERE rl.image_series_uid = s.series_uid) AS roi_modalities
"""


class Catalog:
    """Read-only access to a catalog built by ``nmkit index``."""

    def __init__(self, db: str | Path):
        self.db = Path(db)
        self._con = connect(self.db, read_only=True)

    def close(self) -> None:
        self._con.close()

    def __enter__(self) -> "Catalog":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ----- raw SQL ---------------------------------------------------------------------------------
    def sql(self, query: str, params: tuple | dict = ()):  # -> pandas.DataFrame
        """Run a read-only SQL query (the database is opened with ``mode=ro``: writes fail)."""
        import pandas as pd

        try:
            return pd.read_sql_query(query, self._con, params=params)
        except (sqlite3.Error, pd.errors.DatabaseError) as exc:
            raise InputError(self.db, f"SQL query failed: {exc}") from exc

    # ----- cohort queries --------------------------------------------------------------------------
    def series(self, modality: str | list[str] | None = None, tracer: str | None = None,
               description_like: str | None = None, has_roi: bool | None = None, patient: str | None = None,
               study_uid: str | None = None, roi_modality: str | None = None, radionuclide: str | None = None,
               manufacturer_like: str | None = None):  # -> pandas.DataFrame
        """Series matching every given criterion (``None`` means "any").

        ``tracer`` matches radiopharmaceutical name, its code meaning or the radionuclide (case-insensitive,
        with aliases such as FDG = fluorodeoxyglucose); ``description_like`` is an SQL LIKE pattern on the
        series description or reconstruction (e.g. ``"%xSPECT%"``); ``has_roi`` keeps series referenced
        (or not) by an RTSTRUCT/SEG, ``roi_modality`` by one of that modality; ``patient`` matches ID or name.
        """
        where, params = [], []
        if modality:
            mods = [modality] if isinstance(modality, str) else list(modality)
            where.append(f"s.modality IN ({','.join('?' * len(mods))})")
            params += [m.upper() for m in mods]
        if tracer:
            patterns = TRACER_ALIASES.get(tracer.upper().replace("-", "").replace(" ", ""), ()) + (f"%{tracer}%",)
            ors = []
            for pat in patterns:
                ors.append("(s.radiopharmaceutical LIKE ? OR s.radiopharmaceutical_code LIKE ? OR s.radionuclide LIKE ?)")
                params += [pat, pat, pat]
            where.append("(" + " OR ".join(ors) + ")")
        if radionuclide:
            where.append("s.radionuclide LIKE ?")
            params.append(f"%{radionuclide}%")
        if description_like:
            where.append("(s.description LIKE ? OR s.reconstruction_method LIKE ? OR s.protocol LIKE ?)")
            params += [description_like] * 3
        if manufacturer_like:
            where.append("(s.manufacturer LIKE ? OR s.model LIKE ?)")
            params += [manufacturer_like] * 2
        if patient:
            where.append("(s.patient_id = ? OR p.patient_name LIKE ?)")
            params += [patient, f"%{patient}%"]
        if study_uid:
            where.append("s.study_uid = ?")
            params.append(study_uid)
        if has_roi is not None or roi_modality:
            cond = "EXISTS (SELECT 1 FROM roi_link rl JOIN series rs ON rs.series_uid = rl.roi_series_uid WHERE rl.image_series_uid = s.series_uid"
            if roi_modality:
                cond += " AND rs.modality = ?"
                params.append(roi_modality.upper())
            cond += ")"
            where.append(cond if has_roi is not False else f"NOT {cond}")
        query = (f"SELECT {_SERIES_COLUMNS} FROM series s LEFT JOIN patient p ON p.patient_id = s.patient_id "
                 f"LEFT JOIN study st ON st.study_uid = s.study_uid"
                 + (" WHERE " + " AND ".join(where) if where else "")
                 + " ORDER BY s.patient_id, st.study_date, s.study_uid, s.series_number, s.series_uid")
        return self.sql(query, tuple(params))

    def files(self, series_uid: str) -> list[str]:
        """Instance paths of one series, in instance-number order."""
        rows = self._con.execute("SELECT path FROM instance WHERE series_uid=? ORDER BY instance_number, path", (series_uid,))
        return [r["path"] for r in rows]

    def rois(self, image_series_uid: str):  # -> pandas.DataFrame
        """ROI series (RTSTRUCT/SEG) referencing an image series, with their files."""
        return self.sql("""SELECT rs.series_uid AS roi_series_uid, rs.modality, rs.description, rs.roi_creator,
                           GROUP_CONCAT(i.path, ';') AS paths
                           FROM roi_link rl JOIN series rs ON rs.series_uid = rl.roi_series_uid
                           JOIN instance i ON i.series_uid = rs.series_uid
                           WHERE rl.image_series_uid = ? GROUP BY rs.series_uid ORDER BY rs.series_uid""",
                        (image_series_uid,))

    def energy_windows(self, series_uid: str | None = None):  # -> pandas.DataFrame
        if series_uid:
            return self.sql("SELECT * FROM energy_window WHERE series_uid=? ORDER BY window_index", (series_uid,))
        return self.sql("SELECT * FROM energy_window ORDER BY series_uid, window_index")

    def errors(self):  # -> pandas.DataFrame
        return self.sql("SELECT path, reason FROM errors ORDER BY path")

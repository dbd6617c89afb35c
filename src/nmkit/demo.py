"""The main job end to end on embedded default data (simulated, so it runs anywhere with no download).

1. simulate a thyroid scintigraphy cohort (DICOM NM) with three readers' polygon ROIs;
2. convert every reader's ROIs to masks with nmkit's polygon reader; consensus (majority) as training target;
3. a patient-level split (train/val/test) in a dataset manifest;
4. train a small 2D U-Net on CPU; predict the test split;
5. evaluate the model against each reader and against the readers' own spread (reader variability);
6. a learning curve (Dice vs number of labelled images);
7. IBSI radiomics of the thyroid ROI on the test cases;
8. a NEMA IEC SPECT phantom reconstructed two ways (classic OSEM vs CT-guided), recovery per sphere;
9. an HTML report (figures embedded, opens offline) with provenance.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from . import __version__
from .errors import InputError
from .provenance import library_versions, provenance


@dataclass
class DemoConfig:
    n_cases: int = 150
    seed: int = 1
    readers: int = 3
    epochs: int = 30
    size: int = 128
    learning_curve_sizes: tuple[int, ...] = (10, 25, 50, 100)
    learning_curve_epochs: int = 20
    nema_matrix: int = 96
    workers: int = 2
    use_shipped_model: bool = True  # the thyroid bundle trained by bench/train_thyroid_bundle.py, when installed


    @classmethod
    def quick(cls) -> "DemoConfig":
        """A tiny run for tests: same code path, minutes become seconds."""
        return cls(n_cases=24, epochs=3, size=64, learning_curve_sizes=(4, 8), learning_curve_epochs=2, nema_matrix=32,
                   use_shipped_model=False)


class Steps:
    """Numbered progress lines with elapsed time (people watching the demo see where it is)."""

    def __init__(self, total: int):
        self.total, self.i, self.t0 = total, 0, time.perf_counter()
        self.times: dict[str, float] = {}
        self._last = self.t0
        self._name = ""

    def __call__(self, name: str) -> None:
        now = time.perf_counter()
        if self._name:
            self.times[self._name] = now - self._last
        self.i += 1
        self._name, self._last = name, now
        print(f"[{self.i}/{self.total}] {name}  (t = {now - self.t0:.0f} s)", flush=True)

    def finish(self) -> None:
        if self._name:
            self.times[self._name] = time.perf_counter() - self._last


def run_demo(out: str | Path = "demo-output", config: DemoConfig | None = None) -> Path:
    """Run the whole workflow and write ``out/report.html``; returns the report path."""
    import matplotlib

    matplotlib.use("Agg")
    cfg = config or DemoConfig()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    steps = Steps(8)
    results: dict[str, Any] = {}

    steps("simulating the thyroid scintigraphy cohort (DICOM NM + 3 readers' polygon ROIs)")
    from .phantoms.cohort import generate_cohort

    cohort_dir = out / "cohort"
    generate_cohort(cohort_dir, n=cfg.n_cases, seed=cfg.seed, n_readers=cfg.readers, workers=cfg.workers, progress=True)
    steps("readers' ROIs -> masks (nmkit polygon reader), majority consensus, patient-level split manifest")
    cases, data, manifest = prepare_thyroid_dataset(cohort_dir, out, cfg.readers, cfg.seed)
    readers = [f"R{i + 1}" for i in range(cfg.readers)]
    results.update(cohort=cases, conversion=data["conversion"], manifest=manifest)

    from .segment.bundle import load_bundle, shipped_bundle
    from .segment.data import load_split
    from .segment.preprocess import Preprocessing
    from .segment.train import TrainConfig, train

    train_cases, val_cases, test_cases = (load_split(manifest, s) for s in ("train", "val", "test"))
    if not (train_cases and val_cases and test_cases):
        raise InputError(None, f"{cfg.n_cases} cases give {len(train_cases)}/{len(val_cases)}/{len(test_cases)} "
                               "train/validation/test cases; the demo needs at least one in each (use more cases)")
    tconfig = TrainConfig(network="unet", network_options={"channels": (16, 32, 64, 128)}, loss="dice-ce", epochs=cfg.epochs,
                          batch_size=8, learning_rate=3e-3, patience=8, seed=cfg.seed, labels={1: "thyroid"})
    shipped = shipped_bundle("thyroid-unet2d") if cfg.use_shipped_model else None
    if shipped is not None:
        steps("segmentation model: the shipped thyroid U-Net bundle (trained on CPU by bench/train_thyroid_bundle.py)")
        bundle_dir = shipped
        prep = load_bundle(shipped, device="cpu").preprocessing
    else:
        steps(f"training a 2D U-Net on {len(train_cases)} images (CPU)")
        prep = Preprocessing(normalisation="counts", spatial_dims=2, target_size=(cfg.size, cfg.size))
        bundle_dir = train(train_cases, val_cases, prep, tconfig, out / "model", progress=True,
                           data_summary={"manifest": str(out / "manifest.csv"), "target": "majority consensus of readers"})

    steps(f"predicting the {len(test_cases)} test images and evaluating against each reader")
    from .segment.infer import predict_image

    bundle = load_bundle(bundle_dir, device="cpu")
    predictions = {c.case_id: predict_image(bundle, c.image) for c in test_cases}
    from .io.volume_files import write_volume

    for case_id, mask in predictions.items():
        write_volume(mask, out / "predictions" / f"{case_id}.nii.gz")
    results.update(_evaluate(test_cases, predictions, data, readers, out))
    if bundle.heads:
        results["heads"] = _evaluate_heads(bundle, test_cases, predictions, data, readers, out)

    steps("learning curve (Dice vs number of labelled images)")
    from dataclasses import replace

    from .segment.study import learning_curve

    sizes = [n for n in cfg.learning_curve_sizes if n <= len(train_cases)] or [len(train_cases)]
    small = Preprocessing(normalisation="counts", spatial_dims=2, target_size=(cfg.size, cfg.size))
    results["learning_curve"] = learning_curve(train_cases, val_cases, test_cases, sizes, small,
                                               replace(tconfig, network_options={"channels": (8, 16, 32, 64)},
                                                       epochs=cfg.learning_curve_epochs, patience=100), out / "learning_curve")

    steps("IBSI radiomics of the thyroid ROI (model segmentation) on the test images")
    results["radiomics"] = _radiomics(test_cases, predictions, out)

    steps("NEMA IEC SPECT phantom: classic OSEM vs CT-guided reconstruction")
    results["nema"] = _nema(cfg, out)

    steps("writing the HTML report")
    steps.finish()
    results["timings"] = steps.times
    record = provenance(config={k: list(v) if isinstance(v, tuple) else v for k, v in cfg.__dict__.items()},
                        inputs=[str(cohort_dir)], libraries=library_versions(), seeds={"cohort": cfg.seed, "training": cfg.seed},
                        model={"name": bundle.name, "version": bundle.version, "validation": bundle.description.get("validation")})
    (out / "provenance.json").write_text(json.dumps(record, indent=2, default=str))
    from .report.demo_report import build_demo_report

    report = build_demo_report(results, data, predictions, test_cases, readers, record, bundle_dir, out)
    path = report.write(out / "report.html")
    print(f"report: {path.resolve()}  (total {time.perf_counter() - steps.t0:.0f} s)", flush=True)
    return path


def prepare_thyroid_dataset(cohort_dir: Path, out: Path, n_readers: int = 3, seed: int = 1,
                            fractions: tuple[float, float, float] = (0.7, 0.15, 0.15),
                            target: str = "consensus") -> tuple[pd.DataFrame, dict[str, Any], pd.DataFrame]:
    """Readers' ROIs -> masks and a patient-level split manifest (``out/manifest.csv``).

    ``target`` picks the training mask (column ``mask``): the readers' majority ``consensus`` (a model of the typical
    reader) or one reader such as ``R1`` (a model that mimics that expert's own habits). Columns ``mask_R1`` ...
    ``mask_consensus`` hold every reader's mask, for a network with one head per reader (``TrainConfig.heads``).
    """
    from .catalog.manifest import split_by_patient

    cases = pd.read_csv(cohort_dir / "cases.csv")
    cases = cases[cases["status"] == "ok"].reset_index(drop=True)
    readers = [f"R{i + 1}" for i in range(n_readers)]
    if target not in readers + ["consensus"]:
        raise ValueError(f"target must be 'consensus' or one of {', '.join(readers)}, got {target!r}")
    data = _convert_rois(cohort_dir, cases, readers, out / "masks")
    manifest = pd.DataFrame({"case_id": cases["case"], "patient_id": cases["patient_id"], "pathology": cases["pathology"],
                             "image": [str(cohort_dir / p) for p in cases["dicom"]],
                             "mask": [str(out / "masks" / target / f"{c}.nii.gz") for c in cases["case"]]})
    for name in readers + ["consensus"]:  # every reader's mask too, for networks with one head per reader
        manifest[f"mask_{name}"] = [str(out / "masks" / name / f"{c}.nii.gz") for c in cases["case"]]
    manifest = split_by_patient(manifest, fractions, seed=seed)
    manifest.to_csv(out / "manifest.csv", index=False)
    return cases, data, manifest


def _convert_rois(cohort_dir: Path, cases: pd.DataFrame, readers: list[str], mask_dir: Path) -> dict[str, Any]:
    """Each reader's polygon JSON -> mask on the DICOM grid (our converter), checked against the cohort's masks."""
    from tqdm.auto import tqdm

    from .io.image import Mask
    from .io.polygons import read_polygons
    from .io.reader import read_image
    from .io.volume_files import read_label_map, write_volume
    from .metrics.readers import consensus

    masks: dict[str, dict[str, np.ndarray]] = {r: {} for r in readers}
    consensus_masks: dict[str, np.ndarray] = {}
    rows = []
    for row in tqdm(list(cases.itertuples()), desc="ROIs -> masks", disable=None):
        image = read_image(cohort_dir / row.dicom)
        for reader in readers:
            roi_file = cohort_dir / row.rois.format(reader=reader)
            drawn = {roi.get("name") for roi in json.loads(roi_file.read_text()).get("rois", [])}
            if "thyroid" in drawn:
                gland = read_polygons(roi_file, image, roi_names=["thyroid"]).binary("thyroid").reshape(image.spatial_shape)
            else:  # the reader saw no gland (e.g. thyroiditis with very low uptake): an empty ROI is a valid reading
                gland = np.zeros(image.spatial_shape, bool)
            masks[reader][row.case] = gland
            write_volume(Mask.like(image, gland.astype(np.uint8), labels={1: "thyroid"}), mask_dir / reader / f"{row.case}.nii.gz")
            reference = read_label_map(cohort_dir / row.masks.format(reader=reader)).array == 1
            rows.append({"case": row.case, "reader": reader, "pixels": int(gland.sum()), "area_mm2": float(gland.sum() * image.voxel_volume),
                         "agreement_with_cohort_mask": float((reference.reshape(gland.shape) == gland).mean())})
        cons, _ = consensus([masks[r][row.case] for r in readers], method="majority")
        consensus_masks[row.case] = cons
        write_volume(Mask.like(image, cons.astype(np.uint8), labels={1: "thyroid"}), mask_dir / "consensus" / f"{row.case}.nii.gz")
    return {"readers": masks, "consensus": consensus_masks, "conversion": pd.DataFrame(rows)}


def _reference(data: dict[str, Any], reader: str) -> dict[str, np.ndarray]:
    """Masks by case of one reader, or of the majority consensus."""
    return data["consensus"] if reader == "consensus" else data["readers"][reader]


def _evaluate(test_cases, predictions, data, readers, out: Path) -> dict[str, Any]:
    from .metrics.overlap import dice as overlap_dice
    from .metrics.readers import plot_agreement, reader_study
    from .metrics.surface import surface_metrics

    rows = []
    for case in test_cases:
        pred = predictions[case.case_id].binary(1)
        for reader in readers + ["consensus"]:
            truth = _reference(data, reader)[case.case_id]
            dice = overlap_dice(pred, truth)
            surf = surface_metrics(pred, truth, spacing=case.image.spacing, tolerance_mm=2.0)
            rows.append({"case": case.case_id, "reference": reader, "dice": float(dice), "hd95_mm": surf["hd95"], "assd_mm": surf["assd"]})
    metrics = pd.DataFrame(rows)
    metrics.to_csv(out / "test_metrics.csv", index=False)
    ids = [c.case_id for c in test_cases]
    study = reader_study({r: [data["readers"][r][i] for i in ids] for r in readers}, model=[predictions[i].binary(1) for i in ids],
                         spacing=test_cases[0].image.spacing, case_ids=ids)
    plot_agreement(study, out / "reader_variability.png", title="Model vs readers, against the readers' own spread")
    study.pairs.to_csv(out / "reader_variability_pairs.csv", index=False)
    return {"metrics": metrics, "reader_study": study}


def _evaluate_heads(bundle, test_cases, predictions, data, readers, out: Path) -> pd.DataFrame:
    """Mean Dice of each head of a multi-reader bundle against each reader (and the consensus): a head that mimics
    its reader scores highest in that reader's column. ``predictions`` (by case) are the default head's, reused.
    Written to ``out/heads_dice.csv``."""
    from .metrics.overlap import dice as overlap_dice
    from .segment.infer import predict_image

    rows = []
    for head in bundle.heads:
        reuse = head == bundle.default_head
        preds = {c.case_id: (predictions[c.case_id] if reuse else predict_image(bundle, c.image, head=head)).binary(1)
                 for c in test_cases}
        row: dict[str, Any] = {"head": head}
        for reader in readers + ["consensus"]:
            truth = _reference(data, reader)
            row[f"dice_vs_{reader}"] = float(np.mean([overlap_dice(preds[c.case_id], truth[c.case_id]) for c in test_cases]))
        rows.append(row)
    table = pd.DataFrame(rows)
    table.to_csv(out / "heads_dice.csv", index=False)
    return table


def _radiomics(test_cases, predictions, out: Path) -> pd.DataFrame:
    """IBSI features of the predicted thyroid ROI per test image (2D, counts, FBN 32)."""
    import logging

    from .io.image import Image, Mask
    from .radiomics.config import RadiomicsConfig
    from .radiomics.engine import extract

    config = RadiomicsConfig(name="planar-nm-fbn32", dims="2D", discretisation={"method": "FBN", "n_bins": 32},
                             families=("morphology", "intensity_statistics", "intensity_histogram", "texture"))
    rows = []
    for case in test_cases:
        image3d = Image(case.image.array[None].astype(np.float32), spacing=(*case.image.spacing, 1.0), modality="NM", units="counts")
        mask = predictions[case.case_id]
        mask3d = Mask.like(image3d, mask.array[None].astype(np.uint8), labels={1: "thyroid"})
        try:
            features = extract(image3d, mask3d, config)
        except Exception as exc:  # a bad case is logged and skipped
            logging.getLogger(__name__).warning("radiomics failed for %s: %s", case.case_id, exc)
            continue
        rows.append({"case": case.case_id, **features})
    table = pd.DataFrame(rows)
    table.to_csv(out / "radiomics.csv", index=False)
    return table


def _nema(cfg: DemoConfig, out: Path) -> dict[str, Any]:
    from .phantoms.nema import NemaConfig, recovery_coefficients, simulate_nema

    n = cfg.nema_matrix
    voxel = 440.0 / n  # field of view 440 mm: the body (300 mm) inside, the camera orbit (250 mm radius) outside
    study = simulate_nema(NemaConfig(n=n, nz=int(np.ceil(220.0 / voxel)), voxel_mm=voxel, seed=cfg.seed))
    rc = pd.DataFrame({"diameter_mm": list(recovery_coefficients(study.osem.array, study.phantom)),
                       "rc_osem": list(recovery_coefficients(study.osem.array, study.phantom).values()),
                       "rc_ct_guided": list(recovery_coefficients(study.ct_guided.array, study.phantom).values())})
    rc.to_csv(out / "nema_recovery.csv", index=False)
    return {"study": study, "recovery": rc}

"""nnU-Net v2 as nmkit's 3D engine: run users' results folders (or exported zips) offline, and train from a case table.

A results folder is what nnU-Net writes after training (``<Trainer>__<Plans>__<configuration>/`` with ``plans.json``,
``dataset.json`` and ``fold_N/checkpoint_final.pth``); TotalSegmentator, MOOSE, LION and the autoPET baselines ship
theirs as such folders or zips. nmkit never downloads weights: a missing fold or checkpoint is an ``InputError`` naming
the folder and file expected. Checkpoints are loaded with ``torch.load(weights_only=True)`` (tensors and plain data only,
no code runs on load); prediction itself is nnU-Net's own ``nnUNetPredictor`` so masks equal nnU-Net's voxel for voxel.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ...devices import device_name
from ...errors import InputError
from . import EngineModel, EnginePreprocessing, sha256

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint_final.pth"
_EXTRACTED: dict[str, tempfile.TemporaryDirectory] = {}  # zip sha256 -> extraction folder (lives with the process)


def _is_results_folder(path: Path) -> bool:
    return (path / "plans.json").is_file() and (path / "dataset.json").is_file()


def find_results_folder(path: str | Path, configuration: str | None = None) -> Path:
    """The nnU-Net results folder in ``path``: the folder itself, or the one below it (a dataset folder, an extracted
    zip) whose name ends with ``__<configuration>``; several candidates without ``configuration`` is an error listing them."""
    path = Path(path)
    if path.is_file() and path.suffix.lower() == ".zip":
        path = _extract_zip(path)
    if not path.exists():
        raise InputError(path, "nnU-Net results folder does not exist (nmkit never downloads weights: supply the folder "
                               "with plans.json, dataset.json and fold_N/checkpoint_final.pth)")
    if _is_results_folder(path):
        return path
    found = sorted({p.parent for p in list(path.glob("*/plans.json")) + list(path.glob("*/*/plans.json")) if _is_results_folder(p.parent)})
    if configuration:
        found = [p for p in found if p.name.endswith(f"__{configuration}")] or found
    if not found:
        raise InputError(path, "not an nnU-Net results folder: plans.json and dataset.json missing (expected "
                               "<Trainer>__<Plans>__<configuration>/ with fold_N/checkpoint_final.pth; nmkit never downloads weights)")
    if len(found) > 1:
        names = ", ".join(str(p.relative_to(path)) for p in found)
        raise InputError(path, f"holds several nnU-Net results folders ({names}); name one of them")
    return found[0]


def _extract_zip(path: Path) -> Path:
    """Extract an exported nnU-Net model zip once per process (checked member names: nothing outside the folder)."""
    key = sha256(path)
    if key not in _EXTRACTED:
        tmp = tempfile.TemporaryDirectory(prefix="nmkit-nnunet-")
        try:
            with zipfile.ZipFile(path) as zf:
                for member in zf.namelist():
                    if member.startswith(("/", "\\")) or ".." in Path(member).parts:
                        raise InputError(path, f"unsafe member name in zip: {member}")
                zf.extractall(tmp.name)
        except zipfile.BadZipFile as exc:
            raise InputError(path, f"not a readable zip ({exc})") from exc
        _EXTRACTED[key] = tmp
    return Path(_EXTRACTED[key].name)


def available_folds(folder: Path, checkpoint: str = CHECKPOINT) -> list[int | str]:
    """Folds of a results folder that hold ``checkpoint`` (``fold_0`` .. ``fold_all``)."""
    folds: list[int | str] = []
    for sub in sorted(folder.glob("fold_*")):
        if (sub / checkpoint).is_file():
            tail = sub.name.split("_", 1)[1]
            folds.append(int(tail) if tail.isdigit() else tail)
    return folds


def _load_checkpoint(path: Path) -> dict[str, Any]:
    """A checkpoint's dictionary, unpickled with ``weights_only=True`` (tensors, plain data, numpy scalars allowed)."""
    import torch

    safe: list[Any] = [np.dtype]
    for name in ("Float64DType", "Float32DType", "Int64DType", "Int32DType", "BoolDType"):
        if hasattr(np, "dtypes") and hasattr(np.dtypes, name):
            safe.append(getattr(np.dtypes, name))
    try:
        from numpy._core.multiarray import scalar  # numpy >= 2

        safe.append(scalar)
    except ImportError:
        pass
    try:
        with torch.serialization.safe_globals(safe):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a pickle with code objects, a truncated file
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(path, f"checkpoint cannot be loaded safely (tensors and plain data only): {detail}") from exc


def _label_names(dataset_json: dict[str, Any]) -> dict[int, str]:
    """``{value: name}`` of the output label map from dataset.json's ``labels`` (regions: their order in the output)."""
    labels = dataset_json.get("labels") or {}
    names: dict[int, str] = {}
    order = dataset_json.get("regions_class_order")
    for i, (name, value) in enumerate((n, v) for n, v in labels.items() if n != "background"):
        if isinstance(value, (list, tuple)):
            value = order[i] if order and i < len(order) else i + 1
        if int(value) != 0:
            names[int(value)] = str(name)
    return names


def _channels(dataset_json: dict[str, Any]) -> list[str]:
    channels = dataset_json.get("channel_names") or dataset_json.get("modality") or {"0": "image"}
    return [str(channels[k]) for k in sorted(channels, key=int)]


class NnUNetModel(EngineModel):
    """An nnU-Net v2 results folder loaded for inference (one or several folds, ensembled as nnU-Net does)."""

    predictor: Any = None

    def predict_labels(self, image, flips: Sequence[int] | None = None) -> np.ndarray:
        """Label map on the image's grid (2D or 3D; channels first when the model has several).

        ``flips``: None = nnU-Net's own test-time mirroring (its default); ``()`` = none."""
        arr = np.asarray(image.array, dtype=np.float32)
        nd = image.ndim_spatial
        if arr.ndim == nd:
            arr = arr[None]
        if arr.shape[0] != len(self.channels):
            raise InputError(None, f"model {self.name} expects {len(self.channels)} channel(s) ({', '.join(self.channels)}); "
                                   f"the input has {arr.shape[0]}")
        spacing = [float(s) for s in image.spacing[::-1]]  # nnU-Net (SimpleITK order): z, y, x
        if nd == 2:  # nnU-Net's 2D convention: a one-slice volume with spacing 999 across it
            arr, spacing = arr[:, None], [999.0] + spacing
        self.predictor.use_mirroring = flips is None or len(tuple(flips)) > 0
        with _quiet():
            seg = self.predictor.predict_single_npy_array(arr, {"spacing": spacing})
        seg = np.asarray(seg)
        return (seg[0] if nd == 2 else seg).astype(np.uint8 if seg.max(initial=0) < 256 else np.uint16)


@contextlib.contextmanager
def _quiet():
    """nnU-Net prints progress to stdout; keep it in the debug log (nmkit's logs are quiet by default)."""
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        yield
    if buffer.getvalue().strip():
        log.debug("nnU-Net: %s", buffer.getvalue().strip())


def load_nnunet(path: str | Path, folds: Sequence[int | str] | None = None, checkpoint: str = CHECKPOINT,
                device: str | None = None, configuration: str | None = None, name: str | None = None,
                version: str | None = None, tile_step_size: float = 0.5) -> NnUNetModel:
    """Load an nnU-Net v2 results folder (or exported zip) offline; ``folds`` default: every fold with ``checkpoint``."""
    folder = find_results_folder(path, configuration)
    try:
        dataset_json = json.loads((folder / "dataset.json").read_text())
        plans = json.loads((folder / "plans.json").read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(folder, f"dataset.json/plans.json not readable ({exc})") from exc
    have = available_folds(folder, checkpoint)
    if folds is None or list(folds) == []:
        folds = have
        if not folds:
            raise InputError(folder, f"no fold_N/{checkpoint} in the nnU-Net results folder (nmkit never downloads weights: "
                                     f"copy the trained folds there)")
    folds = [int(f) if str(f).isdigit() else str(f) for f in folds]
    missing = [f for f in folds if f not in have]
    if missing:
        expected = ", ".join(f"fold_{f}/{checkpoint}" for f in missing)
        raise InputError(folder, f"fold(s) {', '.join(map(str, missing))} missing: expected {expected} "
                                 f"(available folds: {', '.join(map(str, have)) or 'none'})")
    checkpoints = [folder / f"fold_{f}" / checkpoint for f in folds]
    loaded = [_load_checkpoint(p) for p in checkpoints]  # before nnU-Net's import: a bad file is reported in a second
    try:  # after the folder checks: a wrong folder is reported without the import's seconds
        import torch
        from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
        from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name
        from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
        from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
    except ImportError as exc:
        raise InputError(path, f"nnU-Net v2 is not installed ({exc}); install nmkit with `make install`") from exc
    first = loaded[0]
    trainer_name = first.get("trainer_name", "nnUNetTrainer")
    configuration_name = first["init_args"]["configuration"]
    mirroring = first.get("inference_allowed_mirroring_axes")
    plans_manager = PlansManager(plans)
    config_manager = plans_manager.get_configuration(configuration_name)
    n_in = determine_num_input_channels(plans_manager, config_manager, dataset_json)
    n_out = plans_manager.get_label_manager(dataset_json).num_segmentation_heads
    trainer_class = recursive_find_trainer_class_by_name(trainer_name)
    if trainer_class is None:
        raise InputError(folder, f"trainer {trainer_name!r} of this model is not part of the installed nnU-Net")
    network = trainer_class.build_network_architecture(plans_manager, config_manager, n_in, n_out, enable_deep_supervision=False)
    params = [c["network_weights"] for c in loaded]
    try:
        network.load_state_dict(params[0])
    except RuntimeError as exc:
        raise InputError(checkpoints[0], f"weights do not fit the network in plans.json: {str(exc).splitlines()[0]}") from exc
    device = device_name(device)
    with _quiet():
        predictor = nnUNetPredictor(tile_step_size=tile_step_size, use_gaussian=True, use_mirroring=True,
                                    perform_everything_on_device=str(device).startswith("cuda"), device=torch.device(device),
                                    verbose=False, verbose_preprocessing=False, allow_tqdm=False)
        predictor.manual_initialization(network, plans_manager, config_manager, params, dataset_json, trainer_name,
                                        tuple(mirroring) if mirroring is not None else None)
    checksums = {str(p.relative_to(folder)): sha256(p) for p in [folder / "plans.json", folder / "dataset.json", *checkpoints]}
    from hashlib import sha256 as _h

    digest = _h(json.dumps(checksums, sort_keys=True).encode()).hexdigest()
    dataset_name = str(plans.get("dataset_name") or dataset_json.get("name") or folder.parent.name)
    import nnunetv2

    identity = {"engine": "nnunet", "nnunetv2_version": getattr(nnunetv2, "__version__", None) or _version("nnunetv2"),
                "results_folder": str(folder), "source": str(path), "dataset_name": dataset_name, "trainer": trainer_name,
                "plans": plans.get("plans_name"), "configuration": configuration_name, "folds": [str(f) for f in folds],
                "checkpoint": checkpoint, "sha256": checksums, "model_sha256": digest}
    channels = _channels(dataset_json)
    pet = any(c.upper() in ("PET", "PT", "SUV") or "PET" in c.upper() for c in channels)
    model = NnUNetModel(path=folder, name=name or f"{dataset_name}-{configuration_name}",
                        version=version or f"{trainer_name}__{plans.get('plans_name')}-folds{'+'.join(map(str, folds))}-{digest[:8]}",
                        label_names=_label_names(dataset_json), channels=channels,
                        description={"engine": "nnunet", "postprocessing": {}, "identity": identity},
                        preprocessing=EnginePreprocessing(normalisation="suv" if pet and len(channels) == 1 else "engine"))
    model.predictor = predictor
    return model


def _version(package: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None

"""Peak memory of 3D sliding-window prediction of a whole-body PET/CT on the CPU (issue 23 item 5: within 8 GiB).

Builds a synthetic whole-body study - CT 512x512x600 (0.98 x 0.98 x 3.0 mm, HU: air, body, lungs, bone, liver) and an
FDG PET on its own coarser grid (192x192x450, 2.6 x 2.6 x 4.0 mm, Bq/ml: background SUV ~1, liver 2.5, brain 7,
bladder 30, a few lesions 8-15) - writes both as NIfTI, and runs in a fresh subprocess per setting what
``nmkit predict`` does with a two-channel (CT+PET) bundle: read both files, resample the PET onto the CT grid and stack
them (``segment.engines.channels.stack_channels``), normalise, sliding-window inference (``segment.infer``), write the
label map. The network is a small untrained 3D U-Net (nmkit's ``unet``, channels 4-8): its weights do not change the
memory or the window count, only the time. Each subprocess reports its peak resident memory (``VmHWM`` from
/proc/self/status, and ``ru_maxrss``) and its wall time.

Run (it takes CPU minutes; be nice to others):
    nice -n 19 .venv/bin/python bench/bench_predict_memory.py [--quick] [--settings 0:2 0:8 0.25:2 0:2:flip 0:2:monai]
``--quick``: a 256x256x150 CT instead (seconds), to try the script.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

GIB = 1024**3


def _ellipse(shape_yx: tuple[int, int], centre: tuple[float, float], radii: tuple[float, float]) -> np.ndarray:
    y, x = np.ogrid[:shape_yx[0], :shape_yx[1]]
    return ((y - centre[0]) / radii[0]) ** 2 + ((x - centre[1]) / radii[1]) ** 2 <= 1.0


def write_study(folder: Path, ct_shape: tuple[int, int, int], pet_shape: tuple[int, int, int], seed: int = 0) -> tuple[Path, Path]:
    """Synthetic whole-body CT (int16 HU) and PET (float32 Bq/ml) NIfTI files covering the same 500 x 500 x 1800 mm."""
    import SimpleITK as sitk

    nz, ny, nx = ct_shape
    fov = (500.0, 500.0, 1800.0)  # x, y, z in mm
    ct_spacing = (fov[0] / nx, fov[1] / ny, fov[2] / nz)
    ct = np.full(ct_shape, -1000, dtype=np.int16)
    rng = np.random.default_rng(seed)
    body = _ellipse((ny, nx), (ny / 2, nx / 2), (0.32 * ny, 0.42 * nx))
    lungs = _ellipse((ny, nx), (ny * 0.47, nx * 0.35), (0.17 * ny, 0.1 * nx)) | _ellipse((ny, nx), (ny * 0.47, nx * 0.65), (0.17 * ny, 0.1 * nx))
    spine = _ellipse((ny, nx), (ny * 0.7, nx / 2), (0.04 * ny, 0.04 * nx))
    liver = _ellipse((ny, nx), (ny * 0.48, nx * 0.37), (0.14 * ny, 0.14 * nx))
    noise = rng.normal(0, 12, size=(ny, nx)).astype(np.float32)
    for k in range(nz):  # slice by slice: the CT is built without a float copy of the volume
        z = k / nz  # 0 = feet, 1 = head
        sl = np.where(body, 40, -1000).astype(np.float32) + np.where(body, noise, 0) * (1 + (k % 7) / 7)
        if 0.55 < z < 0.75:
            sl[lungs] = -820
        if 0.47 < z < 0.57:
            sl[liver] = 60
        sl[spine & body] = 700
        ct[k] = np.clip(sl, -1024, 3071).astype(np.int16)
    pz, py, px = pet_shape
    pet_spacing = (fov[0] / px, fov[1] / py, fov[2] / pz)
    activity = 5000.0  # Bq/ml: SUV 1 for 350 MBq in 70 kg
    pbody = _ellipse((py, px), (py / 2, px / 2), (0.32 * py, 0.42 * px))
    pliver = _ellipse((py, px), (py * 0.48, px * 0.37), (0.14 * py, 0.14 * px))
    pet = np.zeros(pet_shape, dtype=np.float32)
    lesions = [(int(pz * f), int(py * rng.uniform(0.35, 0.65)), int(px * rng.uniform(0.3, 0.7)), rng.uniform(8, 15))
               for f in (0.3, 0.5, 0.62, 0.7)]
    yy, xx = np.ogrid[:py, :px]
    for k in range(pz):
        z = k / pz
        sl = np.where(pbody, activity, 0.0).astype(np.float32)
        if 0.47 < z < 0.57:
            sl[pliver] = 2.5 * activity
        if 0.9 < z < 0.97:
            sl[_ellipse((py, px), (py / 2, px / 2), (0.08 * py, 0.08 * px))] = 7 * activity
        if 0.12 < z < 0.16:
            sl[_ellipse((py, px), (py * 0.55, px / 2), (0.05 * py, 0.06 * px))] = 30 * activity
        for lz, ly, lx, suv in lesions:
            if abs(k - lz) <= 3:
                sl[(yy - ly) ** 2 + (xx - lx) ** 2 <= 9] = suv * activity
        pet[k] = rng.poisson(np.maximum(sl, 0) / 500.0).astype(np.float32) * 500.0  # counting noise
    paths = []
    for name, array, spacing in (("ct", ct, ct_spacing), ("pet", pet, pet_spacing)):
        image = sitk.GetImageFromArray(array)
        image.SetSpacing(spacing)
        image.SetOrigin((-fov[0] / 2, -fov[1] / 2, -fov[2]))
        path = folder / f"{name}.nii"
        sitk.WriteImage(image, str(path))
        paths.append(path)
    return paths[0], paths[1]


def write_bundle(folder: Path, patch: tuple[int, int, int]) -> Path:
    """A two-channel (CT, PET) 3D U-Net bundle with random weights, 2 classes (background, lesion)."""
    import torch

    from nmkit.segment.bundle import write_bundle as write
    from nmkit.segment.nets import build_network
    from nmkit.segment.preprocess import Preprocessing
    from nmkit.segment.train import TrainConfig

    options = {"channels": (4, 8), "num_res_units": 0}
    config = TrainConfig(network="unet", network_options=options, labels={1: "lesion"})
    prep = Preprocessing(normalisation="window", spatial_dims=3, target_size=None, patch_size=patch)
    if hasattr(prep, "channel_normalisations"):  # per-channel normalisation (multi-channel bundles)
        prep.channels, prep.channel_normalisations = ("CT", "PT"), ("window", "suv")
    torch.manual_seed(0)
    model = build_network("unet", 3, 2, 2, img_size=patch, **options)
    out = write(folder, model, config, prep, name="bench-petct", version="0.0.0")
    description = json.loads((out / "bundle.json").read_text())
    description["network"]["in_channels"] = 2
    description["channels"] = ["CT", "PT"]
    (out / "bundle.json").write_text(json.dumps(description, indent=2))
    return out


CHILD = r'''
import json, resource, sys, time
t0 = time.time()
from pathlib import Path
from nmkit.segment.bundle import load_bundle
from nmkit.segment.data import load_image
from nmkit.segment.engines.channels import stack_channels
from nmkit.segment.infer import SlidingWindow, predict_heads
from nmkit.io.volume_files import write_volume

def hwm():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
bundle_path, ct_path, pet_path, out, overlap, batch, extra = sys.argv[1:8]
bundle = load_bundle(bundle_path, device="cpu")
after_import = hwm()
image = stack_channels([load_image(Path(ct_path)), load_image(Path(pet_path))])
after_load = hwm()
t1 = time.time()
if extra == "monai":  # the previous path: MONAI's sliding_window_inference on the whole normalised tensor
    import numpy as np, torch
    from monai.inferers import sliding_window_inference
    from nmkit.io.image import Mask
    from nmkit.segment.infer import network_input
    with torch.no_grad():
        x = torch.from_numpy(network_input(image.array, bundle.preprocessing))[None]
        logits = sliding_window_inference(x, tuple(bundle.preprocessing.patch_size), int(batch), bundle.model,
                                          overlap=float(overlap), mode="gaussian")
        probs = torch.softmax(logits, 1)[0].numpy()
    mask = Mask.like(image, probs.argmax(0).astype(np.uint8), labels=bundle.labels)
else:
    masks = predict_heads(bundle, image, [None], flips=(-1,) if extra == "flip" else (),
                          window=SlidingWindow(float(overlap), int(batch)))
    mask = masks[None]
t2 = time.time()
write_volume(mask, Path(out))
print(json.dumps({"hwm": hwm(), "maxrss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                  "after_import": after_import, "after_load": after_load, "infer_s": t2 - t1, "total_s": time.time() - t0,
                  "lesion_voxels": int((mask.array == 1).sum()), "shape": list(image.array.shape)}))
'''


def run_setting(bundle: Path, ct: Path, pet: Path, out: Path, overlap: float, batch: int, extra: str = "") -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"))
    done = subprocess.run([sys.executable, "-c", CHILD, str(bundle), str(ct), str(pet), str(out), str(overlap), str(batch), extra],
                          capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise SystemExit(f"setting overlap {overlap} batch {batch} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a 256x256x150 CT (tries the script in seconds)")
    parser.add_argument("--patch", type=int, nargs=3, default=(128, 128, 128), help="window (z y x voxels)")
    parser.add_argument("--settings", nargs="+", default=["0:2", "0:8"],
                        help="OVERLAP:BATCH[:flip|:monai] (flip: test-time flip, two passes; monai: MONAI's "
                             "sliding_window_inference on the whole normalised tensor, the path nmkit used before)")
    parser.add_argument("--work", default=None, help="folder for the synthetic study, reused when it is there (default: a "
                                                     "temporary one)")
    args = parser.parse_args()
    ct_shape, pet_shape = ((150, 256, 256), (112, 96, 96)) if args.quick else ((600, 512, 512), (450, 192, 192))
    with tempfile.TemporaryDirectory(prefix="nmkit-bench-mem-") as tmp:
        work = Path(args.work or tmp)
        work.mkdir(parents=True, exist_ok=True)
        t = time.time()
        ct, pet = (work / "ct.nii", work / "pet.nii") if args.work and (work / "pet.nii").exists() else write_study(work, ct_shape, pet_shape)
        bundle = write_bundle(work / "bundle", tuple(args.patch))
        print(f"study ready in {time.time() - t:.0f} s: CT {ct_shape[::-1]} (x y z) int16, PET {pet_shape[::-1]} float32; "
              f"window {tuple(args.patch)} voxels", flush=True)
        input_gib = 2 * 4 * np.prod(ct_shape) / GIB
        print(f"two-channel float32 input on the CT grid alone: {input_gib:.2f} GiB")
        header = (f"{'volume (x y z)':>16} {'channels':>8} {'window':>13} {'overlap':>7} {'batch':>5} {'path':>14} "
                  f"{'peak RSS GiB':>12} {'load GiB':>8} {'time s':>7}")
        print(header)
        rows = []
        for setting in args.settings:
            overlap, batch, *rest = setting.split(":")
            extra = rest[0] if rest else ""
            path = {"": "nmkit", "flip": "nmkit+flip", "monai": "monai (before)"}[extra]
            result = run_setting(bundle, ct, pet, work / f"mask_{overlap}_{batch}_{extra}.nii.gz", float(overlap), int(batch), extra)
            row = (f"{'x'.join(map(str, ct_shape[::-1])):>16} {2:>8} {'x'.join(map(str, args.patch)):>13} {float(overlap):>7.2f} "
                   f"{int(batch):>5} {path:>14} {result['hwm'] / GIB:>12.2f} {result['after_load'] / GIB:>8.2f} {result['infer_s']:>7.0f}")
            print(row, flush=True)
            rows.append({"overlap": float(overlap), "batch": int(batch), "path": path, **result})
        print(json.dumps(rows))


if __name__ == "__main__":
    main()

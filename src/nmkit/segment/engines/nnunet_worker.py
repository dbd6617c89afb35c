"""Run nnU-Net v2's fingerprinting, planning, preprocessing and training in a child process, offline.

nnU-Net reads its folders (``nnUNet_raw``, ``nnUNet_preprocessed``, ``nnUNet_results``) from environment variables at
import time, so each training runs in its own interpreter with them set. Every socket connection is refused in that
process: nnU-Net never needs the network to train, and a hidden download must fail loudly, not hang behind a firewall.

Usage (by ``nmkit.segment.engines.nnunet.train_nnunet``): ``python -m nmkit.segment.engines.nnunet_worker SPEC.json``.
"""

from __future__ import annotations

import json
import os
import socket
import sys
from pathlib import Path


def block_network() -> None:
    """Make every socket connection fail (offline guarantee for the whole process)."""

    def refuse(*_args, **_kwargs):
        raise OSError("network access is disabled in nmkit's nnU-Net worker (offline by design)")

    socket.socket.connect = refuse  # type: ignore[method-assign]
    socket.socket.connect_ex = refuse  # type: ignore[method-assign]
    socket.create_connection = refuse  # type: ignore[assignment]


def without_mirroring(trainer) -> None:
    """No mirroring in training augmentation nor at inference (saved in the checkpoint), as nnU-Net's
    ``nnUNetTrainerNoMirroring`` does, on this trainer instance: its class stays ``nnUNetTrainer``."""
    configure = trainer.configure_rotation_dummyDA_mirroring_and_inital_patch_size

    def no_mirroring():
        rotation, dummy_2d, patch_size, _ = configure()
        trainer.inference_allowed_mirroring_axes = None
        return rotation, dummy_2d, patch_size, None

    trainer.configure_rotation_dummyDA_mirroring_and_inital_patch_size = no_mirroring


def run(spec: dict) -> None:
    """Fingerprint, plan, preprocess, write the split, train; the spec names folders, dataset id and options."""
    os.environ["nnUNet_raw"] = spec["raw"]
    os.environ["nnUNet_preprocessed"] = spec["preprocessed"]
    os.environ["nnUNet_results"] = spec["results"]
    os.environ["nnUNet_n_proc_DA"] = str(max(1, int(spec.get("threads") or 1)))  # the planner sets torch threads from it
    os.environ.setdefault("nnUNet_compile", "false")
    import torch

    if spec.get("threads"):
        torch.set_num_threads(int(spec["threads"]))
    torch.manual_seed(int(spec.get("seed", 1)))
    from nnunetv2.experiment_planning.plan_and_preprocess_api import extract_fingerprints, plan_experiments, preprocess
    from nnunetv2.run.run_training import get_trainer_from_args

    dataset_id = int(spec["dataset_id"])
    configuration = spec["configuration"]
    extract_fingerprints([dataset_id], num_processes=1, check_dataset_integrity=True, verbose=False, show_progress_bar=False)
    plans = plan_experiments([dataset_id]) or "nnUNetPlans"
    preprocess([dataset_id], plans, configurations=(configuration,), num_processes=(1,), verbose=False, show_progress_bar=False)
    pre_dir = Path(spec["preprocessed"]) / spec["dataset_name"]
    (pre_dir / "splits_final.json").write_text(json.dumps(spec["splits"], indent=1))
    os.environ["nnUNet_n_proc_DA"] = str(int(spec.get("workers", 0)))  # 0: augmentation in this process (small runs)
    for fold in spec["folds"]:
        trainer = get_trainer_from_args(str(dataset_id), configuration, int(fold), "nnUNetTrainer", plans,
                                        device=torch.device(spec.get("device", "cpu")))
        if spec.get("mirroring") is False:
            without_mirroring(trainer)
        trainer.num_epochs = int(spec["epochs"])
        trainer.num_iterations_per_epoch = int(spec["iterations"])
        trainer.num_val_iterations_per_epoch = int(spec["val_iterations"])
        trainer.run_training()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    block_network()
    run(json.loads(Path(argv[0]).read_text()))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""nmkit.generate: denoising diffusion models for synthetic 2D images, pre-training and memorisation audit.

Modules (torch/MONAI are imported only by ``model``, ``pretrain`` and ``audit.DiffusionFeatures``):

* ``transforms`` - count-aware mapping to model space (Anscombe, unbiased inverse) and Poisson resampling;
* ``data``       - training images from a folder / manifest / thyroid phantoms, conditioning label maps;
* ``model``      - ``DiffusionConfig``, training (DDPM), DDPM/DDIM sampling, safetensors+JSON checkpoints;
* ``writers``    - synthetic images as DICOM Secondary Capture / NIfTI / PNG, clearly marked SYNTHETIC;
* ``pretrain``   - ``DiffusionSegNet`` and ``init_from_diffusion`` (encoder transfer), fine-tuning, learning curve;
* ``audit``      - nearest-neighbour distances, memorised-copy flags, Fréchet distance, HTML report.

CLI: ``nmkit synth train|sample|audit``.
"""

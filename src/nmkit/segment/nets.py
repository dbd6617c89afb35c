"""Segmentation networks selectable by name (MONAI nets plus a compact HRNet written here).

Names: ``unet``, ``attention-unet``, ``unetr``, ``swin-unetr``, ``hrnet``, ``diffusion-unet``. Each takes 2D or 3D
input; transformer nets need a fixed input size (``img_size``) that is a multiple of their patch grid.
``diffusion-unet`` (:class:`DiffusionSegNet`) has a denoising UNet's layout so that
``nmkit.generate.pretrain.init_from_diffusion`` can copy a diffusion model's encoder into it.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

from .names import NETWORK_NAMES  # the registry of names (torch-free, so the CLI can offer them as choices)


def _conv(dims: int):
    return nn.Conv2d if dims == 2 else nn.Conv3d


def _norm(dims: int):
    return nn.InstanceNorm2d if dims == 2 else nn.InstanceNorm3d


class _ConvBlock(nn.Module):
    """conv-norm-act twice, with a residual connection (the HRNet basic block)."""

    def __init__(self, dims: int, channels: int):
        super().__init__()
        conv, norm = _conv(dims), _norm(dims)
        self.body = nn.Sequential(
            conv(channels, channels, 3, padding=1, bias=False), norm(channels, affine=True), nn.LeakyReLU(0.01, inplace=True),
            conv(channels, channels, 3, padding=1, bias=False), norm(channels, affine=True),
        )
        self.act = nn.LeakyReLU(0.01, inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(x + self.body(x))


class HRNet(nn.Module):
    """A compact high-resolution network (HRNet-style) for 2D/3D segmentation.

    Parallel branches at full, 1/2, 1/4 (and 1/8) resolution are kept throughout; after each stage every
    branch receives the sum of all branches resampled to its resolution (the HRNet "exchange unit"),
    so fine boundaries survive while context flows from the coarse branches. The head concatenates all
    branches upsampled to full resolution. Input sizes must be divisible by 2**(branches-1).
    """

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, width: int = 16, branches: int = 3,
                 stages: int = 3, blocks_per_stage: int = 2):
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError("spatial_dims must be 2 or 3")
        self.dims = spatial_dims
        conv, norm = _conv(spatial_dims), _norm(spatial_dims)
        self.widths = [width * 2**i for i in range(branches)]
        self.stem = nn.Sequential(conv(in_channels, width, 3, padding=1, bias=False), norm(width, affine=True), nn.LeakyReLU(0.01, inplace=True))
        self.down = nn.ModuleList()  # branch i from branch i-1 at the start
        for i in range(1, branches):
            self.down.append(nn.Sequential(conv(self.widths[i - 1], self.widths[i], 3, stride=2, padding=1, bias=False),
                                           norm(self.widths[i], affine=True), nn.LeakyReLU(0.01, inplace=True)))
        self.stages = nn.ModuleList()
        self.fuse = nn.ModuleList()
        for _ in range(stages):
            self.stages.append(nn.ModuleList([nn.Sequential(*[_ConvBlock(spatial_dims, w) for _ in range(blocks_per_stage)]) for w in self.widths]))
            # 1x1 projections from branch j to branch i widths
            self.fuse.append(nn.ModuleList([nn.ModuleList([conv(self.widths[j], self.widths[i], 1, bias=False) if i != j else nn.Identity()
                                                           for j in range(branches)]) for i in range(branches)]))
        self.head = nn.Sequential(conv(sum(self.widths), width, 3, padding=1, bias=False), norm(width, affine=True),
                                  nn.LeakyReLU(0.01, inplace=True), conv(width, out_channels, 1))

    def _resize(self, x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
        mode = "bilinear" if self.dims == 2 else "trilinear"
        if tuple(x.shape[2:]) == tuple(size):
            return x
        return nn.functional.interpolate(x, size=tuple(size), mode=mode, align_corners=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = [self.stem(x)]
        for down in self.down:
            feats.append(down(feats[-1]))
        for stage, fuse in zip(self.stages, self.fuse):
            feats = [blocks(f) for blocks, f in zip(stage, feats)]
            fused = []
            for i, projections in enumerate(fuse):
                size = feats[i].shape[2:]
                fused.append(torch.relu(sum(self._resize(p(f), size) for p, f in zip(projections, feats))))
            feats = fused
        size = feats[0].shape[2:]
        return self.head(torch.cat([self._resize(f, size) for f in feats], dim=1))


class GlobalContext(nn.Module):
    """Wraps a U-Net's bottom block and adds image-wide context: per-channel mean and maximum over the whole image.

    Readers threshold relative to the brightest structure in the neck (a fraction of its peak); a convolution
    sees only its receptive field, so the bottleneck gets the pooled statistics, mixed by a small MLP and added
    back at every position. The last layer starts at zero, so the wrapped net begins as the plain U-Net.
    """

    def __init__(self, block: nn.Module, channels: int):
        super().__init__()
        self.block = block
        self.mix = nn.Sequential(nn.Linear(2 * channels, channels), nn.ReLU(inplace=True), nn.Linear(channels, channels))
        nn.init.zeros_(self.mix[2].weight)
        nn.init.zeros_(self.mix[2].bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.block(x)
        flat = y.flatten(2)
        context = self.mix(torch.cat([flat.mean(-1), flat.amax(-1)], dim=1))
        return y + context.view(*context.shape, *([1] * (y.dim() - 2)))


class DiffusionSegNet(nn.Module):
    """Segmentation network with the layout of a DiffusionModelUNet (called at timestep 0).

    Input: an image normalised to about [0, 1] (``nmkit.segment.preprocess.normalise``); it is mapped to
    [-1, 1] internally, the range the diffusion model was trained on. Output: class logits.
    """

    def __init__(self, spatial_dims: int = 2, in_channels: int = 1, out_channels: int = 2, channels: Sequence[int] = (32, 64, 64),
                 attention_levels: Sequence[bool] | None = None, num_res_blocks: int = 1, norm_num_groups: int = 8):
        super().__init__()
        from monai.networks.nets import DiffusionModelUNet

        self.unet = DiffusionModelUNet(spatial_dims=spatial_dims, in_channels=in_channels, out_channels=out_channels,
                                       channels=tuple(channels), attention_levels=tuple(attention_levels or (False,) * len(channels)), num_res_blocks=num_res_blocks,
                                       norm_num_groups=norm_num_groups, num_head_channels=channels[-1])
        self.divisor = 2 ** (len(channels) - 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
        return self.unet(2.0 * x - 1.0, timesteps=t)


def _global_context_unet() -> type:
    """MONAI's UNet whose bottom block is wrapped in :class:`GlobalContext` (same layout and parameter names + ``mix``)."""
    from monai.networks import nets

    class GlobalContextUNet(nets.UNet):
        def _get_bottom_layer(self, in_channels: int, out_channels: int) -> nn.Module:
            return GlobalContext(super()._get_bottom_layer(in_channels, out_channels), out_channels)

    return GlobalContextUNet


def build_network(name: str, spatial_dims: int, in_channels: int = 1, out_channels: int = 2,
                  img_size: Sequence[int] | None = None, **options: Any) -> nn.Module:
    """Instantiate a segmentation network by name with sensible small defaults (overridable by options)."""
    from monai.networks import nets

    name = name.lower()
    if name == "unet":
        channels = options.pop("channels", (16, 32, 64, 128, 256))
        strides = options.pop("strides", (2,) * (len(channels) - 1))
        cls = _global_context_unet() if options.pop("global_context", False) else nets.UNet
        return cls(spatial_dims, in_channels, out_channels, channels=channels, strides=strides,
                   num_res_units=options.pop("num_res_units", 2), **options)
    if name == "attention-unet":
        channels = options.pop("channels", (16, 32, 64, 128))
        strides = options.pop("strides", (2,) * (len(channels) - 1))
        return nets.AttentionUnet(spatial_dims, in_channels, out_channels, channels=channels, strides=strides, **options)
    if name in ("unetr", "swin-unetr"):
        if img_size is None:
            raise ValueError(f"{name} needs img_size (the fixed training patch size)")
        if name == "unetr":
            return nets.UNETR(in_channels, out_channels, img_size=tuple(img_size), spatial_dims=spatial_dims,
                              feature_size=options.pop("feature_size", 16), hidden_size=options.pop("hidden_size", 192),
                              mlp_dim=options.pop("mlp_dim", 384), num_heads=options.pop("num_heads", 6), **options)
        return nets.SwinUNETR(in_channels, out_channels, spatial_dims=spatial_dims, feature_size=options.pop("feature_size", 12),
                              depths=options.pop("depths", (2, 2, 2, 2)), num_heads=options.pop("num_heads", (3, 6, 12, 24)), **options)
    if name == "hrnet":
        return HRNet(spatial_dims, in_channels, out_channels, **options)
    if name == "diffusion-unet":  # a denoising UNet's layout, so a diffusion model's encoder can initialise it
        return DiffusionSegNet(spatial_dims, in_channels, out_channels, **options)
    raise ValueError(f"unknown network {name!r}; choose one of {', '.join(NETWORK_NAMES)}")


def required_divisor(name: str, options: dict[str, Any] | None = None) -> int:
    """Input sizes must be divisible by this number for the named network."""
    options = options or {}
    name = name.lower()
    if name in ("unet", "attention-unet"):
        default = (16, 32, 64, 128, 256) if name == "unet" else (16, 32, 64, 128)
        return 2 ** (len(options.get("channels", default)) - 1)
    if name == "unetr":
        return 16
    if name == "swin-unetr":
        return 32
    if name == "hrnet":
        return 2 ** (options.get("branches", 3) - 1)
    if name == "diffusion-unet":
        return 2 ** (len(options.get("channels", (32, 64, 64))) - 1)
    raise ValueError(f"unknown network {name!r}")


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def width_options(name: str, width: int) -> dict[str, Any]:
    """Network options giving base width ``width`` (channels of the first level; deeper levels double it): the
    ``--width`` of ``nmkit train``. UNETR/SwinUNETR take it as ``feature_size`` (SwinUNETR: a multiple of 12)."""
    if width < 1:
        raise ValueError(f"width must be at least 1; got {width}")
    name = name.lower()
    if name == "unet":
        return {"channels": tuple(width * 2**i for i in range(5))}
    if name == "attention-unet":
        return {"channels": tuple(width * 2**i for i in range(4))}
    if name == "hrnet":
        return {"width": width}
    if name == "unetr":
        return {"feature_size": width}
    if name == "swin-unetr":
        if width % 12:
            raise ValueError(f"swin-unetr needs a width that is a multiple of 12; got {width}")
        return {"feature_size": width}
    if name == "diffusion-unet":
        return {"channels": (width, 2 * width, 2 * width)}
    raise ValueError(f"unknown network {name!r}")

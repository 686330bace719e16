"""Isaac's image preprocessing (isaac_spec.md §3), bit-exact with Perceptron's processor.

Per image: convert to RGB (alpha dropped, not composited), refuse more than 60 MP, choose the target size
(each side rounded up to a multiple of patch*merge; upscale only to reach `min_num_patches`, binary-search
downscale to at most `max_num_patches`), resize the uint8 image with bilinear interpolation and no antialias,
scale by 1/255, normalise with mean/std 0.5, and cut 16x16 patches whose vectors are ordered
(row-in-patch, col-in-patch, channel).
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F
from transformers.feature_extraction_utils import BatchFeature
from transformers.image_processing_utils import BaseImageProcessor

from .limits import MAX_PIXELS

ImageLike = PIL.Image.Image | np.ndarray | torch.Tensor | bytes


class ImageError(ValueError):
    """An input that cannot be turned into an image; the message says which and why."""


def target_size(
    height: int, width: int, patch_size: int, max_num_patches: int, min_num_patches: int | None, merge: int,
    eps: float = 1e-5,
) -> tuple[int, int]:
    """Isaac's resize rule (Perceptron's `get_image_size_for_max_num_patches`, same float arithmetic)."""
    divisor = patch_size * merge

    def scaled(scale: float, size: int) -> int:
        return int(max(divisor, math.ceil(scale * size / divisor) * divisor))

    h, w = scaled(1.0, height), scaled(1.0, width)
    patches = (h / patch_size) * (w / patch_size)
    if min_num_patches is not None and patches < min_num_patches:
        lo, hi = 1.0, 100.0
        while hi - lo >= eps:
            mid = (lo + hi) / 2
            if (scaled(mid, height) / patch_size) * (scaled(mid, width) / patch_size) >= min_num_patches:
                hi = mid
            else:
                lo = mid
        return scaled(hi, height), scaled(hi, width)
    if patches <= max_num_patches:
        return h, w
    lo, hi = eps / 10, 1.0
    while hi - lo >= eps:
        mid = (lo + hi) / 2
        if (scaled(mid, height) / patch_size) * (scaled(mid, width) / patch_size) <= max_num_patches:
            lo = mid
        else:
            hi = mid
    return scaled(lo, height), scaled(lo, width)


def to_rgb_uint8(image: ImageLike) -> torch.Tensor:
    """Any supported image input -> uint8 tensor (H, W, 3). Raises ImageError with the reason."""
    if isinstance(image, (bytes, bytearray)):
        try:
            image = PIL.Image.open(io.BytesIO(image))
            image.load()
        except Exception as err:  # PIL raises several types for truncated / non-image bytes
            raise ImageError(f"cannot decode image bytes ({type(err).__name__}: {err})") from err
    if isinstance(image, PIL.Image.Image):
        w, h = image.size
        _check_size(h, w)
        rgb = image if image.mode == "RGB" else image.convert("RGB")
        return torch.from_numpy(np.array(rgb, dtype=np.uint8))
    if isinstance(image, np.ndarray):
        image = torch.from_numpy(np.ascontiguousarray(image))
    if isinstance(image, torch.Tensor):
        return _tensor_to_rgb_uint8(image)
    raise ImageError(f"unsupported image type {type(image).__name__}; pass a PIL image, numpy array, tensor or bytes")


def _check_size(h: int, w: int) -> None:
    if h <= 0 or w <= 0:
        raise ImageError(f"image has zero size ({h}x{w})")
    if h * w > MAX_PIXELS:
        raise ImageError(f"image of {w}x{h} = {w * h:,} pixels is over Isaac's limit of {MAX_PIXELS:,}")


def _tensor_to_rgb_uint8(t: torch.Tensor) -> torch.Tensor:
    """(H, W), (H, W, C) or (C, H, W) with C in {1, 3, 4}; uint8, or float in [0, 1]."""
    if t.ndim == 2:
        t = t[..., None]
    if t.ndim != 3:
        raise ImageError(f"image tensor must have 2 or 3 dims, got shape {tuple(t.shape)}")
    if t.shape[-1] not in (1, 3, 4) and t.shape[0] in (1, 3, 4):
        t = t.permute(1, 2, 0)  # CHW -> HWC
    if t.shape[-1] not in (1, 3, 4):
        raise ImageError(f"cannot tell the channel axis of image shape {tuple(t.shape)}; use HWC or CHW")
    _check_size(t.shape[0], t.shape[1])
    if t.dtype.is_floating_point:
        if t.numel() and (t.min() < 0 or t.max() > 1):
            raise ImageError("float image tensors must hold values in [0, 1]; pass uint8 for 0-255 values")
        t = (t * 255).round().to(torch.uint8)
    elif t.dtype != torch.uint8:
        raise ImageError(f"image tensors must be uint8 or float, got {t.dtype}")
    if t.shape[-1] == 1:
        t = t.expand(-1, -1, 3)
    return t[..., :3].contiguous()


def resize_uint8(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(H, W, 3) uint8 -> (h, w, 3) uint8: bilinear, align_corners=False, no antialias, torch's uint8 rounding."""
    if tuple(image.shape[:2]) == tuple(size):
        return image  # same size: bilinear with align_corners=False is the identity
    chw = image.permute(2, 0, 1)[None]
    out = F.interpolate(chw, size=size, mode="bilinear", align_corners=False)
    return out[0].permute(1, 2, 0)


def patchify_uint8(image: torch.Tensor, patch_size: int) -> torch.Tensor:
    """(H, W, 3) uint8 -> (H/p * W/p, p*p*3) uint8 patches, (py, px, c) order, rows of patches row-major."""
    h, w, c = image.shape
    p = patch_size
    return image.reshape(h // p, p, w // p, p, c).permute(0, 2, 1, 3, 4).reshape((h // p) * (w // p), p * p * c)


def normalize_patches(
    patches: torch.Tensor, scale: float, mean: Sequence[float], std: Sequence[float]
) -> torch.Tensor:
    """uint8 patches (N, p*p*3), channel fastest -> float32 ((x * scale - mean) / std per channel).

    The same float32 operations as Perceptron's processor (multiply by scale, not divide): bit-exact. The model
    runs this too when it receives uint8 patches (the training loader ships patches as uint8: 4x fewer bytes
    through worker queues and host-to-device copies, and the arithmetic moves to the accelerator).
    """
    channels = len(mean)
    reps = patches.shape[-1] // channels
    x = patches.float().mul_(scale)
    x.sub_(torch.tensor(mean, dtype=torch.float32, device=x.device).repeat(reps))
    x.div_(torch.tensor(std, dtype=torch.float32, device=x.device).repeat(reps))
    return x


def normalize_and_patchify(
    image: torch.Tensor, patch_size: int, scale: float, mean: Sequence[float], std: Sequence[float]
) -> torch.Tensor:
    """(H, W, 3) uint8 -> (H/p * W/p, p*p*3) float32 normalised patches (cut on uint8, then normalised)."""
    return normalize_patches(patchify_uint8(image, patch_size), scale, mean, std)


class IsaacImageProcessorFast(BaseImageProcessor):
    """Images -> packed patches and grids for Isaac's vision tower.

    `__call__(images)` returns `pixel_values` (sum_i H_i*W_i, 3*p*p) float32 and `image_grid_hw` (n, 2) long
    (real patch grids; each image gives (H_i/merge)*(W_i/merge) decoder tokens).
    """

    model_input_names = ["pixel_values", "image_grid_hw"]

    def __init__(
        self,
        patch_size: int = 16,
        pixel_shuffle_scale: int = 2,
        max_num_patches: int = 6144,
        min_num_patches: int | None = 256,
        rescale_factor: float = 1 / 255,
        image_mean: Sequence[float] = (0.5, 0.5, 0.5),
        image_std: Sequence[float] = (0.5, 0.5, 0.5),
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.patch_size = patch_size
        self.pixel_shuffle_scale = pixel_shuffle_scale
        self.max_num_patches = max_num_patches
        self.min_num_patches = min_num_patches
        self.rescale_factor = rescale_factor
        self.image_mean = list(image_mean)
        self.image_std = list(image_std)
        if max_num_patches < (pixel_shuffle_scale**2):
            raise ValueError(f"max_num_patches={max_num_patches} is below one merged token ({pixel_shuffle_scale**2})")

    @classmethod
    def from_isaac_config(cls, config: Any) -> IsaacImageProcessorFast:
        """Build from an IsaacConfig (or a dict with Perceptron's field names)."""
        get = config.get if isinstance(config, dict) else lambda k, d=None: getattr(config, k, d)
        return cls(
            patch_size=get("video_patch_size", get("vision_patch_size", 16)),
            pixel_shuffle_scale=get("pixel_shuffle_scale", 1),
            max_num_patches=get("vision_max_num_patches", 256),
            min_num_patches=get("vision_min_num_patches"),
            rescale_factor=get("vision_rescale_factor", 1 / 255),
            image_mean=get("vision_mean", (0.5, 0.5, 0.5)),
            image_std=get("vision_std", (0.5, 0.5, 0.5)),
        )

    def target_size(self, height: int, width: int) -> tuple[int, int]:
        return target_size(height, width, self.patch_size, self.max_num_patches, self.min_num_patches,
                           self.pixel_shuffle_scale)

    def process_one(self, image: ImageLike, normalize: bool = True) -> tuple[torch.Tensor, tuple[int, int]]:
        """One image -> (patches (H*W, 3*p*p), real grid (H, W)); uint8 patches when `normalize` is False
        (`normalize_patches`, or the model, finishes them)."""
        rgb = to_rgb_uint8(image)
        th, tw = self.target_size(rgb.shape[0], rgb.shape[1])
        patches = patchify_uint8(resize_uint8(rgb, (th, tw)), self.patch_size)
        if normalize:
            patches = normalize_patches(patches, self.rescale_factor, self.image_mean, self.image_std)
        return patches, (th // self.patch_size, tw // self.patch_size)

    def preprocess(self, images: ImageLike | Sequence[ImageLike], return_tensors: Any = None, **_: Any) -> BatchFeature:
        if not isinstance(images, (list, tuple)):
            images = [images]
        processed = [self.process_one(image) for image in images]
        if not processed:
            return BatchFeature({"pixel_values": torch.zeros(0, 3 * self.patch_size**2),
                                 "image_grid_hw": torch.zeros(0, 2, dtype=torch.long)})
        return BatchFeature({
            "pixel_values": torch.cat([p for p, _ in processed]),
            "image_grid_hw": torch.tensor([g for _, g in processed], dtype=torch.long),
        })

    def num_decoder_tokens(self, grid: tuple[int, int]) -> int:
        return (grid[0] // self.pixel_shuffle_scale) * (grid[1] // self.pixel_shuffle_scale)

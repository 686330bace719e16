"""Deterministic test images for the processor goldens (``reference_processor/``).

Only numpy + PIL; no dependency on the reference code or on isaac_train, so both the golden generator
(reference environment) and our tests (isaac_train environment) rebuild exactly the same images.

Names say what an image tests; sizes in names are ``H x W`` (PIL's ``size`` is ``(W, H)``).  Pixels are smooth
gradients plus a hash-based noise field (pure integer arithmetic on uint32, so the bytes do not depend on the
numpy random-number stream of any numpy version); a few images also get a red disc.  ``golden.json`` stores the
sha256 of every image's bytes, so a test can check that it rebuilt the same images.
"""

from __future__ import annotations

import numpy as np
import PIL.Image

# name -> (H, W, mode, seed)
SPECS: dict[str, tuple[int, int, str, int]] = {
    "tiny_1x1": (1, 1, "RGB", 1),
    "tiny_5x7": (5, 7, "RGB", 2),
    "small_100x100": (100, 100, "RGB", 3),
    "sq_224": (224, 224, "RGB", 4),
    "photo_480x640": (480, 640, "RGB", 5),
    "hd_1080x1920": (1080, 1920, "RGB", 6),
    "big_2048x2048": (2048, 2048, "RGB", 7),
    "huge_3000x4000": (3000, 4000, "RGB", 8),
    "wide_32x1000": (32, 1000, "RGB", 9),
    "wide_20x3000": (20, 3000, "RGB", 10),
    "tall_1000x32": (1000, 32, "RGB", 11),
    "tall_4000x50": (4000, 50, "RGB", 12),
    "gray_L_300x200": (300, 200, "L", 13),
    "rgba_256x300": (256, 300, "RGBA", 14),
    "palette_P_150x150": (150, 150, "P", 15),
    "cmyk_120x90": (120, 90, "CMYK", 16),
    "la_64x48": (64, 48, "LA", 17),
}

_M1 = np.uint32(0x9E3779B1)
_M2 = np.uint32(0x85EBCA77)
_M3 = np.uint32(0xC2B2AE3D)


def _hash2d(h: int, w: int, seed: int) -> np.ndarray:
    """(h, w) uint32 well-mixed hash of (row, col, seed); integer ops only (wrap-around mod 2**32)."""
    rows = np.arange(h, dtype=np.uint32) * _M1 + np.uint32((seed * 0x27D4EB2F) & 0xFFFFFFFF)
    cols = np.arange(w, dtype=np.uint32) * _M2 + np.uint32((seed * 7 + 3) & 0xFFFFFFFF)
    x = rows[:, None] ^ cols[None, :]
    x ^= x >> np.uint32(15)
    x *= _M3
    x ^= x >> np.uint32(13)
    x *= _M1
    x ^= x >> np.uint32(16)
    return x


def _ramp(n: int, top: int, reverse: bool = False) -> np.ndarray:
    """uint8 ramp 0..top (inclusive) over n samples."""
    v = (np.arange(n, dtype=np.uint32) * np.uint32(top)) // np.uint32(max(n - 1, 1))
    v = v.astype(np.uint8)
    return v[::-1].copy() if reverse else v


def _pack4(planes: list[np.ndarray]) -> np.ndarray:
    """Pack 4 uint8 vectors into one uint32 vector, plane c in byte c (little-endian order)."""
    v = np.zeros(planes[0].shape, dtype=np.uint32)
    for c, p in enumerate(planes):
        v |= p.astype(np.uint32) << np.uint32(8 * c)
    return v


def _planes4(h: int, w: int, seed: int) -> np.ndarray:
    """(h, w, 4) uint8: per plane a different diagonal gradient (<= 223) plus hash noise in [0, 32).

    Computed on packed uint32 words (one word per pixel, plane c = byte c): no byte exceeds 254, so adding the
    packed words never carries between planes and equals the per-plane uint8 sum.  This keeps the 12-MPixel
    images well under a second.
    """
    noise = _hash2d(h, w, seed) & np.uint32(0x1F1F1F1F)
    gy = _pack4([_ramp(h, 111, reverse=bool(c & 1)) for c in range(4)])  # (h,)
    gx = _pack4([_ramp(w, 112, reverse=bool(c & 2)) for c in range(4)])  # (w,)
    noise += gy[:, None]
    noise += gx[None, :]
    # byte c of each word is plane c, independent of the machine's byte order
    return noise.astype("<u4", copy=False).view(np.uint8).reshape(h, w, 4)


def _planes(h: int, w: int, seed: int, nplanes: int) -> np.ndarray:
    """(h, w, nplanes) uint8, contiguous; the first nplanes planes of _planes4."""
    return np.ascontiguousarray(_planes4(h, w, seed)[:, :, :nplanes])


def _red_disc(arr: np.ndarray, cy: int, cx: int, r: int) -> None:
    """Paint a pure-red disc in place (only the bounding box is touched)."""
    h, w = arr.shape[:2]
    y0, y1, x0, x1 = max(cy - r, 0), min(cy + r + 1, h), max(cx - r, 0), min(cx + r + 1, w)
    yy = np.arange(y0, y1)[:, None] - cy
    xx = np.arange(x0, x1)[None, :] - cx
    m = yy * yy + xx * xx <= r * r
    arr[y0:y1, x0:x1][m] = (230, 20, 20)


def make_image(name: str) -> PIL.Image.Image:
    h, w, mode, seed = SPECS[name]
    if mode == "RGB":
        a = _planes4(h, w, seed)  # 4th plane is ignored ("RGBX" raw mode): avoids a slow strided copy
        if min(h, w) >= 64:
            _red_disc(a[:, :, :3], h * 2 // 3, w // 3, min(h, w) // 6)
        return PIL.Image.frombytes("RGB", (w, h), a.tobytes(), "raw", "RGBX")
    if mode == "L":
        return PIL.Image.fromarray(np.ascontiguousarray(_planes(h, w, seed, 1)[:, :, 0]))
    if mode == "RGBA":
        a = _planes(h, w, seed, 4)
        _red_disc(a[:, :, :3], h // 2, w // 2, min(h, w) // 5)
        # alpha: full range, horizontal ramp with noise, so an alpha-compositing conversion would be visible
        a[:, :, 3] = (_ramp(w, 223)[None, :] + (a[:, :, 3] & np.uint8(31))).astype(np.uint8)
        bands = [PIL.Image.fromarray(np.ascontiguousarray(a[:, :, c])) for c in range(4)]
        return PIL.Image.merge("RGBA", bands)
    if mode == "LA":
        a = _planes(h, w, seed, 2)
        a[:, :, 1] = (_ramp(h, 223)[:, None] + (a[:, :, 1] & np.uint8(31))).astype(np.uint8)
        bands = [PIL.Image.fromarray(np.ascontiguousarray(a[:, :, c])) for c in range(2)]
        return PIL.Image.merge("LA", bands)
    if mode == "P":
        idx = np.ascontiguousarray(_planes(h, w, seed, 1)[:, :, 0])  # indices 0..254
        im = PIL.Image.fromarray(idx)  # mode "L"
        k = np.arange(256, dtype=np.uint32)
        pal = np.stack([(k * 37 + 11) % 256, (k * 101 + 60) % 256, (255 - k) % 256], axis=1).astype(np.uint8)
        im.putpalette(pal.reshape(-1).tobytes())  # L + palette -> mode "P"
        return im
    if mode == "CMYK":
        a = _planes(h, w, seed, 4)
        a[:, :, 3] //= 2  # keep K moderate so that the image is not mostly black
        return PIL.Image.frombytes("CMYK", (w, h), np.ascontiguousarray(a).tobytes())
    raise ValueError(mode)


def golden_images() -> dict[str, PIL.Image.Image]:
    """All golden images, in a fixed order, keyed by name."""
    return {name: make_image(name) for name in SPECS}


if __name__ == "__main__":  # quick look: sizes, modes and build times
    import hashlib
    import time

    for name in SPECS:
        t0 = time.perf_counter()
        im = make_image(name)
        dt = time.perf_counter() - t0
        sha = hashlib.sha256(im.tobytes()).hexdigest()[:16]
        print(f"{name:20s} mode={im.mode:5s} size(WxH)={im.size} {dt * 1e3:7.1f} ms sha={sha}")

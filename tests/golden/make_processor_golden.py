"""Generate golden outputs of Perceptron's reference Isaac PROCESSOR (IsaacProcessor in modular_isaac.py).

Run with the reference environment (transformers 4.57.3 + perceptron 0.4.0, see README.md), NOT with the
isaac_train environment:

    /tmp/refenv/bin/python tests/golden/make_processor_golden.py \
        --reference-dir /path/to/folder/with/modular_isaac.py --out tests/golden/reference_processor

Nothing from the reference is copied here; the reference module is imported at run time from --reference-dir
and run unchanged (no patch is needed: the processor path is pure torch/PIL on CPU).  The only instrumentation is
a pass-through wrapper around the reference's module-level ``prepare_image_tensor`` that records its input (the
resized uint8 image), so that a mismatch can be localised to resize vs normalise.

Inputs: the images of ``golden_images.py`` (next to this script) and the tiny tokenizer already in
``<out>/tokenizer/`` (read only).  Outputs: ``<out>/golden.safetensors`` and ``<out>/golden.json``.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import itertools
import json
import math
import platform
import sys
from pathlib import Path

import numpy as np
import PIL
import PIL.Image
import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from golden_images import SPECS as IMAGE_SPECS  # noqa: E402
from golden_images import golden_images  # noqa: E402

DEFAULT_COMMIT = "122a710fff6cb65b99030951f19dcbfe05e7aca6"
PATCH = 16
SHUFFLE = 2
FULL_LIMIT_BYTES = 300_000  # store full float32 patches only below this size
EOS, PAD = "<|im_end|>", "<|endoftext|>"

CONFIGS = {
    "real": {"vision_max_num_patches": 6144, "vision_min_num_patches": 256, "max_sequence_length": 16384},
    "tiny": {"vision_max_num_patches": 256, "vision_min_num_patches": 16, "max_sequence_length": 4096},
}

# spec §3 worked examples (real config): input H x W -> target H x W, grid, ViT tokens, LLM tokens
SPEC_TABLE = [
    ((480, 640), (480, 640), (30, 40), 1200, 300),
    ((224, 224), (256, 256), (16, 16), 256, 64),
    ((100, 100), (256, 256), (16, 16), 256, 64),
    ((32, 1000), (64, 1024), (4, 64), 256, 64),
    ((1080, 1920), (928, 1664), (58, 104), 6032, 1508),
    ((2048, 2048), (1248, 1248), (78, 78), 6084, 1521),
    ((3000, 4000), (1088, 1440), (68, 90), 6120, 1530),
]

TRUNC_SENTENCE = " The small red circle sits left of the blue square."
LONG_SENTENCE = (
    " Look closely at every part of the picture, from the top left corner to the bottom right corner,"
    " and then tell me plainly"
)

# name -> (text, image names, config name, overrides of the config, description)
PROMPTS = {
    "p_text": (
        "<|im_start|>user\nWhat colour is the shape?<|im_end|>\n<|im_start|>assistant\n",
        [],
        "tiny",
        {},
        "text only, no image",
    ),
    "p_one": (
        "<|im_start|>user\n<image>Describe the picture.<|im_end|>\n<|im_start|>assistant\n",
        ["photo_480x640"],
        "tiny",
        {},
        "one image inside a user turn",
    ),
    "p_multi": (
        "<|im_start|>user\n<hint>BOX</hint><|im_end|>\n<|im_start|>user\n<image><|im_end|>\n"
        "<|im_start|>user\n<image><image>Where is the red circle?<|im_end|>\n<|im_start|>assistant\n",
        ["wide_32x1000", "tall_1000x32", "rgba_256x300"],
        "tiny",
        {},
        "Perceptron demo style (one user message per item), two adjacent images (empty text piece between)",
    ),
    "p_multi_real": (
        "<|im_start|>user\n<hint>BOX</hint><|im_end|>\n<|im_start|>user\n<image><|im_end|>\n"
        "<|im_start|>user\n<image><image>Where is the red circle?<|im_end|>\n<|im_start|>assistant\n",
        ["wide_32x1000", "tall_1000x32", "rgba_256x300"],
        "real",
        {},
        "p_multi with Isaac's real processor settings",
    ),
    "p_trunc": (
        "<|im_start|>user\n<image>" + TRUNC_SENTENCE + "<image>what?<|im_end|>\n<|im_start|>assistant\n",
        ["sq_224", "small_100x100"],
        "tiny",
        {"max_sequence_length": 48},
        "left truncation to 48 tokens cuts THROUGH the first image",
    ),
    "p_trunc_text": (
        "<|im_start|>user\n" + LONG_SENTENCE + "<image>what?<|im_end|>\n<|im_start|>assistant\n",
        ["small_100x100"],
        "tiny",
        {"max_sequence_length": 48},
        "extra: left truncation to 48 tokens cuts through a TEXT piece (t of the kept text does not restart at 0)",
    ),
    "p_edge": (
        "<image><image>x<image>",
        ["tiny_5x7", "tiny_1x1", "la_64x48"],
        "tiny",
        {},
        "text starts and ends with <image>, empty text piece between two images, one-character text piece",
    ),
}


def sha256_bytes(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def sha256_tensor(t: torch.Tensor) -> str:
    return sha256_bytes(t.contiguous().numpy().tobytes())


def sample_rows(n: int) -> list[int]:
    return [0, 1, n // 2, n - 1]


# ----------------------------------------------------------------------------------------------------------
# Independent re-derivations (written from the spec, not from the reference code) used as sanity checks.
# ----------------------------------------------------------------------------------------------------------
def spec_target_hw(h: int, w: int, patch: int, max_p: int, min_p: int | None, r: int) -> tuple[int, int]:
    """Spec §3 step 2."""
    d = patch * r

    def up(x: float) -> int:
        return max(d, int(math.ceil(x / d)) * d)

    def count(hh: int, ww: int) -> float:
        return (hh / patch) * (ww / patch)

    def search(lo: float, hi: float, ok_keeps_hi: bool, ok) -> float:
        while hi - lo >= 1e-5:
            mid = (lo + hi) / 2
            if ok(mid) == ok_keeps_hi:
                hi = mid
            else:
                lo = mid
        return hi if ok_keeps_hi else lo

    n = count(up(h), up(w))
    if min_p is not None and n < min_p:
        s = search(1.0, 100.0, True, lambda s: count(up(s * h), up(s * w)) >= min_p)
        return up(s * h), up(s * w)
    if n <= max_p:
        return up(h), up(w)
    # scale down: keep the lower bound while the count fits; spec: "s in [1e-6, 1]"
    s = search(1e-6, 1.0, False, lambda s: count(up(s * h), up(s * w)) <= max_p)
    return up(s * h), up(s * w)


def _muldiv255(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    t = a.astype(np.int64) * b + 128
    return ((t >> 8) + t) >> 8


def spec_rgb(img: PIL.Image.Image) -> np.ndarray:
    """Spec §3 step 1 re-derived per mode: alpha dropped (never composited), gray replicated, palette looked up."""
    a = np.asarray(img)
    if img.mode == "RGB":
        return a
    if img.mode == "RGBA":
        return a[:, :, :3]
    if img.mode == "L":
        return np.repeat(a[:, :, None], 3, axis=2)
    if img.mode == "LA":
        return np.repeat(a[:, :, :1], 3, axis=2)
    if img.mode == "P":
        assert img.palette.mode == "RGB"
        pal = np.array(img.getpalette(), dtype=np.uint8).reshape(-1, 3)
        return pal[a]
    if img.mode == "CMYK":
        # Pillow's cmyk2rgb: nk = 255 - K; out = nk - muldiv255(C, nk) (same for M, Y)
        nk = 255 - a[:, :, 3:4].astype(np.int64)
        return np.clip(nk - _muldiv255(a[:, :, :3], nk), 0, 255).astype(np.uint8)
    raise AssertionError(img.mode)


def spec_resize_u8(rgb: np.ndarray, hw: tuple[int, int]) -> torch.Tensor:
    """Spec §3 step 3: bilinear, align_corners=False, no antialias, on the uint8 NCHW tensor."""
    x = torch.from_numpy(np.array(rgb, dtype=np.uint8, order="C", copy=True)).permute(2, 0, 1)[None]
    x = F.interpolate(x, size=tuple(hw), mode="bilinear", align_corners=False)
    assert x.dtype == torch.uint8
    return x[0].permute(1, 2, 0).contiguous()


def spec_patches_from_u8(u8: torch.Tensor) -> torch.Tensor:
    """Spec §3 steps 4 and 6: x * (1/255) in fp32, (x - 0.5) / 0.5, patch vector order (py, px, c)."""
    H, W, _ = u8.shape
    x = u8.float() * (1.0 / 255.0)
    x = (x - 0.5) / 0.5
    return x.reshape(H // PATCH, PATCH, W // PATCH, PATCH, 3).permute(0, 2, 1, 3, 4).reshape(-1, 3 * PATCH * PATCH)


def spec_positions(events: list[dict]) -> torch.Tensor:
    """Spec §6.5 from the event records (dims_virtual, idx_range)."""
    out, c = [], 0
    for ev in events:
        dims = list(ev["dims_virtual"]) + [1] * (3 - len(ev["dims_virtual"]))
        coords = list(itertools.product(range(c, c + dims[0]), range(dims[1]), range(dims[2])))
        s, e = ev["idx_range"]
        out += coords[s:e]
        c += dims[0]
    return torch.tensor(out, dtype=torch.long).reshape(-1, 3)


def spec_segments(text: str, marker: str = "<image>") -> list[tuple[int, str, str]]:
    """Spec §6.4 steps 2-4: pieces (k, kind, piece) in order; empty text pieces give no event but use an index."""
    pieces = []
    for i, chunk in enumerate(text.split(marker)):
        if i > 0:
            pieces.append(marker)
        pieces.append(chunk)
    return [(k, "image" if p == marker else "text", p) for k, p in enumerate(pieces) if p != ""]


# ----------------------------------------------------------------------------------------------------------
def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reference-dir", required=True, help="folder holding modular_isaac.py")
    ap.add_argument("--reference-commit", default=DEFAULT_COMMIT, help="commit of perceptron-ai-inc/perceptron")
    ap.add_argument("--out", default=str(HERE / "reference_processor"))
    args = ap.parse_args()

    ref_dir = Path(args.reference_dir).resolve()
    ref_file = ref_dir / "modular_isaac.py"
    ref_sha256 = sha256_bytes(ref_file.read_bytes())
    sys.path.insert(0, str(ref_dir))
    mi = importlib.import_module("modular_isaac")
    import perceptron.tensorstream.ops as ts_ops
    import safetensors
    import tokenizers
    import transformers
    from safetensors.torch import save_file
    from transformers import Qwen2TokenizerFast

    out = Path(args.out)
    tok_dir = out / "tokenizer"
    assert (tok_dir / "tokenizer.json").is_file(), f"missing {tok_dir}/tokenizer.json (written by our code)"
    torch.set_grad_enabled(False)
    checks: list[str] = []
    tensors: dict[str, torch.Tensor] = {}

    # -- instrumentation: record the resized uint8 image handed to the reference's normalisation ---------------
    captured: list[torch.Tensor] = []
    orig_prepare = mi.prepare_image_tensor

    def recording_prepare(image, *a, **k):
        captured.append(image.detach().clone())
        return orig_prepare(image, *a, **k)

    mi.prepare_image_tensor = recording_prepare

    # -- tokenizer: the tiny Qwen2-style BPE written by our code (read only) ---------------------------------
    tok = Qwen2TokenizerFast(
        tokenizer_file=str(tok_dir / "tokenizer.json"),
        eos_token=EOS,
        pad_token=PAD,
        bos_token=None,
        unk_token=None,
    )
    assert len(tok) == 512, len(tok)
    assert tok.convert_tokens_to_ids(EOS) == tok.eos_token_id and tok.convert_tokens_to_ids(PAD) == tok.pad_token_id
    tok_files = {p.name: sha256_bytes(p.read_bytes()) for p in sorted(tok_dir.iterdir()) if p.is_file()}
    checks.append(f"tokenizer loaded with Qwen2TokenizerFast(tokenizer_file=...): {len(tok)} tokens")

    def make_config(cname: str, **over):
        kw = dict(CONFIGS[cname], **over)
        return mi.IsaacConfig(vision_patch_size=PATCH, pixel_shuffle_scale=SHUFFLE, **kw)

    # -- spec §3 worked examples (real config) ---------------------------------------------------------------
    rc = CONFIGS["real"]
    for (h, w), thw, grid, vit, llm in SPEC_TABLE:
        ref_hw = tuple(
            mi.get_image_size_for_max_num_patches(
                h,
                w,
                PATCH,
                rc["vision_max_num_patches"],
                min_num_patches=rc["vision_min_num_patches"],
                pixel_shuffle_scale=SHUFFLE,
            )
        )
        sp_hw = spec_target_hw(h, w, PATCH, rc["vision_max_num_patches"], rc["vision_min_num_patches"], SHUFFLE)
        assert ref_hw == sp_hw == thw, ((h, w), ref_hw, sp_hw, thw)
        assert (thw[0] // PATCH, thw[1] // PATCH) == grid and grid[0] * grid[1] == vit and vit // 4 == llm
    checks.append("spec §3 worked-examples table (real config) == reference == independent re-derivation")

    # -- 60 MP limit ------------------------------------------------------------------------------------------
    class _FakeImage:  # extract_image_pil checks width*height before touching pixels
        def __init__(self, w, h):
            self.width, self.height = w, h

    assert mi.MAX_PIXELS == 60_000_000
    try:
        mi.extract_image_pil(_FakeImage(8000, 7501))
        raise AssertionError("60,000,001+ pixel image was accepted")
    except ValueError:
        pass
    checks.append("images with width*height > 60,000,000 are rejected (ValueError)")

    # ------------------------------------------------------------------------------------------------------
    # (a) per image, per configuration
    # ------------------------------------------------------------------------------------------------------
    images = golden_images()
    assert list(images) == list(IMAGE_SPECS)
    img_meta: dict[str, dict] = {}
    notes: list[str] = []
    ref_patches: dict[tuple[str, str], torch.Tensor] = {}  # (name, cfg) -> (N, 768), for the prompt checks
    for name, img in images.items():
        H, W, mode, _seed = IMAGE_SPECS[name]
        assert img.mode == mode and img.size == (W, H), (name, img.mode, img.size)
        rgb_t = mi.extract_image_pil(img)  # what IsaacProcessor does with each PIL image
        assert rgb_t.dtype == torch.uint8 and tuple(rgb_t.shape) == (H, W, 3)
        rgb = rgb_t.numpy()
        assert np.array_equal(rgb, np.asarray(img.convert("RGB"))), name
        assert np.array_equal(rgb, spec_rgb(img)), f"{name}: mode {mode} conversion differs from spec"
        rec = {
            "mode": mode,
            "size_hw": [H, W],
            "source_sha256": sha256_bytes(img.tobytes()),
            "rgb_sha256": sha256_bytes(np.ascontiguousarray(rgb).tobytes()),
            "configs": {},
        }
        if mode == "P":
            rec["palette_sha256"] = sha256_bytes(bytes(img.getpalette()))
        for cname, cfgkw in CONFIGS.items():
            captured.clear()
            patches4, dims_virtual = mi.process_vision_for_patches(
                rgb_t,
                patch_size=PATCH,
                max_num_patches=cfgkw["vision_max_num_patches"],
                min_num_patches=cfgkw["vision_min_num_patches"],
                pixel_shuffle_scale=SHUFFLE,
            )
            assert len(captured) == 1
            resized = captured[0]
            assert resized.dtype == torch.uint8 and resized.dim() == 4 and resized.shape[0] == 1
            resized = resized[0].contiguous()  # (H', W', 3) uint8
            th, tw = int(resized.shape[0]), int(resized.shape[1])
            _, gh, gw, dim = patches4.shape
            assert dim == 768 and (gh, gw) == (th // PATCH, tw // PATCH)
            assert list(dims_virtual) == [1, gh // SHUFFLE, gw // SHUFFLE]
            patches = patches4.reshape(-1, dim).float().contiguous()
            ref_patches[(name, cname)] = patches
            # independent checks
            sp_hw = spec_target_hw(
                H, W, PATCH, cfgkw["vision_max_num_patches"], cfgkw["vision_min_num_patches"], SHUFFLE
            )
            assert (th, tw) == sp_hw, (name, cname, (th, tw), sp_hw)
            assert th % (PATCH * SHUFFLE) == 0 and tw % (PATCH * SHUFFLE) == 0
            assert torch.equal(spec_resize_u8(spec_rgb(img), (th, tw)), resized), f"{name}/{cname}: resize"
            assert torch.equal(spec_patches_from_u8(resized), patches), f"{name}/{cname}: normalise/patchify"
            n = patches.shape[0]
            assert n <= cfgkw["vision_max_num_patches"]
            if n < cfgkw["vision_min_num_patches"]:
                notes.append(
                    f"{name}/{cname}: {n} patches < vision_min_num_patches {cfgkw['vision_min_num_patches']} "
                    f"(the upscale search is capped at scale 100)"
                )
            c = {
                "target_hw": [th, tw],
                "dims_real": [1, gh, gw],
                "dims_virtual": list(dims_virtual),
                "num_patches": n,
                "num_llm_tokens": n // (SHUFFLE * SHUFFLE),
                "resized_u8_sha256": sha256_tensor(resized),
                "patches_shape": [n, dim],
                "patches_sha256": sha256_tensor(patches),
            }
            key = f"image.{name}.{cname}"
            if cname == "tiny":
                tensors[f"{key}.resized_u8"] = resized
                c["resized_u8_key"] = f"{key}.resized_u8"
            if patches.numel() * 4 < FULL_LIMIT_BYTES:
                tensors[f"{key}.patches"] = patches
                c["patches_stored"] = "full"
                c["patches_key"] = f"{key}.patches"
            else:
                rows = sample_rows(n)
                tensors[f"{key}.patch_rows"] = patches[rows].contiguous()
                c["patches_stored"] = "sample"
                c["sample_rows"] = rows
                c["patch_rows_key"] = f"{key}.patch_rows"
            rec["configs"][cname] = c
        img_meta[name] = rec
    mi.prepare_image_tensor = orig_prepare
    checks.append(
        "every image, both configs: PIL mode conversion == convert('RGB') == spec (alpha dropped, palette looked "
        "up, Pillow CMYK formula); target size == spec §3 re-derivation; resized uint8 == F.interpolate(uint8, "
        "bilinear, align_corners=False, no antialias); patches == x*(1/255), (x-0.5)/0.5, (py,px,c) patchify"
    )

    # ------------------------------------------------------------------------------------------------------
    # (b) prompts through the full reference IsaacProcessor
    # ------------------------------------------------------------------------------------------------------
    prompt_meta: dict[str, dict] = {}
    for pname, (text, names, cname, over, desc) in PROMPTS.items():
        cfg = make_config(cname, **over)
        proc = mi.IsaacProcessor(tokenizer=tok, config=cfg)
        assert proc.max_sequence_length == cfg.max_sequence_length
        pil = [images[n] for n in names]
        batch = proc(text=text, images=pil or None)
        ts = batch["tensor_stream"]
        input_ids = batch["input_ids"]
        B, T = ts.shape
        assert B == 1 and tuple(input_ids.shape) == (1, T) and input_ids.dtype == torch.long
        input_ids = input_ids[0]
        positions = ts_ops.compute_mrope_pos_tensor(ts)[0]
        modality = ts_ops.modality_mask(ts)[0].long()
        assert positions.shape == (T, 3) and positions.dtype == torch.long
        assert torch.equal(input_ids, ts_ops.tensor_stream_token_view(ts)[0])

        # untruncated stream (same processor, larger limit) for the truncation checks
        full_proc = mi.IsaacProcessor(tokenizer=tok, config=make_config(cname, max_sequence_length=10**9))
        full_ts = full_proc(text=text, images=pil or None)["tensor_stream"]
        T_full = full_ts.shape[1]
        cut = max(0, T_full - cfg.max_sequence_length)
        assert T == min(T_full, cfg.max_sequence_length)

        # expected segments from an independent split of the prompt
        segs = spec_segments(text)
        full_events = list(full_ts.streams[0])
        assert len(full_events) == len(segs), (pname, len(full_events), len(segs))
        full_layout, off, img_j = [], 0, 0
        for ev, (k, kind, piece) in zip(full_events, segs, strict=True):
            assert tuple(ev.time) == (k, k), (pname, ev.time, k)
            if kind == "text":
                assert ev.type == mi.TextType.text
                ids = tok.encode(piece, add_special_tokens=False)
                assert ev.data[:, 0].tolist() == ids and list(ev.dims_virtual) == [len(ids), 1]
                n = len(ids)
            else:
                assert ev.type == mi.VisionType.image
                n = math.prod(ev.dims_virtual)
                img_j += 1
            assert tuple(ev.idx_range) == (0, n)
            full_layout.append((off, off + n))
            off += n
        assert off == T_full and img_j == len(names)

        # the kept events: all events ending after `cut`; the first may be partial
        events = list(ts.streams[0])
        kept = [i for i, (s, e) in enumerate(full_layout) if e > cut]
        assert len(events) == len(kept), (pname, len(events), kept)
        ev_recs, text_ids_per_event, pos_tok = [], [], 0
        # images wholly before the cut are dropped, the image list is consumed in order
        first_img = sum(1 for i in range(kept[0]) if segs[i][1] == "image") if kept else 0
        img_names_iter = iter(names[first_img:])
        for j, (ev, i) in enumerate(zip(events, kept, strict=True)):
            k, kind, piece = segs[i]
            s_full, e_full = full_layout[i]
            live_from = max(0, cut - s_full)
            assert tuple(ev.time) == (k, k)
            assert tuple(ev.idx_range) == (live_from, e_full - s_full), (pname, ev.idx_range)
            assert j == 0 or live_from == 0
            nlive = ev.idx_range[1] - ev.idx_range[0]
            r = {
                "type": kind,
                "time": [float(ev.time[0]), float(ev.time[1])],
                "piece_index": k,
                "dims_virtual": [int(x) for x in ev.dims_virtual],
                "dims_real": [int(x) for x in ev.dims_real],
                "idx_range": [int(ev.idx_range[0]), int(ev.idx_range[1])],
                "token_span": [pos_tok, pos_tok + nlive],
            }
            if kind == "text":
                ids = [int(x) for x in ev.data[:, 0].tolist()]
                r["piece"] = piece
                r["ids"] = ids
                text_ids_per_event.append(ids)
                # text positions of the token view are the ids themselves
                assert input_ids[pos_tok : pos_tok + nlive].tolist() == ids[ev.idx_range[0] : ev.idx_range[1]]
                assert (modality[pos_tok : pos_tok + nlive] == 1).all()
            else:
                iname = next(img_names_iter)
                pcfg = cname  # overrides only touch max_sequence_length, never the vision settings
                data = ev.data.float()
                assert torch.equal(data, ref_patches[(iname, pcfg)]), (pname, iname)
                dr = img_meta[iname]["configs"][pcfg]["dims_real"]
                assert list(ev.dims_real) == dr
                assert list(ev.dims_virtual) == img_meta[iname]["configs"][pcfg]["dims_virtual"]
                r["image"] = iname
                r["image_index"] = names.index(iname)
                r["patches_config"] = pcfg
                r["patches_sha256"] = sha256_tensor(data)
                # junk ids: trunc(sum over the 768 values) of the REAL patches, indexed by the virtual idx_range
                junk = data.sum(dim=-1).long()[ev.idx_range[0] : ev.idx_range[1]]
                assert torch.equal(input_ids[pos_tok : pos_tok + nlive], junk)
                assert (modality[pos_tok : pos_tok + nlive] == 0).all()
            ev_recs.append(r)
            pos_tok += nlive
        assert pos_tok == T
        if pname == "p_trunc":
            assert cut > 0 and ev_recs[0]["type"] == "image" and ev_recs[0]["image"] == names[0]
            assert 0 < ev_recs[0]["idx_range"][0] < math.prod(ev_recs[0]["dims_virtual"]), ev_recs[0]
            checks.append(
                f"p_trunc: T {T_full} -> {T}, cut at token {cut} falls inside image {names[0]} "
                f"(idx_range {ev_recs[0]['idx_range']})"
            )
        if pname == "p_trunc_text":
            assert cut > 0 and ev_recs[0]["type"] == "text" and ev_recs[0]["idx_range"][0] > 0
            # the kept stream restarts t at 0 per EVENT: a partially kept text event keeps t = idx_range[0]..
            assert positions[0].tolist() == [ev_recs[0]["idx_range"][0], 0, 0], positions[0]
            checks.append(
                f"p_trunc_text: T {T_full} -> {T}, cut at token {cut} inside the first text piece (idx_range "
                f"{ev_recs[0]['idx_range']}); its first kept token has t = {int(positions[0, 0])}, not 0"
            )
        # positions: spec §6.5 from the event records, and the segment rule for untruncated prompts
        assert torch.equal(spec_positions(ev_recs), positions), pname
        if cut == 0:
            seg_pos, c = [], 0
            for r in ev_recs:
                if r["type"] == "text":
                    seg_pos += [(c + i, 0, 0) for i in range(len(r["ids"]))]
                    c += len(r["ids"])
                else:
                    _, gh2, gw2 = r["dims_virtual"]
                    seg_pos += [(c, a, b) for a in range(gh2) for b in range(gw2)]
                    c += 1
            assert torch.equal(torch.tensor(seg_pos, dtype=torch.long).reshape(-1, 3), positions), pname
        else:
            # kept tokens keep their (h, w); an image cut in the middle keeps its original h/w coordinates
            full_pos = ts_ops.compute_mrope_pos_tensor(full_ts)[0]
            assert torch.equal(positions[:, 1:], full_pos[cut:, 1:]), pname
        # text ids: per piece == tokenizing the whole prompt with <image> -> <|image_pad|> and dropping pads
        pad_id = tok.convert_tokens_to_ids("<|image_pad|>")
        whole = [
            i for i in tok.encode(text.replace("<image>", "<|image_pad|>"), add_special_tokens=False) if i != pad_id
        ]
        per_piece = [i for i, kind, p in segs if kind == "text" for i in tok.encode(p, add_special_tokens=False)]
        assert whole == per_piece, pname

        key = f"prompt.{pname}"
        tensors[f"{key}.input_ids"] = input_ids.contiguous()
        tensors[f"{key}.modality"] = modality.contiguous()
        tensors[f"{key}.positions"] = positions.contiguous()
        flat_text = [i for r in ev_recs if r["type"] == "text" for i in r["ids"]]
        tensors[f"{key}.text_ids"] = torch.tensor(flat_text, dtype=torch.long).reshape(-1)
        prompt_meta[pname] = {
            "description": desc,
            "text": text,
            "images": names,
            "config": cname,
            "config_overrides": over,
            "max_sequence_length": cfg.max_sequence_length,
            "num_tokens": T,
            "num_tokens_before_truncation": T_full,
            "truncated_tokens": cut,
            "num_image_tokens": int((modality == 0).sum()),
            "num_text_tokens": int((modality == 1).sum()),
            "events": ev_recs,
            "text_ids_per_event": text_ids_per_event,
            "events_before_truncation": [
                {
                    "type": segs[i][1],
                    "piece_index": segs[i][0],
                    "idx_range": [0, e - s],
                    "token_span": [s, e],
                }
                for i, (s, e) in enumerate(full_layout)
            ],
            "tensors": {
                "input_ids": f"{key}.input_ids",
                "modality": f"{key}.modality",
                "positions": f"{key}.positions",
                "text_ids": f"{key}.text_ids",
            },
        }
        checks.append(
            f"{pname}: events == independent split of the prompt, per-piece tokenisation, idx_ranges of the left "
            f"truncation, positions == spec §6.5, image patches == per-image golden, junk ids == trunc(sum of "
            f"real patch rows)"
        )

    # -- write ----------------------------------------------------------------------------------------
    tensors = {k: v.contiguous() for k, v in sorted(tensors.items())}
    gold_st = out / "golden.safetensors"
    save_file(tensors, str(gold_st), metadata={"reference_commit": args.reference_commit})
    gold_st.chmod(0o644)  # safetensors writes 0600
    meta = {
        "description": (
            "Golden outputs of Perceptron's reference IsaacProcessor (huggingface/modular_isaac.py) run unchanged "
            "on CPU: PIL mode conversion (extract_image_pil), resize rule, uint8 bilinear resize, normalisation "
            "and patchify (process_vision_for_patches), prompt split on '<image>', per-piece tokenisation, "
            "TensorStream, left truncation to max_sequence_length, tensor_stream_token_view and "
            "compute_mrope_pos_tensor. Images from golden_images.py; tokenizer from tokenizer/ (tiny 512-token "
            "Qwen2-style BPE with Qwen3's special tokens). Per image and configuration: target size, grids, "
            "sha256 of the resized uint8 image and of the float32 patches; tiny config: the resized uint8 image "
            "in full; patches in full when under 300 kB, otherwise rows [0, 1, N//2, N-1]. Per prompt: "
            "input_ids (image positions hold junk), modality, positions and the event list."
        ),
        "reference": {
            "repo": "perceptron-ai-inc/perceptron",
            "path": "huggingface/modular_isaac.py",
            "commit": args.reference_commit,
            "modular_isaac_sha256": ref_sha256,
            "monkeypatched": "none (prepare_image_tensor wrapped pass-through only to record its input)",
        },
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "tokenizers": tokenizers.__version__,
            "safetensors": safetensors.__version__,
            "numpy": np.__version__,
            "pillow": PIL.__version__,
            "perceptron": _pkg_version("perceptron"),
        },
        "tokenizer": {
            "folder": "tokenizer",
            "loaded_as": "transformers.Qwen2TokenizerFast(tokenizer_file=tokenizer/tokenizer.json, "
            "eos_token='<|im_end|>', pad_token='<|endoftext|>', bos_token=None, unk_token=None)",
            "vocab_size": len(tok),
            "eos_token_id": tok.eos_token_id,
            "pad_token_id": tok.pad_token_id,
            "image_pad_id": tok.convert_tokens_to_ids("<|image_pad|>"),
            "files_sha256": tok_files,
        },
        "configs": {k: dict(v, vision_patch_size=PATCH, pixel_shuffle_scale=SHUFFLE) for k, v in CONFIGS.items()},
        "storage": {
            "full_patches_if_bytes_below": FULL_LIMIT_BYTES,
            "sample_rows": "[0, 1, N//2, N-1] of the (N, 768) float32 patches",
            "sha256": "of the C-contiguous bytes (little-endian): resized uint8 (H', W', 3), patches float32 "
            "(N, 768), source = PIL Image.tobytes() in the image's own mode, rgb = extract_image_pil output "
            "(H, W, 3) uint8",
        },
        "conventions": {
            "modality": "0 = image token, 1 = text token",
            "positions": "(t, h, w) from perceptron compute_mrope_pos_tensor; text tokens are (t, 0, 0)",
            "dims_real": "[1, H'/16, W'/16]",
            "dims_virtual": "[1, H'/32, W'/32] for images, [n, 1] for text",
            "idx_range": "live range over the event's flattened virtual tokens (partial after truncation)",
            "token_span": "where the event's live tokens sit in the (T,) output",
            "time": "(k, k), k = index of the piece in re.split('(<image>)', text) (empty pieces count)",
            "patches": "(N, 768) float32, row-major over the real grid, vector order (py, px, c)",
            "input_ids": "reference tensor_stream_token_view: text = ids; image positions = junk "
            "(long(sum of the 768 values) of REAL patch rows idx_range[0]..idx_range[1]-1, i.e. not even the "
            "matching virtual token); do not compare them across torch builds",
        },
        "max_pixels": mi.MAX_PIXELS,
        "spec_table_real": [
            {"input_hw": list(a), "target_hw": list(b), "grid": list(g), "vit_tokens": v, "llm_tokens": llm}
            for a, b, g, v, llm in SPEC_TABLE
        ],
        "images": img_meta,
        "prompts": prompt_meta,
        "tensors": {
            k: {"shape": list(v.shape), "dtype": str(v.dtype).replace("torch.", "")} for k, v in tensors.items()
        },
        "checks_passed": checks,
        "notes": notes,
    }
    (out / "golden.json").write_text(json.dumps(meta, indent=1, ensure_ascii=False) + "\n")
    total = sum((out / f).stat().st_size for f in ("golden.safetensors", "golden.json"))
    for c in checks:
        print("OK", c)
    print(f"wrote {out}/golden.safetensors + golden.json ({total / 1e6:.2f} MB)")


def _pkg_version(name):
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:  # pragma: no cover
        return None


if __name__ == "__main__":
    main()

"""Generate golden tensors from Perceptron's reference Isaac implementation on tiny random weights.

Run with the reference environment (transformers 4.57.3 + perceptron 0.4.0, see README.md), NOT with the
isaac_train environment:

    /tmp/refenv/bin/python tests/golden/make_reference_golden.py \
        --reference-dir /path/to/folder/with/modular_isaac.py --out tests/golden/reference_tiny

Nothing from the reference is copied here; the reference module is imported at run time from
--reference-dir.  The only patch applied is replacing the CUDA-only flash-varlen vision attention by the same
math written with torch SDPA and a block-diagonal (per image, bidirectional) mask, so that it runs on CPU in fp32.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import itertools
import json
import platform
import re
import sys
from pathlib import Path

import numpy as np
import PIL
import PIL.Image
import torch
import torch.nn.functional as F

DEFAULT_COMMIT = "122a710fff6cb65b99030951f19dcbfe05e7aca6"

TEXT_KW = {
    "vocab_size": 512,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "rope_theta": 1000000.0,
    "rms_norm_eps": 1e-6,
    "max_position_embeddings": 4096,
    "tie_word_embeddings": False,
    "hidden_act": "silu",
    "bos_token_id": 1,
    "eos_token_id": 2,
    "pad_token_id": 0,
}
VISION_KW = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "patch_size": 16,
    "num_channels": 3,
    "num_patches": 256,
    "pixel_shuffle_scale_factor": 2,
    "hidden_act": "gelu_pytorch_tanh",
    "layer_norm_eps": 1e-6,
}
TOP_KW = {
    "vision_patch_size": 16,
    "vision_max_num_patches": 256,
    "vision_min_num_patches": 16,
    "pixel_shuffle_scale": 2,
    "max_sequence_length": 4096,
}


# ----------------------------------------------------------------------------------------------------------
# CPU replacement for the CUDA-only flash-varlen vision attention
# ----------------------------------------------------------------------------------------------------------
CU_SEQLENS_SEEN: list[list[int]] = []


def block_diagonal_mask(cu_seqlens: torch.Tensor, total: int, device) -> torch.Tensor:
    """Boolean (total, total) mask, True where query and key belong to the same image segment."""
    seg = torch.zeros(total, dtype=torch.long, device=device)
    bounds = cu_seqlens.tolist()
    for i in range(len(bounds) - 1):
        seg[bounds[i] : bounds[i + 1]] = i
    assert bounds[0] == 0 and bounds[-1] == total, (bounds, total)
    return seg[:, None] == seg[None, :]


def sdpa_varlen_forward(self, hidden_states, cu_seqlens=None, max_seqlen=None):
    """Same contract as the reference attention's forward: (1, S, D) -> ((1, S, D), None).

    q/k/v/out projections, heads = config.num_attention_heads, scale = head_dim**-0.5, bidirectional attention
    restricted to each [cu_seqlens[i], cu_seqlens[i+1]) segment (= one image), no dropout in eval.
    """
    bsz, seq_len, _ = hidden_states.shape
    if bsz != 1:
        raise ValueError("packed vision attention expects batch size 1")
    CU_SEQLENS_SEEN.append(cu_seqlens.tolist())
    x = hidden_states[0]
    hd = self.embed_dim // self.num_heads
    q = self.q_proj(x).view(seq_len, self.num_heads, hd).transpose(0, 1)  # (H, S, hd)
    k = self.k_proj(x).view(seq_len, self.num_heads, hd).transpose(0, 1)
    v = self.v_proj(x).view(seq_len, self.num_heads, hd).transpose(0, 1)
    mask = block_diagonal_mask(cu_seqlens, seq_len, x.device)
    out = F.scaled_dot_product_attention(
        q[None],
        k[None],
        v[None],
        attn_mask=mask[None, None],
        dropout_p=0.0,
        is_causal=False,
        scale=self.scale,
    )[0]  # (H, S, hd)
    out = out.transpose(0, 1).reshape(seq_len, self.embed_dim).to(hidden_states.dtype)
    return self.out_proj(out).unsqueeze(0), None


# ----------------------------------------------------------------------------------------------------------
# A tokenizer stand-in: the tiny model has no real vocabulary, so text pieces are written as "[ids:3,17,45]"
# and the reference processor's own tokenizer.encode(...) call returns exactly those ids.
# ----------------------------------------------------------------------------------------------------------
def make_id_tokenizer():
    from transformers import Qwen2TokenizerFast

    class IdListTokenizer(Qwen2TokenizerFast):  # subclass only to satisfy ProcessorMixin's type check
        def __init__(self):  # deliberately no vocabulary
            pass

        def encode(self, text, add_special_tokens=True, return_tensors=None, **kwargs):
            assert add_special_tokens is False, (
                "reference processor must tokenize with add_special_tokens=False"
            )
            m = re.fullmatch(r"\[ids:([0-9,]+)\]", text)
            assert m is not None, f"unexpected text piece {text!r}"
            ids = [int(s) for s in m.group(1).split(",")]
            return torch.tensor([ids], dtype=torch.long) if return_tensors == "pt" else ids

    return IdListTokenizer()


def ids_text(ids) -> str:
    return "[ids:" + ",".join(str(int(i)) for i in ids) + "]"


# ----------------------------------------------------------------------------------------------------------
def reinit_parameters(model, seed: int = 1234) -> dict:
    """normal(0, 0.02) everywhere; norm weights 1 + normal(0, 0.1); biases normal(0, 0.02). Fixed generator,
    parameters visited in model.named_modules() / named_parameters(recurse=False) order."""
    g = torch.Generator().manual_seed(seed)
    counts = {"norm_weight": 0, "bias": 0, "other": 0}
    seen = set()
    with torch.no_grad():
        for mod_name, mod in model.named_modules():
            is_norm = isinstance(mod, torch.nn.LayerNorm) or "RMSNorm" in type(mod).__name__
            for pname, p in mod.named_parameters(recurse=False):
                full = f"{mod_name}.{pname}" if mod_name else pname
                noise = torch.randn(p.shape, generator=g, dtype=torch.float32)
                if is_norm and pname == "weight":
                    p.copy_(1.0 + 0.1 * noise)
                    counts["norm_weight"] += 1
                elif pname == "bias":
                    p.copy_(0.02 * noise)
                    counts["bias"] += 1
                else:
                    p.copy_(0.02 * noise)
                    counts["other"] += 1
                seen.add(full)
    all_names = {n for n, _ in model.named_parameters()}
    assert seen == all_names, all_names ^ seen
    return counts


def make_images(seed: int = 20240607) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    imgs = {}
    imgs["A"] = rng.integers(0, 256, size=(48, 80, 3), dtype=np.uint8)
    imgs["B"] = rng.integers(0, 256, size=(100, 37, 3), dtype=np.uint8)
    yy, xx = np.meshgrid(np.arange(33, dtype=np.float64), np.arange(200, dtype=np.float64), indexing="ij")
    grad = np.stack([xx / 199.0 * 255.0, yy / 32.0 * 255.0, (xx / 199.0 + yy / 32.0) * 127.5], axis=-1)
    imgs["C"] = np.clip(np.rint(grad + rng.normal(0.0, 12.0, size=grad.shape)), 0, 255).astype(np.uint8)
    imgs["D"] = rng.integers(0, 256, size=(64, 64, 3), dtype=np.uint8)
    imgs["E"] = rng.integers(0, 256, size=(20, 20, 3), dtype=np.uint8)
    return imgs


def make_cases(imgs, seed: int = 7):
    rng = np.random.default_rng(seed)

    def t(n):
        return {"type": "text", "ids": [int(x) for x in rng.integers(3, 512, size=n)]}

    def im(name):
        return {"type": "image", "name": name}

    return {
        "case0": [t(40)],
        "case1": [t(12), im("A"), t(9), im("B"), t(5)],
        "case2": [t(7), im("C"), im("D"), t(11), im("E")],
    }


# ----------------------------------------------------------------------------------------------------------
# Independent re-derivations (from docs/spec) used only as sanity checks of what the reference produced.
# ----------------------------------------------------------------------------------------------------------
def spec_positions(segments, r: int) -> torch.Tensor:
    pos, c = [], 0
    for s in segments:
        if s["type"] == "text":
            n = len(s["ids"])
            pos += [(c + i, 0, 0) for i in range(n)]
            c += n
        else:
            gh, gw = s["grid"]
            pos += [(c, a, b) for a in range(gh // r) for b in range(gw // r)]
            c += 1
    return torch.tensor(pos, dtype=torch.long)


def spec_patches(img: np.ndarray, hw, exact_scale: bool = True) -> torch.Tensor:
    x = torch.from_numpy(img).permute(2, 0, 1)[None]  # uint8 NCHW
    x = F.interpolate(x, size=tuple(hw), mode="bilinear", align_corners=False)  # uint8, no antialias
    x = x.permute(0, 2, 3, 1)[0].float()
    # bit-exact only with x * (1/255) (fp32 multiply), x / 255 differs by <= 1 ulp on some values
    x = x * (1.0 / 255.0) if exact_scale else x / 255.0
    x = (x - 0.5) / 0.5
    H, W = hw
    x = x.reshape(H // 16, 16, W // 16, 16, 3).permute(0, 2, 1, 3, 4).reshape(-1, 768)
    return x


def spec_cos_sin(pos: torch.Tensor, modality: torch.Tensor, theta: float, head_dim: int):
    inv = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    p = pos.clone()
    txt = modality != 0
    p[txt] = p[txt][:, :1].expand(-1, 3)
    sec = [head_dim // 4, head_dim // 8, head_dim // 8]
    axis = torch.tensor([a for a, n in enumerate(sec) for _ in range(n)])
    ph = p[:, axis].float() * inv  # (T, hd/2)
    return torch.cat([ph.cos(), ph.cos()], -1), torch.cat([ph.sin(), ph.sin()], -1), inv


# ----------------------------------------------------------------------------------------------------------
def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reference-dir", required=True, help="folder holding modular_isaac.py")
    ap.add_argument(
        "--reference-commit", default=DEFAULT_COMMIT, help="commit of perceptron-ai-inc/perceptron"
    )
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "reference_tiny"))
    args = ap.parse_args()

    ref_dir = Path(args.reference_dir).resolve()
    ref_file = ref_dir / "modular_isaac.py"
    ref_sha256 = hashlib.sha256(ref_file.read_bytes()).hexdigest()
    sys.path.insert(0, str(ref_dir))
    mi = importlib.import_module("modular_isaac")
    import perceptron.tensorstream.ops as ts_ops
    import safetensors
    import transformers
    from safetensors.torch import save_file

    # -- monkeypatch CUDA-only vision attention --------------------------------------------------------
    attn_cls = mi.Siglip2VariableLengthAttention
    attn_cls.forward = sdpa_varlen_forward

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_grad_enabled(False)

    # -- config + model ----------------------------------------------------------------------------------
    cfg = mi.IsaacConfig(vision_config=dict(VISION_KW), **TOP_KW, **TEXT_KW)
    # decoder attention: with attention_mask=None the reference relies on SDPA is_causal (eager: bidirectional)
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(0)
    model = mi.IsaacForConditionalGeneration(cfg).float().eval()
    assert model.config._attn_implementation == "sdpa", model.config._attn_implementation
    counts = reinit_parameters(model)
    model.save_pretrained(out, safe_serialization=True)
    sd = model.state_dict()
    with open(out / "keys.txt", "w") as f:
        f.writelines(f"{k}\t{list(v.shape)}\t{str(v.dtype).replace('torch.', '')}\n" for k, v in sd.items())

    # -- processor (reference code path; tokenizer replaced by an id-list stand-in) --------------------------
    proc = mi.IsaacProcessor(tokenizer=make_id_tokenizer(), config=cfg)
    imgs = make_images()
    cases = make_cases(imgs)
    r = cfg.pixel_shuffle_scale

    # hooks
    cap = {}
    rope = model.model.rotary_emb

    def rope_hook(mod, inputs, output):
        cap["rope_in_pos"], cap["rope_in_mod"] = inputs[0].clone(), inputs[1].clone()
        cap["cos"], cap["sin"] = output[0].clone(), output[1].clone()

    def vis_hook(mod, inputs, output):
        cap["vis_in"] = (inputs[0][0].clone(), inputs[0][1].clone())
        cap["vis_out"] = output.clone()

    def tower_hook(mod, inputs, output):
        cap["tower_out"] = output.clone()  # after post_layernorm + pixel shuffle

    def enc_hook(mod, inputs, output):
        cap["encoder_out"] = output[0].clone()  # before post_layernorm / shuffle

    model.model.rotary_emb.register_forward_hook(rope_hook)
    model.model.vision_embedding.register_forward_hook(vis_hook)
    model.model.vision_embedding[0].register_forward_hook(tower_hook)
    model.model.vision_embedding[0].encoder.register_forward_hook(enc_hook)

    tensors: dict[str, torch.Tensor] = {}
    meta_cases = {}
    checks = []
    theta_used = float(getattr(cfg, "rope_theta", float("nan")))

    for cname, segs in cases.items():
        text = ""
        pil_images = []
        case_imgs = []
        for s in segs:
            if s["type"] == "text":
                text += ids_text(s["ids"])
            else:
                text += cfg.vision_token
                pil_images.append(PIL.Image.fromarray(imgs[s["name"]], mode="RGB"))
                case_imgs.append(imgs[s["name"]])
        batch = proc(text=text, images=pil_images or None)
        ts = batch["tensor_stream"]
        B, T = ts.shape
        assert B == 1

        # event-level info from the reference stream
        events = list(ts.streams[0])
        seg_meta, img_k = [], 0
        assert len(events) == len(segs), (len(events), len(segs))
        for ev, s in zip(events, segs, strict=True):
            if s["type"] == "text":
                assert ev.type == mi.TextType.text
                assert ev.data[:, 0].tolist() == s["ids"]
                seg_meta.append({"type": "text", "ids": s["ids"]})
            else:
                assert ev.type == mi.VisionType.image
                dr, dv = list(ev.dims_real), list(ev.dims_virtual)
                h, w = imgs[s["name"]].shape[:2]
                seg_meta.append(
                    {
                        "type": "image",
                        "index": img_k,
                        "name": s["name"],
                        "orig_hw": [h, w],
                        "resized_hw": [dr[1] * 16, dr[2] * 16],
                        "grid": [dr[1], dr[2]],
                        "llm_grid": [dv[1], dv[2]],
                        "num_llm_tokens": dv[1] * dv[2],
                    }
                )
                img_k += 1

        CU_SEQLENS_SEEN.clear()
        cap.clear()
        res = model(tensor_stream=ts, use_cache=False, return_dict=True)
        logits = res.logits[0].float()
        positions = ts_ops.compute_mrope_pos_tensor(ts)[0]
        modality = ts_ops.modality_mask(ts)[0].long()

        # --- checks -----------------------------------------------------------------------------------
        assert logits.shape == (T, TEXT_KW["vocab_size"])
        assert torch.isfinite(logits).all()
        assert logits.std() > 1e-3 and (logits[1:] - logits[:-1]).abs().max() > 1e-3
        assert torch.equal(cap["rope_in_pos"][0], positions), (
            "model used other positions than compute_mrope_pos_tensor"
        )
        assert torch.equal(cap["rope_in_mod"][0].long(), modality)
        sp = spec_positions(seg_meta, r)
        assert torch.equal(sp, positions), (sp, positions)
        exp_mod = torch.cat(
            [
                torch.full(
                    (len(s["ids"]) if s["type"] == "text" else s["num_llm_tokens"],),
                    1 if s["type"] == "text" else 0,
                )
                for s in seg_meta
            ]
        )
        assert torch.equal(exp_mod, modality)
        cos_s, sin_s, inv_s = spec_cos_sin(positions, modality, TEXT_KW["rope_theta"], TEXT_KW["head_dim"])
        assert torch.allclose(rope.inv_freq, inv_s, rtol=0, atol=0), (rope.inv_freq, inv_s)
        assert (cap["cos"][0] - cos_s).abs().max() < 1e-6 and (cap["sin"][0] - sin_s).abs().max() < 1e-6
        checks.append(f"{cname}: logits finite, positions == spec §6.5, modality ok, cos/sin == spec §7.2")

        tensors[f"{cname}.logits"] = logits.contiguous()
        tensors[f"{cname}.positions"] = positions.contiguous()
        tensors[f"{cname}.modality"] = modality.contiguous()
        tensors[f"{cname}.cos"] = cap["cos"][0].float().contiguous()
        tensors[f"{cname}.sin"] = cap["sin"][0].float().contiguous()
        tensors[f"{cname}.text_ids"] = torch.tensor(
            [i for s in seg_meta if s["type"] == "text" for i in s["ids"]], dtype=torch.long
        )
        for k, arr in enumerate(case_imgs):
            tensors[f"{cname}.image{k}"] = torch.from_numpy(np.ascontiguousarray(arr))

        if case_imgs:
            patches, grids = cap["vis_in"]
            patches = patches.float()
            exp_grids = torch.tensor([s["grid"] for s in seg_meta if s["type"] == "image"], dtype=torch.long)
            assert torch.equal(grids.long().cpu(), exp_grids)
            # vision attention really was per image
            cu = [0] + list(itertools.accumulate(int(g[0] * g[1]) for g in exp_grids))
            assert len(CU_SEQLENS_SEEN) == VISION_KW["num_hidden_layers"] and all(
                c == cu for c in CU_SEQLENS_SEEN
            ), (CU_SEQLENS_SEEN, cu)
            # spec §3 preprocessing re-derivation gives the same patches
            off = 0
            for k, s in enumerate([s for s in seg_meta if s["type"] == "image"]):
                n = s["grid"][0] * s["grid"][1]
                sp_p = spec_patches(case_imgs[k], s["resized_hw"])
                assert torch.equal(sp_p, patches[off : off + n]), (
                    f"{cname} image{k}: patches differ from spec §3"
                )
                d_div = (
                    (spec_patches(case_imgs[k], s["resized_hw"], False) - patches[off : off + n]).abs().max()
                )
                assert d_div <= 2.5e-7, d_div
                off += n
            assert off == patches.shape[0]
            # packed vision output == each image encoded alone (block-diagonal attention is per image)
            packed = cap["vis_out"]
            # keep the main forward's intermediates: the per-image and leak checks below re-run the tower
            main_tower_out, main_encoder_out = cap["tower_out"], cap["encoder_out"]
            alone, o2 = [], 0
            for g in exp_grids:
                n = int(g[0] * g[1])
                alone.append(model.model.vision_embedding((patches[o2 : o2 + n], g[None])))
                o2 += n
            alone = torch.cat(alone)
            d = (alone - packed).abs().max().item()
            assert d < 1e-5, d
            # and it would differ if images could see each other
            if len(exp_grids) > 1:
                saved = attn_cls.forward

                def full_attn(self, hidden_states, cu_seqlens=None, max_seqlen=None, saved=saved):
                    n_all = hidden_states.shape[1]
                    return saved(self, hidden_states, torch.tensor([0, n_all], dtype=torch.int32), n_all)

                attn_cls.forward = full_attn
                leak = model.model.vision_embedding((patches, grids))
                attn_cls.forward = saved
                assert (leak - packed).abs().max() > 1e-4
            checks.append(
                f"{cname}: vision cu_seqlens={cu}; packed == per-image (max diff {d:.2e}); patches == spec §3"
            )
            tensors[f"{cname}.patches"] = patches.contiguous()
            tensors[f"{cname}.grids"] = grids.long().contiguous()
            if cname == "case1":
                tensors["case1.vision_features"] = packed.float().contiguous()
                tensors["case1.vision_tower_shuffled"] = main_tower_out.float().contiguous()
                tensors["case1.vision_encoder_out"] = main_encoder_out[0].float().contiguous()

        meta_cases[cname] = {
            "num_tokens": T,
            "num_images": len(case_imgs),
            "segments": seg_meta,
            "reference_prompt_string": text,
        }

    tensors["rope.inv_freq"] = rope.inv_freq.float().clone()

    # -- causality of the decoder with attention_mask=None: a prefix gives the same logits --------------
    batch = proc(text=ids_text(cases["case0"][0]["ids"][:17]), images=None)
    pre = model(tensor_stream=batch["tensor_stream"], use_cache=False).logits[0]
    dcaus = (pre - tensors["case0.logits"][:17]).abs().max().item()
    assert dcaus < 1e-5, dcaus
    checks.append(f"decoder causal with attention_mask=None (prefix logits max diff {dcaus:.2e})")

    # -- round trip through the reference from_pretrained -------------------------------------------------
    re_model = (
        mi.IsaacForConditionalGeneration.from_pretrained(out, attn_implementation="sdpa").float().eval()
    )
    re_sd = re_model.state_dict()
    assert set(re_sd) == set(sd) and all(torch.equal(re_sd[k], sd[k]) for k in sd)
    segs1 = cases["case1"]
    text1 = "".join(ids_text(s["ids"]) if s["type"] == "text" else cfg.vision_token for s in segs1)
    ims1 = [PIL.Image.fromarray(imgs[s["name"]], mode="RGB") for s in segs1 if s["type"] == "image"]
    proc2 = mi.IsaacProcessor(tokenizer=make_id_tokenizer(), config=re_model.config)
    rl = re_model(tensor_stream=proc2(text=text1, images=ims1)["tensor_stream"], use_cache=False).logits[0]
    drt = (rl - tensors["case1.logits"]).abs().max().item()
    assert drt < 1e-6, drt
    checks.append(
        f"save_pretrained -> from_pretrained round trip: identical state dict, case1 logits diff {drt:.2e}"
    )

    # -- write ----------------------------------------------------------------------------------------
    tensors = {k: v.contiguous() for k, v in sorted(tensors.items())}
    save_file(tensors, str(out / "golden.safetensors"), metadata={"reference_commit": args.reference_commit})
    meta = {
        "description": (
            "Golden outputs of Perceptron's reference Isaac code (huggingface/modular_isaac.py) on a TINY random "
            "model. Weights: model built with torch.manual_seed(0), then every parameter re-initialised with a "
            "torch.Generator seeded 1234 in named_modules order: norm weights 1+N(0,0.1), biases N(0,0.02), all "
            "else N(0,0.02); saved with the reference save_pretrained. Inputs built by the reference "
            "IsaacProcessor (text pieces via an id-list tokenizer stand-in, images as PIL RGB), forward in eval "
            "mode, float32, CPU, attention_mask=None, use_cache=False, decoder attn_implementation=sdpa. The "
            "CUDA-only flash-varlen vision attention was replaced by SDPA with a block-diagonal per-image mask."
        ),
        "reference": {
            "repo": "perceptron-ai-inc/perceptron",
            "path": "huggingface/modular_isaac.py",
            "commit": args.reference_commit,
            "modular_isaac_sha256": ref_sha256,
            "monkeypatched": f"{attn_cls.__name__}.forward -> SDPA + block-diagonal mask from cu_seqlens",
        },
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "safetensors": safetensors.__version__,
            "numpy": np.__version__,
            "pillow": PIL.__version__,
            "perceptron": _pkg_version("perceptron"),
        },
        "config": {"text": TEXT_KW, "vision": VISION_KW, "top": TOP_KW},
        "reinit_counts": counts,
        "rope": {
            "theta": theta_used,
            "mrope_section": list(rope.mrope_section),
            "inv_freq": [float(x) for x in rope.inv_freq],
        },
        "conventions": {
            "modality": "0 = image token, 1 = text token (perceptron VisionType.image / TextType.text values)",
            "positions": "(t,h,w) from perceptron compute_mrope_pos_tensor; text tokens are (t,0,0) there and "
            "become (t,t,t) inside the rotary module (see caseN.cos/sin)",
            "grids": "real patch grid (H/16, W/16) per image, stream order",
            "patches": "(sum H*W/256, 768) float32, per-patch order (py, px, c), images concatenated",
            "image{k}": "original uint8 HWC image k of the case (stream order)",
            "vision_features": "case1 output of model.vision_embedding (after projector), (sum tokens, 64)",
            "vision_tower_shuffled": "case1 output of vision_embedding[0] (post_layernorm + pixel shuffle), (., 128)",
            "vision_encoder_out": "case1 encoder output before post_layernorm, (sum patches, 32)",
            "text_ids": "all text ids of the case concatenated in stream order",
        },
        "cases": meta_cases,
        "tensors": {
            k: {"shape": list(v.shape), "dtype": str(v.dtype).replace("torch.", "")}
            for k, v in tensors.items()
        },
        "checks_passed": checks,
    }
    (out / "golden.json").write_text(json.dumps(meta, indent=1) + "\n")
    for p in out.glob("*.safetensors"):
        p.chmod(0o644)  # safetensors writes 0600; make the golden files readable by everyone
    total = sum(p.stat().st_size for p in out.iterdir() if p.is_file())
    for c in checks:
        print("OK", c)
    print(f"wrote {out} ({total / 1e6:.2f} MB)")


def _pkg_version(name):
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:  # pragma: no cover
        return None


if __name__ == "__main__":
    main()

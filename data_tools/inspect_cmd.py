"""`isaac-data inspect DATA`: print (and with --render, draw as HTML) a few samples as the model will see them.

For each sample: its key, shard, source and id; the text as the processor renders it, with `<image>` where each
image goes and the tokens that carry loss (labels) in `[[ ]]` (green on a colour terminal); per image its size,
mode and format and the patch grid and decoder-token count the processor gives it; the sample's token and
label-token counts. A sample the loader would skip is shown with its reason. A preference pair (`chosen` +
`rejected`) is shown as objective=dpo processes it (`decode.encode_pair`): its two documents, prompt + chosen and
prompt + rejected, each with its answer's labels, never truncated (too_long when the two exceed --max-length).

    isaac-data inspect /data/sft -n 3
    isaac-data inspect /data/sft --keys 000000017,000000018 --render /tmp/look   # then open /tmp/look/index.html
"""

from __future__ import annotations

import argparse
import base64
import html
import io
import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import PIL.Image
from tqdm import tqdm

from isaac_train.data import decode
from isaac_train.data.decode import SkipSample, encode_members, image_members, parse_sample
from isaac_train.data.records import Skip, open_image
from isaac_train.data.shards import SampleReadError, ShardSet, read_sample

from .validate import (
    CommandError,
    ScanConfig,
    add_processor_arguments,
    apply_image_limit,
    clean_message,
    load_processor,
    open_shards,
    resolve_max_length,
)

if TYPE_CHECKING:  # the processor imports torch and transformers: load_processor brings it when a run starts
    from isaac_train.processing.processor import EncodedSample, IsaacProcessor

LABEL_OPEN, LABEL_CLOSE = "[[", "]]"
ANSI_LABEL, ANSI_IMAGE, ANSI_RESET = "\x1b[1;32m", "\x1b[1;35m", "\x1b[0m"
PNG_MODES = ("1", "L", "LA", "I", "I;16", "P", "RGB", "RGBA")

Piece = tuple[str, Any]  # ("text", str) | ("label", str) | ("image", index into the sample's images)


@dataclass
class ImageInfo:
    """One image of a sample: what the file is and what the processor makes of it."""

    index: int
    member: str
    size: tuple[int, int] | None = None  # (width, height)
    mode: str | None = None
    format: str | None = None
    grid: tuple[int, int] | None = None  # patch grid (rows, cols) after resizing
    decoder_tokens: int | None = None
    png: bytes | None = None
    error: str | None = None

    def describe(self) -> str:
        """One line: file size, mode, format -> patch grid and decoder tokens (or why it does not decode)."""
        if self.error is not None:
            return f"image {self.index} ({self.member}): cannot decode: {self.error}"
        w, h = self.size or (0, 0)
        gh, gw = self.grid or (0, 0)
        return (f"image {self.index} ({self.member}): {w}x{h} {self.mode} {self.format or '?'} -> {gh}x{gw} patches "
                f"({gh * gw}), {self.decoder_tokens} decoder tokens")


@dataclass
class Inspection:
    """Everything shown about one sample."""

    key: str
    shard: str
    position: int
    source: str | None = None
    sample_id: Any = None
    kind: str | None = None
    images: list[ImageInfo] = field(default_factory=list)
    pieces: list[Piece] = field(default_factory=list)
    plain_text: str | None = None  # the rendered text when the sample could not be encoded
    tokens: int = 0
    label_tokens: int = 0
    untruncated_tokens: int | None = None
    reason: str | None = None
    message: str = ""
    raw_json: str = ""
    # a preference pair: `pieces` / the counts above are the prompt + chosen document, these the prompt + rejected
    rejected_pieces: list[Piece] = field(default_factory=list)
    rejected_tokens: int = 0
    rejected_label_tokens: int = 0

    @property
    def is_pair(self) -> bool:
        return self.kind == "preference"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`isaac-data inspect` options."""
    parser.add_argument("data", metavar="DATA",
                        help="dataset dir with index.json, an index.json, a brace pattern or a (quoted) glob of tars")
    parser.add_argument("-n", type=int, default=3, help="how many samples from the start of DATA (default 3)")
    parser.add_argument("--keys", default=None, help="comma-separated sample keys to show instead of the first -n")
    parser.add_argument("--render", metavar="OUT_DIR", type=Path, default=None,
                        help="write an HTML page per sample (images embedded) + index.html + the images as PNG")
    parser.add_argument("--color", choices=("auto", "always", "never"), default="auto",
                        help="colour label spans instead of bracketing them (auto: when stdout is a terminal)")
    add_processor_arguments(parser)


def select(shards: ShardSet, n: int, keys: str | None) -> list[tuple[int, int]]:
    """(shard, position) of the samples to show: those with the given keys, in the order given, else the first n."""
    if keys:
        wanted = [k.strip() for k in keys.split(",") if k.strip()]
        where: dict[str, tuple[int, int]] = {}
        for shard, manifest in enumerate(shards.manifests):
            for position, s in enumerate(manifest["samples"]):
                where.setdefault(s["key"], (shard, position))
        missing = [k for k in wanted if k not in where]
        if missing:
            first = ", ".join(m["samples"][0]["key"] for m in shards.manifests[:1] if m["samples"])
            raise CommandError(f"key(s) not in DATA: {', '.join(missing)}; keys are the manifest's sample keys "
                               f"(the first is {first or 'absent: the data is empty'}); see them with -n")
        return [where[k] for k in wanted]
    out = []
    for shard, count in enumerate(shards.counts):
        out.extend((shard, position) for position in range(min(count, n - len(out))))
        if len(out) >= n:
            break
    return out


def to_png(image: PIL.Image.Image) -> bytes:
    """The image as PNG bytes (modes PNG cannot hold, such as CMYK, converted to RGB)."""
    if image.mode not in PNG_MODES:
        image = image.convert("RGBA" if "A" in image.mode else "RGB")
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def image_info(index: int, member: str, data: bytes, processor: IsaacProcessor) -> ImageInfo:
    """Size, mode and format of one encoded image, and the grid and token count the processor gives it."""
    info = ImageInfo(index, member)
    try:
        image = open_image(data, f"image {index}")  # an image over the pixel limit is refused from its header
        info.format = image.format
        image.load()
    except Skip as err:
        info.error = clean_message(str(err))
        return info
    except Exception as err:  # noqa: BLE001 - PIL raises many types for bad bytes
        info.error = clean_message(f"{type(err).__name__}: {err}")
        return info
    info.size, info.mode = image.size, image.mode
    ip = processor.image_processor
    th, tw = ip.target_size(image.size[1], image.size[0])
    info.grid = (th // ip.patch_size, tw // ip.patch_size)
    info.decoder_tokens = ip.num_decoder_tokens(info.grid)
    info.png = to_png(image)
    return info


def label_pieces(sample: EncodedSample, processor: IsaacProcessor) -> list[Piece]:
    """The sample as text runs, label runs and images, in order (decoded from its tokens, so truncation shows)."""
    from isaac_train.processing.processor import IGNORE_INDEX
    from isaac_train.processing.tensor_stream import Modality

    pieces: list[Piece] = []
    position, image_index = 0, 0
    for event in sample.events:
        n = event.num_tokens()
        if event.type == Modality.image:
            pieces.append(("image", image_index))
            image_index += 1
        elif event.type == Modality.text and n:
            ids = sample.input_ids[position : position + n].tolist()
            labelled = (sample.labels[position : position + n] != IGNORE_INDEX).tolist()
            start = 0
            for i in range(1, n + 1):
                if i == n or labelled[i] != labelled[start]:
                    text = processor.tokenizer.decode(ids[start:i], skip_special_tokens=False)
                    pieces.append(("label" if labelled[start] else "text", text))
                    start = i
        position += n
    return pieces


def _plain_text(kind: str, items: list[dict[str, Any]], processor: IsaacProcessor,
                obj: dict[str, Any] | None = None) -> str | None:
    """The rendered text with `<image>` markers, for a sample that could not be encoded (None if it cannot be);
    a preference pair's two documents (prompt + chosen, prompt + rejected) one after the other."""
    try:
        if kind == "preference" and obj is not None:
            return "\n".join(f"--- prompt + {side}:\n{processor.apply_chat_template(items + obj[side])}"
                             for side in ("chosen", "rejected"))
        if kind == "chat":
            return processor.apply_chat_template(items)
        return processor.flatten_messages([{"role": "document", "content": items}])[0]["content"]
    except Exception:  # noqa: BLE001 - shown without text; the reason is reported separately
        return None


def inspect_sample(shards: ShardSet, shard: int, position: int, config: ScanConfig) -> Inspection:
    """Read, decode and process one sample and gather what `inspect` shows about it."""
    ref = shards.ref(shard, position)
    out = Inspection(ref.key, ref.shard, position)
    processor = config.processor
    try:
        members = read_sample(ref)
    except SampleReadError as err:
        out.reason, out.message = err.reason, str(err)
        return out
    out.raw_json = members["json"].decode("utf-8", errors="replace")
    try:
        obj = json.loads(members["json"])
        if isinstance(obj, dict):
            out.source, out.sample_id = obj.get("source"), obj.get("id")
    except (UnicodeDecodeError, json.JSONDecodeError):
        pass
    obj: dict[str, Any] | None = None
    try:
        out.kind, items, images, obj = parse_sample(members)
        names = [next(s for s, b in members.items() if b is data) for data in images]
    except SkipSample as err:
        out.reason, out.message = err.reason, clean_message(str(err))
        items, names = [], image_members(members)
        images = [members[s] for s in names]
    out.images = [image_info(i, name, data, processor) for i, (name, data) in enumerate(zip(names, images,
                                                                                                strict=True))]
    if out.reason is not None:
        return out
    if out.is_pair:
        return _inspect_pair(out, members, items, obj, config)
    try:
        sample = encode_members(members, processor, config.max_length, config.length_policy)
    except SkipSample as err:
        out.reason, out.message = err.reason, clean_message(str(err))
        out.plain_text = _plain_text(out.kind, items, processor)
        return out
    except Exception as err:  # noqa: BLE001 - shown, as validate reports it
        out.reason, out.message = "unhandled_error", f"{type(err).__name__}: {err}"
        return out
    out.pieces = label_pieces(sample, processor)
    out.tokens, out.label_tokens = len(sample), sample.num_label_tokens
    if config.length_policy == "truncate":
        out.untruncated_tokens = len(encode_members(members, processor, 1 << 40, "truncate"))
    return out


def _inspect_pair(out: Inspection, members: dict[str, bytes], items: list[dict[str, Any]], obj: dict[str, Any] | None,
                  config: ScanConfig) -> Inspection:
    """A preference pair's two documents, as objective=dpo encodes them."""
    processor = config.processor
    try:
        chosen, rejected = decode.encode_pair(members, processor, config.max_length)
    except SkipSample as err:
        out.reason, out.message = err.reason, clean_message(str(err))
        out.plain_text = _plain_text("preference", items, processor, obj)
        return out
    except Exception as err:  # noqa: BLE001 - shown, as validate reports it
        out.reason, out.message = "unhandled_error", f"{type(err).__name__}: {err}"
        return out
    out.pieces, out.rejected_pieces = label_pieces(chosen, processor), label_pieces(rejected, processor)
    out.tokens, out.label_tokens = len(chosen), chosen.num_label_tokens
    out.rejected_tokens, out.rejected_label_tokens = len(rejected), rejected.num_label_tokens
    return out


def format_pieces(ins: Inspection, vision_token: str, color: bool, pieces: list[Piece] | None = None) -> str:
    """The sample's text (or `pieces`) with `<image>` markers and label runs bracketed (or coloured)."""
    parts = []
    for kind, value in ins.pieces if pieces is None else pieces:
        if kind == "image":
            parts.append(f"{ANSI_IMAGE}{vision_token}{ANSI_RESET}" if color else vision_token)
        elif kind == "label":
            parts.append(f"{ANSI_LABEL}{value}{ANSI_RESET}" if color else f"{LABEL_OPEN}{value}{LABEL_CLOSE}")
        else:
            parts.append(value)
    return "".join(parts)


def print_inspection(ins: Inspection, vision_token: str, color: bool) -> None:
    """One sample, as text on stdout."""
    print(f"=== {ins.key}  ({Path(ins.shard).name} #{ins.position})")
    print(f"source: {ins.source or '-'}   id: {ins.sample_id if ins.sample_id is not None else '-'}   "
          f"kind: {ins.kind or '-'}")
    for image in ins.images:
        print(f"  {image.describe()}")
    if ins.reason is not None:
        print(f"SKIPPED by the loader: {ins.reason}: {ins.message}")
        if ins.plain_text is not None:
            print("text (no labels: the sample is skipped):")
            print(_indent(ins.plain_text))
        else:
            print(f"json: {ins.raw_json[:1000]}")
        print()
        return
    legend = "labels in green" if color else f"labels in {LABEL_OPEN} {LABEL_CLOSE}"
    if ins.is_pair:
        shown = sum(k == "image" for k, _ in ins.pieces)
        print(f"preference pair: tokens {ins.tokens + ins.rejected_tokens} (chosen {ins.tokens} + rejected "
              f"{ins.rejected_tokens}, one row, never truncated)   label tokens: chosen {ins.label_tokens}, "
              f"rejected {ins.rejected_label_tokens}   images: {shown}{' (both documents)' if shown else ''}")
        for side, pieces in (("chosen", ins.pieces), ("rejected", ins.rejected_pieces)):
            print(f"prompt + {side} ({legend}, {vision_token} where an image goes):")
            print(_indent(format_pieces(ins, vision_token, color, pieces)))
        print()
        return
    cut = ""
    if ins.untruncated_tokens is not None and ins.untruncated_tokens != ins.tokens:
        cut = f" (cut from {ins.untruncated_tokens} to fit --max-length)"
    print(f"tokens: {ins.tokens}{cut}   label tokens: {ins.label_tokens}   images: "
          f"{sum(k == 'image' for k, _ in ins.pieces)}")
    print(f"text ({legend}, {vision_token} where an image goes):")
    print(_indent(format_pieces(ins, vision_token, color)))
    print()


def _indent(text: str) -> str:
    """Text indented by four spaces, trailing newlines dropped."""
    return "\n".join("    " + line for line in text.rstrip("\n").split("\n"))


# ---- HTML -----------------------------------------------------------------------------------------------

_STYLE = """body{font-family:sans-serif;margin:1.5em;max-width:1400px}
.row{display:flex;gap:2em;align-items:flex-start}.text{flex:3}.images{flex:2}
pre{white-space:pre-wrap;word-break:break-word;background:#f6f6f6;padding:1em;font-size:14px}
mark{background:#b9f0b4}img{max-width:100%;border:1px solid #999}
pre img{max-width:240px;display:block;margin:4px 0}
table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px;vertical-align:top;text-align:left}
.skip{color:#b00;font-weight:bold}"""


def safe_name(key: str) -> str:
    """A file name for a sample key."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", key) or "_"


def _data_uri(png: bytes) -> str:
    """PNG bytes as a data: URI for an embedded <img>."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def render_html(ins: Inspection, out_dir: Path, vision_token: str) -> Path:
    """Write OUT_DIR/KEY.html (images embedded) and OUT_DIR/KEY.N.png; returns the page's path."""
    name = safe_name(ins.key)
    for image in ins.images:
        if image.png is not None:
            (out_dir / f"{name}.{image.index}.png").write_bytes(image.png)
    if ins.reason is not None:
        body_text = html.escape(ins.plain_text if ins.plain_text is not None else ins.raw_json)
        status = f'<p class="skip">skipped by the loader: {html.escape(ins.reason)}: {html.escape(ins.message)}</p>'
    elif ins.is_pair:
        body_text = "".join(f"<b>prompt + {side}</b>\n{_html_pieces(ins, pieces, vision_token)}\n\n"
                            for side, pieces in (("chosen", ins.pieces), ("rejected", ins.rejected_pieces)))
        status = (f"<p>preference pair: {ins.tokens + ins.rejected_tokens} tokens (chosen {ins.tokens} + rejected "
                  f"{ins.rejected_tokens}), label tokens (<mark>highlighted</mark>): chosen {ins.label_tokens}, "
                  f"rejected {ins.rejected_label_tokens}</p>")
    else:
        body_text = _html_pieces(ins, ins.pieces, vision_token)
        status = (f"<p>{ins.tokens} tokens, {ins.label_tokens} label tokens "
                  f"(<mark>highlighted</mark>)" + (f", cut from {ins.untruncated_tokens}" if
                                                   ins.untruncated_tokens not in (None, ins.tokens) else "") + "</p>")
    rows = []
    for image in ins.images:
        cell = f'<img src="{_data_uri(image.png)}">' if image.png else ""
        rows.append(f"<tr><td>{cell}</td><td>{html.escape(image.describe())}<br>"
                    f"<a href=\"{name}.{image.index}.png\">{name}.{image.index}.png</a></td></tr>")
    page = (f"<!doctype html><html><head><meta charset=\"utf-8\"><title>{html.escape(ins.key)}</title>"
            f"<style>{_STYLE}</style></head><body><p><a href=\"index.html\">all samples</a></p>"
            f"<h1>{html.escape(ins.key)}</h1><p>{html.escape(Path(ins.shard).name)} #{ins.position} &middot; "
            f"source {html.escape(str(ins.source or '-'))} &middot; id {html.escape(str(ins.sample_id or '-'))} "
            f"&middot; {html.escape(ins.kind or '-')}</p>{status}"
            f"<div class=\"row\"><div class=\"text\"><h2>text</h2><pre>{body_text}</pre></div>"
            f"<div class=\"images\"><h2>images</h2><table>{''.join(rows)}</table></div></div></body></html>\n")
    path = out_dir / f"{name}.html"
    path.write_text(page, encoding="utf-8")
    return path


def _html_pieces(ins: Inspection, pieces: list[Piece], vision_token: str) -> str:
    """Text runs escaped, label runs marked, images embedded where they go."""
    parts = []
    for kind, value in pieces:
        if kind == "image":
            image = ins.images[value]
            img = f'<img src="{_data_uri(image.png)}" alt="image {value}">' if image.png else ""
            parts.append(f"{html.escape(vision_token)}{img}")
        elif kind == "label":
            parts.append(f"<mark>{html.escape(value)}</mark>")
        else:
            parts.append(html.escape(value))
    return "".join(parts)


def render_index(inspections: list[Inspection], out_dir: Path) -> Path:
    """OUT_DIR/index.html linking every sample page."""
    items = []
    for ins in inspections:
        tokens = ins.tokens + ins.rejected_tokens
        what = f"skipped: {ins.reason}" if ins.reason else f"{tokens} tokens, {len(ins.images)} image(s)"
        items.append(f"<li><a href=\"{safe_name(ins.key)}.html\">{html.escape(ins.key)}</a> "
                     f"({html.escape(str(ins.source or '-'))}, {html.escape(what)})</li>")
    path = out_dir / "index.html"
    path.write_text(f"<!doctype html><html><head><meta charset=\"utf-8\"><title>samples</title>"
                    f"<style>{_STYLE}</style></head><body><h1>samples</h1><ul>{''.join(items)}</ul></body></html>\n",
                    encoding="utf-8")
    return path


def run(args: argparse.Namespace) -> int:
    """Exit code 0, or 2 when the inputs are unusable (unknown key, no shards, bad --processor)."""
    try:
        shards = open_shards(args.data)
        chosen = select(shards, args.n, args.keys)
        processor = load_processor(args.processor)
        config = ScanConfig(processor, resolve_max_length(processor, args.max_length), args.length_policy,
                            max_image_pixels=apply_image_limit(args.max_image_pixels))
    except CommandError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    color = args.color == "always" or (args.color == "auto" and sys.stdout.isatty())
    inspections = []
    for shard, position in tqdm(chosen, desc="inspect", unit="sample", disable=len(chosen) < 20):
        ins = inspect_sample(shards, shard, position, config)
        inspections.append(ins)
        print_inspection(ins, processor.vision_token, color)
    if args.render is not None:
        args.render.mkdir(parents=True, exist_ok=True)
        for ins in inspections:
            render_html(ins, args.render, processor.vision_token)
        index = render_index(inspections, args.render)
        print(f"wrote {len(inspections)} page(s) and their images to {args.render}; open {index}")
    return 0

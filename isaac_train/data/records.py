"""Chat records as `isaac-data make-shards` reads them (Isaac `messages` or LLaVA `conversations`, images as
paths, bytes or markers) -> Isaac samples with their images read and checked. Shared by the converters
(data_tools/converters.py) and evaluation on chat JSONL (isaac_train/eval/samples.py), so the library never
imports its command-line tools. A record that cannot be used raises `Skip` with its reason.
"""

from __future__ import annotations

import io
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import PIL.Image

from ..processing.limits import MAX_PIXELS

IMAGE_MARKER = "<image>"
KEPT_FORMATS = {"JPEG": "jpg", "MPO": "jpg", "PNG": "png", "WEBP": "webp"}  # kept as they are; others -> PNG
# (MPO: camera JPEGs with extra frames; every JPEG decoder shows the first)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
ROLES = {"user": "user", "human": "user", "assistant": "assistant", "gpt": "assistant", "system": "system"}


class Skip(Exception):
    """One record that is left out, counted under `reason` (e.g. "missing_image")."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass
class Converted:
    """A converted sample: its JSON object (without `source`), its encoded images as (suffix, bytes), and the
    (reason, message) of each image left out of it (documents with --drop-missing-images only)."""

    sample: dict[str, Any]
    images: list[tuple[str, bytes]] = field(default_factory=list)
    dropped: list[tuple[str, str]] = field(default_factory=list)

    @property
    def id(self) -> str | None:
        value = self.sample.get("id")
        return None if value is None else str(value)


# ---- images -----------------------------------------------------------------------------------------------

# The default of data.max_image_pixels and make-shards' --max-image-pixels: Isaac's own processor refuses images
# over 60,000,000 pixels (Perceptron's rule, isaac_spec.md section 3), so a lower default would refuse images that
# Isaac takes (a 48 MP phone photo), and a higher one would only decode images that are refused afterwards.
DEFAULT_MAX_IMAGE_PIXELS = MAX_PIXELS
_max_image_pixels = DEFAULT_MAX_IMAGE_PIXELS
_PIL_PIXELS = re.compile(r"\((\d+) pixels\)")


def set_max_image_pixels(limit: int) -> None:
    """Make `limit` this process's image pixel limit: open_image refuses images over it from their header, and
    PIL's own decompression-bomb check (PIL.Image.MAX_IMAGE_PIXELS, which warns past it and refuses past twice it)
    is set to the same, so a path that opens an image without open_image is held to the same bound."""
    global _max_image_pixels
    if not 1 <= limit <= MAX_PIXELS:
        raise ValueError(f"the image pixel limit must be within [1, {MAX_PIXELS:,}] (Isaac's processor refuses "
                         f"larger images), got {limit}")
    _max_image_pixels = int(limit)
    PIL.Image.MAX_IMAGE_PIXELS = int(limit)


def max_image_pixels() -> int:
    """This process's image pixel limit (set_max_image_pixels; DEFAULT_MAX_IMAGE_PIXELS unless set)."""
    return _max_image_pixels


def open_image(data: bytes, where: str) -> PIL.Image.Image:
    """`data` opened lazily (PIL reads the header, not the pixels) after its width x height passed the pixel limit.

    Raises Skip("image_too_large") over max_image_pixels(), Skip("corrupt_image") when PIL does not recognise it;
    nothing is decoded either way. The caller decodes (`.load()`, `.convert()`) and closes."""
    limit = _max_image_pixels
    try:
        with warnings.catch_warnings():
            # PIL warns at open past its own limit; the image is refused just below, with the setting named
            warnings.simplefilter("ignore", PIL.Image.DecompressionBombWarning)
            image = PIL.Image.open(io.BytesIO(data))
    except PIL.Image.DecompressionBombError as err:  # past twice PIL's limit PIL refuses at open, header read
        found = _PIL_PIXELS.search(str(err))
        size = f"{int(found.group(1)):,} pixels" if found else f"over {2 * (PIL.Image.MAX_IMAGE_PIXELS or 0):,} pixels"
        raise Skip("image_too_large", _too_large(where, size, limit)) from err
    except PIL.UnidentifiedImageError as err:
        raise Skip("corrupt_image", f"{where}: not an image (PIL does not recognise the format)") from err
    except Exception as err:  # PIL raises many types (OSError, SyntaxError, ValueError...) for bad headers
        raise Skip("corrupt_image", f"{where}: cannot read the image ({type(err).__name__}: {err})") from err
    w, h = image.size
    if w * h > limit:
        image.close()
        raise Skip("image_too_large", _too_large(where, f"{w}x{h} = {w * h:,} pixels", limit))
    return image


def _too_large(where: str, size: str, limit: int) -> str:
    return (f"{where}: image of {size} is over the limit of {limit:,} pixels (data.max_image_pixels, make-shards "
            "--max-image-pixels); not decoded")


def check_image(data: bytes, where: str) -> tuple[str, bytes]:
    """Decode `data` fully with PIL to prove it is a usable image -> (extension, bytes to store).

    JPEG, PNG and WebP are stored as they are; other formats (BMP, GIF, TIFF, ...) are re-encoded as PNG.
    Raises Skip("image_too_large") from the header past max_image_pixels() (never decoded), Skip("corrupt_image")
    when PIL cannot decode it.
    """
    with open_image(data, where) as img:
        try:
            fmt, (w, h) = img.format, img.size
            if w == 0 or h == 0:
                raise Skip("corrupt_image", f"{where}: image has zero size ({w}x{h})")
            img.load()
            if fmt in KEPT_FORMATS:
                return KEPT_FORMATS[fmt], bytes(data)
            return "png", _png_bytes(img)
        except Skip:
            raise
        except PIL.Image.DecompressionBombError as err:  # a later frame or tile past PIL's limit (set alike)
            raise Skip("image_too_large", f"{where}: {err}") from err
        except Exception as err:  # PIL raises many types (OSError, SyntaxError, ValueError...) for bad bytes
            raise Skip("corrupt_image", f"{where}: cannot decode the image ({type(err).__name__}: {err})") from err


def _png_bytes(img: PIL.Image.Image) -> bytes:
    """Re-encode an image as PNG (modes PNG cannot hold, e.g. CMYK or YCbCr, become RGB/RGBA)."""
    if img.mode not in ("1", "L", "LA", "I", "I;16", "P", "RGB", "RGBA"):
        img = img.convert("RGBA" if "A" in img.mode else "RGB")
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def read_image_ref(ref: Any, root: Path, where: str) -> bytes:
    """The encoded bytes of an image reference: a path (relative to `root`), raw bytes, a Hugging Face image
    dict {"bytes", "path"} or a PIL image. Raises Skip("missing_image") when there is nothing to read."""
    if isinstance(ref, (bytes, bytearray)):
        return bytes(ref)
    if isinstance(ref, PIL.Image.Image):
        return _png_bytes(ref)
    if isinstance(ref, dict):
        if ref.get("bytes"):
            return bytes(ref["bytes"])
        ref = ref.get("path")
    if not isinstance(ref, str) or not ref:
        raise Skip("missing_image", f"{where}: image reference {ref!r:.80} is neither a path nor image bytes")
    if ref.startswith(("http://", "https://")):
        raise Skip("missing_image", f"{where}: {ref} is a URL; make-shards reads local files only (download the "
                                    "images and pass --image-root)")
    path = Path(ref) if Path(ref).is_absolute() else root / ref
    try:
        return path.read_bytes()
    except FileNotFoundError as err:
        raise Skip("missing_image", f"{where}: image file {path} does not exist (check --image-root)") from err
    except OSError as err:
        raise Skip("missing_image", f"{where}: image file {path} cannot be read ({err})") from err


def load_images(refs: list[Any], root: Path, where: str) -> list[tuple[str, bytes]]:
    """Read and verify each image in order -> members [("0.jpg", b"..."), ("1.png", b"..."), ...]."""
    out = []
    for k, ref in enumerate(refs):
        name = ref if isinstance(ref, str) else ref.get("path") if isinstance(ref, dict) else None
        label = f"{where} image {k}" + (f" ({name})" if name else "")
        ext, data = check_image(read_image_ref(ref, root, label), label)
        out.append((f"{k}.{ext}", data))
    return out


# ---- conversations ----------------------------------------------------------------------------------------


def split_markers(text: str) -> list[dict[str, Any]]:
    """Text with `<image>` markers -> text/image items, images at the markers' positions. One newline right
    after or before a marker is dropped (LLaVA writes "<image>\\nQuestion"); empty text pieces are dropped."""
    parts = text.split(IMAGE_MARKER)
    items: list[dict[str, Any]] = []
    for i, part in enumerate(parts):
        if i > 0:
            items.append({"type": "image"})
            part = part.removeprefix("\n")
        if i < len(parts) - 1:
            part = part.removesuffix("\n")
        if part:
            items.append({"type": "text", "text": part})
    return items


def _content_items(content: Any, where: str) -> tuple[str | list[dict[str, Any]], list[Any]]:
    """A message's content -> (Isaac content, the image reference of each image item, None = take from the
    sample's image list). Plain text without markers stays a string."""
    if content is None:
        return "", []
    if isinstance(content, str):
        if IMAGE_MARKER not in content:
            return content, []
        items = split_markers(content)
        return items, [None for it in items if it["type"] == "image"]
    if not isinstance(content, list):
        raise Skip("bad_schema", f"{where}: content must be a string or a list of items, got {type(content).__name__}")
    items, refs = [], []
    for item in content:
        kind = item.get("type") if isinstance(item, dict) else None
        if kind == "text":
            text = item.get("text")
            for piece in split_markers("" if text is None else str(text)):
                items.append(piece)
                if piece["type"] == "image":
                    refs.append(None)
        elif kind == "image":
            items.append({"type": "image"})
            refs.append(item.get("image") or item.get("path") or None)
        else:
            raise Skip("bad_schema", f"{where}: content item of type {kind!r}; Isaac takes 'text' and 'image' items")
    return items, refs


def convert_conversation(turns: Any, images: list[Any], where: str) -> tuple[list[dict[str, Any]], list[Any]]:
    """Isaac-format or LLaVA-format turns + the sample's image list -> (Isaac messages, image references in
    order of use).

    Image items that name a file use it; the others take the sample's images in order, and their counts must
    match (else Skip("image_count_mismatch")). A conversation with images but no image item or marker at all
    gets them at the start of its first user turn.
    """
    if not isinstance(turns, list) or not turns:
        raise Skip("bad_schema", f"{where}: the conversation must be a non-empty list of turns")
    messages, refs = [], []
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict):
            raise Skip("bad_schema", f"{where}: turn {i} is a {type(turn).__name__}, not an object")
        raw_role = turn.get("role", turn.get("from"))
        role = ROLES.get(str(raw_role).lower()) if raw_role is not None else None
        if role is None:
            raise Skip("bad_schema", f"{where}: turn {i} has role {raw_role!r}; use user/assistant/system "
                                     "(or LLaVA's human/gpt/system)")
        content, item_refs = _content_items(turn["content"] if "content" in turn else turn.get("value"),
                                            f"{where} turn {i}")
        messages.append({"role": role, "content": content})
        refs.extend(item_refs)
    if not any(m["role"] == "assistant" and m["content"] for m in messages):
        raise Skip("no_assistant_turn", f"{where}: no assistant turn with content (nothing to learn)")
    if not refs and images:
        first_user = next((m for m in messages if m["role"] == "user"), None)
        if first_user is None:
            raise Skip("image_count_mismatch", f"{where}: {len(images)} image(s) but no user turn to put them in")
        content = first_user["content"]
        if isinstance(content, str):
            content = [{"type": "text", "text": content}] if content else []
        first_user["content"] = [{"type": "image"} for _ in images] + content
        return messages, list(images)
    pathless = sum(r is None for r in refs)
    if pathless != len(images):
        raise Skip("image_count_mismatch", f"{where}: {pathless} image item(s)/marker(s) without a file but "
                                           f"{len(images)} image(s) listed")
    pending = iter(images)
    return messages, [next(pending) if r is None else r for r in refs]


def _as_list(value: Any) -> list[Any]:
    """None -> [], a list/tuple -> a list, anything else -> [it]."""
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


def convert_record(obj: Any, root: Path, where: str) -> Converted:
    """One chat record -> Converted. Takes `messages` (Isaac format) or `conversations` (LLaVA format), images
    from `images` (a list) or `image` (one or a list), and the optional `id`."""
    if not isinstance(obj, dict):
        raise Skip("bad_json", f"{where}: expected a JSON object, got {type(obj).__name__}")
    turns = obj.get("messages") if obj.get("messages") is not None else obj.get("conversations")
    if turns is None:
        raise Skip("bad_schema", f"{where}: no 'messages' (or LLaVA 'conversations') in the record")
    images = _as_list(obj.get("images")) or _as_list(obj.get("image"))
    messages, refs = convert_conversation(turns, images, where)
    sample: dict[str, Any] = {}
    if obj.get("id") is not None:
        sample["id"] = obj["id"] if isinstance(obj["id"], (int, str)) else str(obj["id"])
    sample["messages"] = messages
    return Converted(sample, load_images(refs, root, where))

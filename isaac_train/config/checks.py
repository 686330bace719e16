"""Checks beyond `validate`: keys the schema does not have, and the paths a run will read.

`check_keys` runs on Hydra's composition (a `+train.foo=1` would otherwise be dropped silently); `check_paths`
runs on the typed Config, reading only file names, JSON files and safetensors headers, so a wrong path is named
before any model, process group or data loader exists.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import typing
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from ..data.shards import INDEX_NAME, _resolve, manifest_path
from .schema import Config, ConfigError

VISION_PREFIX = "model.vision_embedding.0."  # Isaac's vision tower, the same in both Perceptron layouts
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


def _fields(cls: type) -> dict[str, typing.Any]:
    return typing.get_type_hints(cls)


def unknown_key(key: str) -> ConfigError:
    """The error for a key the schema does not have: the closest valid key, or the valid keys of its section."""
    parts, cls = key.split("."), Config
    for i, part in enumerate(parts[:-1]):
        kind = _fields(cls).get(part)
        if kind is None:
            return unknown_key(".".join(parts[: i + 1]))
        if not dataclasses.is_dataclass(kind):
            if kind is typing.Any or typing.get_origin(kind) is dict:  # free dict (strategy.zero): keys added with +
                return ConfigError(f"{key}: not set yet; add it with +{key}=VALUE")
            return ConfigError(f"{key}: {'.'.join(parts[: i + 1])} is a value, not a section")
        cls = kind
    section, name, valid = ".".join(parts[:-1]), parts[-1], list(_fields(cls))
    close = difflib.get_close_matches(name, valid, n=1)
    if close:
        return ConfigError(f"{key}: unknown key; did you mean {section + '.' if section else ''}{close[0]}?")
    return ConfigError(f"{key}: unknown key; valid keys {'in ' + section if section else 'at the top'}: "
                       f"{', '.join(valid)}")


def check_keys(cfg: DictConfig) -> None:
    """Every key of the composition is a schema field, also those added with `+` (OmegaConf.to_object would
    drop them silently)."""
    _check_section(OmegaConf.to_container(cfg, resolve=False), Config, "")


def _check_section(node: dict, cls: type, prefix: str) -> None:
    fields = _fields(cls)
    for key, value in node.items():
        if key not in fields:
            raise unknown_key(prefix + str(key))
        if dataclasses.is_dataclass(fields[key]) and isinstance(value, dict):
            _check_section(value, fields[key], f"{prefix}{key}.")


class _Problem(Exception):
    """What is wrong with one path; check_paths adds the key."""


def check_paths(cfg: Config) -> None:
    """Shards, checkpoint and processor directories exist and hold what the run will read (ConfigError if not)."""
    d, m = cfg.data, cfg.model
    checks = []
    for key, spec in (("data.train_shards", d.train_shards), ("data.eval_shards", d.eval_shards)):
        entries = [] if spec is None else spec if isinstance(spec, (list, tuple)) else [spec]
        checks += [(key, _check_shards, str(entry)) for entry in entries]
    if m.pretrained:
        checks.append(("model.pretrained", _check_checkpoint, Path(m.pretrained)))
    if d.processor or m.pretrained:
        checks.append(("data.processor" if d.processor else "model.pretrained", _check_processor,
                       Path(d.processor or m.pretrained)))
    checks.append(("run.output_dir", _check_writable, Path(cfg.run.output_dir)))  # before Hydra writes its log there
    for key, check, value in checks:
        try:
            check(value)
        except _Problem as problem:
            raise ConfigError(f"{key}: {problem}") from None


def _check_writable(directory: Path) -> None:
    from ..checkpoint.integrity import describe_unwritable, write_problem

    err = write_problem(directory)
    if err is not None:
        raise _Problem(describe_unwritable(err, directory))


def _check_shards(spec: str) -> None:
    try:
        tars = _resolve(spec)  # the loader's own resolution: what passes here is what it will read
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise _Problem(f"{spec}: unreadable {INDEX_NAME} ({err})") from None
    path = Path(spec)
    if not tars and path.is_dir():
        raise _Problem(f"{spec} has no {INDEX_NAME}; write one with `isaac-data index {spec}`")
    if not tars and ("{" in spec or any(ch in spec for ch in "*?[")):
        raise _Problem(f"{spec} matches no file")
    if not tars:
        raise _Problem(f"{spec} does not exist" if not path.exists() else
                       f"{spec} is not a shard directory, {INDEX_NAME}, .tar file, brace pattern or glob")
    absent = [t for t in tars if not Path(t).is_file()]
    if absent and len(absent) == len(tars) > 1:
        raise _Problem(f"{spec} matches no file (none of its {len(tars)} names exists, e.g. {absent[0]})")
    if absent:
        more = f" ({len(absent)} of the {len(tars)} shards of {spec} are missing)" if len(tars) > 1 else ""
        raise _Problem(f"{absent[0]} does not exist{more}")
    for tar in tars:
        if not manifest_path(tar).is_file():
            raise _Problem(f"{tar} has no manifest ({manifest_path(tar).name}); "
                           f"write one with `isaac-data index {Path(tar).parent}`")


def _check_checkpoint(path: Path) -> None:
    """An Isaac checkpoint: config.json with model_type isaac and safetensors weights with the vision tower."""
    _require_dir(path)
    config = _read_json(path / "config.json")
    if config.get("model_type") != "isaac":
        raise _Problem(f"{path} holds model_type {config.get('model_type')!r}, not an Isaac checkpoint ('isaac'); "
                       "point it at an Isaac directory, or leave it unset to train model.size from scratch")
    keys = _weight_keys(path)
    if not any(k.startswith(VISION_PREFIX) for k in keys):
        raise _Problem(f"{path} has no vision tower weights ({VISION_PREFIX}*; {len(keys)} tensors such as "
                       f"{min(keys, default='none')!r}): not a complete Isaac checkpoint")


def _weight_keys(path: Path) -> list[str]:
    """Tensor names from model.safetensors.index.json, else from the safetensors headers."""
    index = path / "model.safetensors.index.json"
    if index.is_file():
        weight_map = _read_json(index).get("weight_map") or {}
        absent = sorted({f for f in weight_map.values() if not (path / f).is_file()})
        if absent:
            raise _Problem(f"{path / absent[0]} (listed in {index.name}) does not exist")
        return list(weight_map)
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise _Problem(f"{path} has no safetensors weights (model.safetensors or model.safetensors.index.json)")
    keys: list[str] = []
    for file in files:
        try:
            keys.extend(safetensors_keys(file))
        except (OSError, ValueError) as err:
            raise _Problem(f"{file} is not a readable safetensors file ({err})") from None
    return keys


def safetensors_keys(file: Path) -> list[str]:
    """The tensor names of a safetensors file, from its header alone (8-byte little-endian length, then JSON):
    safetensors' own reader imports torch, which a config check must not wait for. Raises ValueError when the
    header is not one safetensors writes (a length past the end, JSON that is not a table of tensors whose data
    lies inside the file)."""
    size = file.stat().st_size
    with open(file, "rb") as f:
        head = f.read(8)
        n = int.from_bytes(head, "little") if len(head) == 8 else -1
        if not 2 <= n <= size - 8:
            raise ValueError(f"header length {n} does not fit in {size} bytes")
        header = json.loads(f.read(n))
    if not isinstance(header, dict):
        raise ValueError("the header is not a JSON object")
    tensors = {k: v for k, v in header.items() if k != "__metadata__"}
    for name, entry in tensors.items():
        start, end = (entry.get("data_offsets") or (None, None)) if isinstance(entry, dict) else (None, None)
        if not (isinstance(start, int) and isinstance(end, int) and 0 <= start <= end <= size - 8 - n):
            raise ValueError(f"tensor {name!r} has no data_offsets inside the file")
    return list(tensors)


def _check_processor(path: Path) -> None:
    """What IsaacProcessor.from_pretrained reads: tokenizer files and the image settings."""
    _require_dir(path)
    if not any((path / f).is_file() for f in TOKENIZER_FILES):
        raise _Problem(f"{path} has no tokenizer ({' or '.join(TOKENIZER_FILES)}); "
                       "set data.processor=/dir/with/tokenizer")
    if not any((path / f).is_file() for f in ("processor_config.json", "config.json")):
        raise _Problem(f"{path} has neither processor_config.json nor config.json (Isaac's image settings)")


def _require_dir(path: Path) -> None:
    if not path.is_dir():
        raise _Problem(f"{path} {'is not a directory' if path.exists() else 'does not exist'}")


def _read_json(file: Path) -> dict:
    if not file.is_file():
        raise _Problem(f"{file.parent} has no {file.name} (not a Hugging Face checkpoint directory)")
    try:
        data = json.loads(file.read_text())
    except (OSError, ValueError) as err:
        raise _Problem(f"{file} is not valid JSON ({err})") from None
    if not isinstance(data, dict):
        raise _Problem(f"{file} does not hold a JSON object")
    return data

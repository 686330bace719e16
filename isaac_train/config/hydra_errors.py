"""Hydra's and OmegaConf's composition errors as one ConfigError line naming the key (their own messages span
several lines, name no key for parse errors, and suggest `+key=...` for keys our schema does not have)."""

from __future__ import annotations

import re

from hydra.errors import HydraException, MissingConfigException, OverrideParseException
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

from .checks import unknown_key
from .schema import ConfigError

_NOISE = ("See https://", "Config search path", "full_key:", "reference_type=", "object_type=", "Available options")


def as_config_error(err: Exception, overrides: list[str]) -> ConfigError:
    """The ConfigError for an exception raised while composing `overrides` (or converting the result)."""
    if isinstance(err, OverrideParseException):
        return _parse_error(overrides)
    if isinstance(err, MissingConfigException) and err.missing_cfg_file:
        group, _, option = err.missing_cfg_file.rpartition("/")
        options = f"; choose one of {', '.join(err.options)}" if err.options else ""
        return ConfigError(f"{group or option}: no option {option!r}{options}")
    cause = err if isinstance(err, OmegaConfBaseException) else err.__cause__
    key = getattr(cause, "full_key", None)
    if key and isinstance(cause, (ConfigAttributeError, ConfigKeyError)):
        return unknown_key(key)
    lines = _lines(cause if key else err)
    if not key:  # Hydra's own composition errors quote the key or the override in their first line
        quoted = re.search(r"'([^']+)'", lines[0])
        key = quoted.group(1).split("=")[0].lstrip("+~") if quoted else "overrides"
    return ConfigError(f"{key}: {(' ' if lines[0].endswith('.') else '; ').join(lines[:2])}")


def _lines(err: BaseException) -> list[str]:
    """The message lines that say something (no search path, doc links or OmegaConf's key/type trailer)."""
    lines = [line.strip() for line in str(err).splitlines()]
    return [line for line in lines if line and not line.startswith(_NOISE)] or [type(err).__name__]


def _parse_error(overrides: list[str]) -> ConfigError:
    """Hydra names no override when its grammar fails: parse them one by one to find it."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    for override in overrides:
        try:
            parser.parse_override(override)
        except HydraException as err:
            key = override.split("=", 1)[0].lstrip("+~")
            why = next((line for line in _lines(err) if not line.startswith("Error parsing")), "")
            why = why.split(" expecting ")[0]
            return ConfigError(f"{key}: cannot parse {override!r} ({why}); "
                               f"quote a value with special characters: {key}='...'")
    return ConfigError("overrides: Hydra could not parse the command line")

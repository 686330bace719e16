"""The rewards of objective=grpo: a number per generated answer, from isaac-eval's own scorers (eval/metrics.py).

`objective.rewards` names the rewards (default `[auto]`), `objective.reward_weights` their weights (default 1
each); a completion's reward is the weighted sum. Built-in rewards, each in [0, 1] (E expected boxes, P predicted
boxes, M malformed tags, TP predicted boxes matched at IoU >= 0.5, as eval.metrics.grounding counts them):

    exact         1 when the completion equals the expected answer after eval's normalize (case, spaces, quotes,
                  trailing punctuation); contains: 1 when the normalised expected answer is in the completion
    choice        1 when the option picked (a letter, or an option's text; options: meta.options or meta.choices)
                  is the expected one
    grounding     summed IoU of the matched boxes / max(E, P + M): extra and malformed boxes dilute it, so ten
                  boxes with one perfect where one is expected earn 0.1
    grounding_f1  F1 at IoU 0.5: 2 TP / (E + P + M)
    all_found     1 when every expected box is matched (TP = E) and nothing else was emitted (P = E, M = 0)
    point         point-in-box hits (one point per expected box) / max(E, predicted points + M)
    format        1 when no tag is malformed and, if the expected answer holds grounding tags, at least one parses
    auto          the metric isaac-eval picks for the sample (eval/score.py metric_for): grounding -> grounding_f1
                  (the hits at IoU 0.5 that isaac-eval's precision and recall count), choice -> choice, contains ->
                  contains, exact -> exact (default)

Why auto scores boxes by grounding_f1, not by the IoU: measured on the CPU demo (docs/performance.md), GRPO with
the IoU reward taught the small model to hedge, one large box whatever the question (a box over four of the nine
cells earns about 0.25 from most targets), and held-out recall@0.5 fell from 14.7% to 3.9%; a reward paid only for
a hit at IoU 0.5 pays nothing for hedging. `grounding` stays for models that already place boxes well (VLM-R1's
IoU reward), best beside grounding_f1.

No box expected: grounding, grounding_f1, all_found and point are 1 when the completion has no grounding tag at
all (parsed or malformed) and 0 otherwise, so "nothing to locate" is rewarded for emitting nothing. `auto` scores
such a sample (meta.type=grounding with a text answer, or an answer of points only) by `exact` instead.

A reward of yours is named by its import path, "pkg.module:function", imported when Rewards is built, and called
as fn(prompt=sample.messages, completion=completion, expected=sample.expected, meta=sample.meta); it returns a
finite number (a bool counts). A reward that raises or returns anything else never stops training: its value for
that completion is NaN and adds nothing to the total (TRL's rule for a None reward; none left: total 0.0), the
failure is counted in `Rewards.failures[name]`, and the first failure of each reward is logged with its traceback.
"""

from __future__ import annotations

import importlib
import logging
import math
import numbers
from collections import Counter
from collections.abc import Callable, Sequence
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import numpy as np

from ..config.schema import ConfigError
from ..eval.metrics import contains as contains_metric
from ..eval.metrics import exact_match, multiple_choice
from ..eval.metrics import grounding as grounding_counts
from ..eval.score import metric_for
from ..processing.grounding import parse_grounding

if TYPE_CHECKING:
    from ..eval.samples import EvalSample

logger = logging.getLogger(__name__)
Reward = Callable[["EvalSample", str], float]


@lru_cache(maxsize=64)
def _counts(completion: str, expected: str) -> dict[str, float]:
    """eval.metrics.grounding's counts, computed once when several rewards score the same answer (read only)."""
    return grounding_counts(completion, expected)


def _boxes(completion: str, expected: str, value: Callable[..., float]) -> float:
    """value(E, P, M, counts) when boxes are expected; else 1 for an answer without any grounding tag, 0 with."""
    c = _counts(completion, expected)
    if c["expected_boxes"] == 0:
        return float(c["predicted_boxes"] + c["predicted_points"] + c["malformed"] == 0)
    return value(c["expected_boxes"], c["predicted_boxes"], c["malformed"], c)


def exact(sample: EvalSample, completion: str) -> float:
    return exact_match(completion, sample.expected)


def contains(sample: EvalSample, completion: str) -> float:
    return contains_metric(completion, sample.expected)


def choice(sample: EvalSample, completion: str) -> float:
    return multiple_choice(completion, sample.expected, sample.meta.get("options") or sample.meta.get("choices"))


def grounding(sample: EvalSample, completion: str) -> float:
    return _boxes(completion, sample.expected, lambda e, p, m, c: c["iou_sum"] / max(e, p + m))


def grounding_f1(sample: EvalSample, completion: str) -> float:
    return _boxes(completion, sample.expected, lambda e, p, m, c: 2 * c["true_positives"] / (e + p + m))


def all_found(sample: EvalSample, completion: str) -> float:
    return _boxes(completion, sample.expected, lambda e, p, m, c: float(c["true_positives"] == e == p and m == 0))


def point(sample: EvalSample, completion: str) -> float:
    return _boxes(completion, sample.expected,
                  lambda e, p, m, c: c["point_hits"] / max(e, c["predicted_points"] + m))


def well_formed(sample: EvalSample, completion: str) -> float:
    """The `format` reward."""
    c = _counts(completion, sample.expected)
    parsed = c["predicted_boxes"] + c["predicted_points"]
    return float(c["malformed"] == 0 and (parsed > 0 or not parse_grounding(sample.expected)))


def auto(sample: EvalSample, completion: str) -> float:
    metric = metric_for(sample, "auto")
    if metric == "grounding" and _counts(completion, sample.expected)["expected_boxes"] > 0:
        return grounding_f1(sample, completion)  # the hit at IoU 0.5 isaac-eval counts (see the module docstring)
    return {"choice": choice, "contains": contains}.get(metric, exact)(sample, completion)


BUILTINS: dict[str, Reward] = {"auto": auto, "exact": exact, "contains": contains, "choice": choice,
                               "grounding": grounding, "grounding_f1": grounding_f1, "all_found": all_found,
                               "point": point, "format": well_formed}


def _number(value: Any) -> float:
    """A user reward's value as a float; TypeError / ValueError for anything but a finite number (a bool counts)."""
    if not isinstance(value, (numbers.Real, np.bool_)):  # numpy's bool is no numbers.Real
        raise TypeError(f"returned {type(value).__name__} {str(value)[:80]!r}, not a number (return a float)")
    if not math.isfinite(out := float(value)):
        raise ValueError(f"returned {value!r}, not a finite number")
    return out


def load_user_reward(spec: str) -> tuple[str, Reward]:
    """(the function's name, the reward) of "pkg.module:function"; ConfigError naming objective.rewards if the
    module cannot be imported or the attribute is missing or not callable."""
    module_name, _, attr = spec.partition(":")
    if not module_name.strip() or not attr.strip() or ":" in attr:
        raise ConfigError(f"objective.rewards: {spec!r} is not an import path 'pkg.module:function'")
    try:
        fn: Any = importlib.import_module(module_name)
    except Exception as err:
        raise ConfigError(f"objective.rewards: cannot import module {module_name!r} of the reward {spec!r} "
                          f"({type(err).__name__}: {err}); fix the path or put the module on PYTHONPATH") from err
    for part in attr.split("."):
        if not hasattr(fn, part):
            raise ConfigError(f"objective.rewards: module {module_name!r} has no {attr!r} (the reward {spec!r})")
        fn = getattr(fn, part)
    if not callable(fn):
        raise ConfigError(f"objective.rewards: {spec!r} is a {type(fn).__name__}, not a function")

    def reward(sample: EvalSample, completion: str) -> float:
        return _number(fn(prompt=sample.messages, completion=completion, expected=sample.expected, meta=sample.meta))

    return getattr(fn, "__name__", attr.rpartition(".")[2]), reward


def _unique(names: list[str]) -> list[str]:
    """`names` with repeats suffixed: exact, exact_2, exact_3."""
    out: list[str] = []
    for name in names:
        new, k = name, 1
        while new in out:
            k += 1
            new = f"{name}_{k}"
        out.append(new)
    return out


class Rewards:
    """The rewards named by objective.rewards (built-in names or "pkg.module:function"), weighted by
    objective.reward_weights (None: 1 each); checked here, before any model exists (ConfigError naming the key).

    `names`: a short name per reward (the built-in's, or the function's; repeats suffixed _2, _3).
    `failures`: per name, how many completions that reward failed on (raised, or returned a non-number).
    """

    def __init__(self, specs: Sequence[str] = ("auto",), weights: Sequence[float] | None = None):
        specs = [specs] if isinstance(specs, str) else list(specs)
        if not specs:
            raise ConfigError(f"objective.rewards: empty; name at least one of {', '.join(BUILTINS)} "
                              "or 'pkg.module:function'")
        names, self._fns = [], []
        for spec in specs:
            if not isinstance(spec, str):
                raise ConfigError(f"objective.rewards: {spec!r} is a {type(spec).__name__}; give a built-in name "
                                  "or 'pkg.module:function'")
            if ":" in spec:
                name, fn = load_user_reward(spec)
            elif spec in BUILTINS:
                name, fn = spec, BUILTINS[spec]
            else:
                raise ConfigError(f"objective.rewards: unknown reward {spec!r}; the built-ins are "
                                  f"{', '.join(BUILTINS)}, or a function of yours as 'pkg.module:function'")
            names.append(name)
            self._fns.append(fn)
        self.specs, self.names = specs, _unique(names)
        weights = [1.0] * len(specs) if weights is None else list(weights)
        if len(weights) != len(specs):
            raise ConfigError(f"objective.reward_weights: {len(weights)} weights for {len(specs)} rewards {specs}; "
                              "give one per entry of objective.rewards (or none: 1 each)")
        for w in weights:
            if not isinstance(w, numbers.Real) or isinstance(w, bool) or not math.isfinite(w):
                raise ConfigError(f"objective.reward_weights: {w!r} is not a finite number")
        self.weights = [float(w) for w in weights]
        self.failures: Counter[str] = Counter()

    def score(self, sample: EvalSample, completion: str) -> tuple[float, list[float]]:
        """(the weighted total, each reward's value: NaN where it failed); the total skips failed rewards."""
        values = []
        for name, spec, fn in zip(self.names, self.specs, self._fns, strict=True):
            try:
                values.append(float(fn(sample, completion)))
            except Exception:
                values.append(math.nan)
                self.failures[name] += 1
                if self.failures[name] == 1:
                    logger.warning("reward %r (%s) failed on sample %r; it counts as missing (NaN, nothing added "
                                   "to the total) wherever it fails, counted in Rewards.failures and logged only "
                                   "this once: fix it or take it out of objective.rewards", name, spec, sample.key,
                                   exc_info=True)
        total = sum(w * v for w, v in zip(self.weights, values, strict=True) if not math.isnan(v))
        return float(total), values

    def score_many(self, samples: Sequence[EvalSample], completions: Sequence[str]
                   ) -> tuple[list[float], list[list[float]]]:
        """(a total per completion, per reward (in the order of `names`) its value per completion)."""
        if len(samples) != len(completions):
            raise ValueError(f"score_many: {len(samples)} samples for {len(completions)} completions; give the "
                             "sample of each completion (repeat a prompt's sample for each of its completions)")
        scored = [self.score(s, c) for s, c in zip(samples, completions, strict=True)]
        return [t for t, _ in scored], [[v[i] for _, v in scored] for i in range(len(self.names))]

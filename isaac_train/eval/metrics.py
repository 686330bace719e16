"""Task metrics of a generated answer against the expected one: text match, multiple choice, grounding.

Every function takes the generated text and the expected text and returns numbers that aggregate by summing
(counts), so a summary over many samples is micro-averaged and a confidence interval can be put on each rate.

- `exact_match` / `contains`: after `normalize` (case, whitespace, surrounding quotes, trailing punctuation).
- `multiple_choice`: the option letter chosen ("B", "(B)", "B.", "Answer: B", or the option's text when the
  options are given) equals the expected one.
- `grounding`: every `<point_box>`, `<point>` and `<polygon>` parsed (processing/grounding.py; a polygon counts
  as its bounding box), matched to the expected boxes within each mention by the assignment (Hungarian, scipy's
  linear_sum_assignment) that makes the most matches at IoU >= `iou_threshold` and, among those, has the largest
  total IoU (maximising total IoU alone can trade two matches for one). A match with IoU >= 0.5 is a true
  positive; precision = TP / predicted, recall = TP / expected; mean IoU is over the expected boxes (an unmatched
  one counts 0). Predicted points are scored as point-in-box hits against the expected boxes. Tags that do not
  parse (wrong number of coordinates, unclosed) are counted as malformed, never an error.
"""

from __future__ import annotations

import math
import re
import string

import numpy as np

from ..processing.grounding import Grounding, parse_grounding

_OPEN_TAG = re.compile(r"<(point_box|point|polygon)\b")
# where an option letter is read, in this order: the whole answer, "(B)", "answer: B" / "option B", a leading "B."
_LETTERS = (re.compile(r"^\W*([A-Z])\W*$"), re.compile(r"\(([A-Z])\)"),
            re.compile(r"\b(?:answer|option|choice)\b\W*(?:is\W+)?([A-Z])\b", re.IGNORECASE),
            re.compile(r"^\s*([A-Z])[.):]\s"))
_TRAILING = ".!?,;:"


def normalize(text: str) -> str:
    """Lower case, single spaces, no surrounding quotes or trailing punctuation."""
    text = " ".join(str(text).split()).lower().strip().strip("\"'`")
    return text.rstrip(_TRAILING).strip()


def exact_match(generated: str, expected: str) -> float:
    return float(normalize(generated) == normalize(expected))


def contains(generated: str, expected: str) -> float:
    """1 when the normalised expected answer appears in the normalised generated one."""
    return float(normalize(expected) in normalize(generated))


def chosen_option(generated: str, options: list[str] | None = None) -> str | None:
    """The option letter a generated answer picks: the whole answer ("B", "B."), "(B)", "Answer: B" / "option B",
    or a leading "B. ..." (capital letters only: "I think" or "A red circle" pick nothing); else, with `options`,
    the letter of the option whose text it matches; None when it picks none."""
    text = str(generated).strip()
    for pattern in _LETTERS:
        match = pattern.search(text)
        if match and match.group(1).isupper():
            return match.group(1)
    if options:
        wanted = normalize(text)
        for i, option in enumerate(options):
            if normalize(option) == wanted:
                return string.ascii_uppercase[i]
    return None


def multiple_choice(generated: str, expected: str, options: list[str] | None = None) -> float:
    """1 when the chosen option is the expected one (`expected`: a letter, or an option's text)."""
    want = chosen_option(expected, options)
    return float(want is not None and chosen_option(generated, options) == want)


def box_of(g: Grounding) -> tuple[float, float, float, float] | None:
    """(x1, y1, x2, y2), corners in either order; a polygon's bounding box; None for a point."""
    if g.kind == "point":
        return None
    xs, ys = [p[0] for p in g.points], [p[1] for p in g.points]
    return min(xs), min(ys), max(xs), max(ys)


def box_iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    ax1, ay1, ax2, ay2 = min(a[0], a[2]), min(a[1], a[3]), max(a[0], a[2]), max(a[1], a[3])
    bx1, by1, bx2, by2 = min(b[0], b[2]), min(b[1], b[3]), max(b[0], b[2]), max(b[1], b[3])
    inter = max(0.0, min(ax2, bx2) - max(ax1, bx1)) * max(0.0, min(ay2, by2) - max(ay1, by1))
    union = (ax2 - ax1) * (ay2 - ay1) + (bx2 - bx1) * (by2 - by1) - inter
    return inter / union if union > 0 else 0.0


def _in_box(point: tuple[float, float], box: tuple[float, ...]) -> float:
    x1, y1, x2, y2 = min(box[0], box[2]), min(box[1], box[3]), max(box[0], box[2]), max(box[1], box[3])
    return float(x1 <= point[0] <= x2 and y1 <= point[1] <= y2)


def _best_assignment(scores: np.ndarray, threshold: float | None = None) -> list[tuple[int, int]]:
    """Rows paired with columns maximising the total score; with `threshold`, maximising first the number of
    pairs at or above it (each such pair is worth more than any total of scores in [0, 1] can make up)."""
    from scipy.optimize import linear_sum_assignment  # 0.3-1 s to import: only when boxes are matched

    if scores.size == 0:
        return []
    weights = scores if threshold is None else scores + (scores >= threshold) * (min(scores.shape) + 1.0)
    rows, cols = linear_sum_assignment(weights, maximize=True)
    return list(zip(rows.tolist(), cols.tolist(), strict=True))


def _by_mention(items: list[Grounding], mentions: set[str | None]) -> dict[str | None, list[Grounding]]:
    """Group by mention when the expected objects name them; otherwise one group (mentions ignored)."""
    groups: dict[str | None, list[Grounding]] = {}
    for g in items:
        key = (g.mention or "").strip().lower() if mentions != {None} else None
        groups.setdefault(key, []).append(g)
    return groups


def grounding(generated: str, expected: str, iou_threshold: float = 0.5) -> dict[str, float]:
    """Counts for one answer: expected boxes, predicted boxes, true positives, summed IoU, predicted points and
    point hits, malformed tags (see the module docstring)."""
    truth = [g for g in parse_grounding(expected) if g.kind != "point"]
    found = parse_grounding(generated)
    malformed = max(0, len(_OPEN_TAG.findall(generated)) - len(found))
    mentions = {(g.mention or "").strip().lower() for g in truth if g.mention} or {None}
    want = _by_mention(truth, mentions)
    got_boxes = _by_mention([g for g in found if g.kind != "point"], mentions)
    got_points = _by_mention([g for g in found if g.kind == "point"], mentions)
    out = {"expected_boxes": float(len(truth)), "predicted_boxes": float(sum(map(len, got_boxes.values()))),
           "true_positives": 0.0, "iou_sum": 0.0, "predicted_points": float(sum(map(len, got_points.values()))),
           "point_hits": 0.0, "malformed": float(malformed)}
    for key, expected_items in want.items():
        boxes = [box_of(g) for g in expected_items]
        predicted = [box_of(g) for g in got_boxes.get(key, [])]
        ious = np.array([[box_iou(p, t) for t in boxes] for p in predicted]).reshape(len(predicted), len(boxes))
        for p, t in _best_assignment(ious, iou_threshold):
            out["iou_sum"] += ious[p, t]
            out["true_positives"] += float(ious[p, t] >= iou_threshold)
        points = [g.points[0] for g in got_points.get(key, [])]
        hits = np.array([[_in_box(q, t) for t in boxes] for q in points]).reshape(len(points), len(boxes))
        out["point_hits"] += float(sum(hits[p, t] for p, t in _best_assignment(hits)))
    return out


def grounding_summary(counts: dict[str, float]) -> dict[str, float]:
    """Precision, recall, F1 at the IoU threshold, mean IoU and point accuracy from summed `grounding` counts."""
    tp, n_pred, n_true = counts["true_positives"], counts["predicted_boxes"], counts["expected_boxes"]
    precision = tp / n_pred if n_pred else 0.0
    recall = tp / n_true if n_true else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    out = {"precision": precision, "recall": recall, "f1": f1,
           "mean_iou": counts["iou_sum"] / n_true if n_true else 0.0, "malformed": counts["malformed"]}
    if counts["predicted_points"]:
        out["point_accuracy"] = counts["point_hits"] / counts["predicted_points"]
    return out


def wilson_interval(successes: float, n: float, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval of a proportion (95% by default); (0, 1) when n is 0."""
    if n <= 0:
        return 0.0, 1.0
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)

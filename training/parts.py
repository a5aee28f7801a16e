"""Parts offline: frames grouped into parts, the per-part report, and part thresholds for a budget.

A camera sees each part in several consecutive frames, and a plant judges inspection per
part: how many defective parts it misses, how many good parts it flags. This module turns
labelled, scored frames into those numbers, with the same aggregation the alert service uses
(``schemas.part``), and chooses the questions' part thresholds together so that the share of
good parts flagged by any question stays within ``AlertPolicy.max_false_alarm_rate``.

Grouping (``aggregate_parts``, ``group_parts``)
    Frames carry a part key (the truth's part id per recording and camera, or a tracker's id;
    ``None`` for an empty belt, skipped). Per part and question the frames' P(yes) become one
    score through ``schemas.part.PartScores`` (mean, top3, noisy_or), and the part's truth is
    1 if any of its frames answers the question yes, 0 if its frames answer it and none says
    yes, -1 if none answers it. A part is *defective* when some question is 1, *good* otherwise.

The report (``part_report``, ``part_report_from_flags``) has this shape, for the evaluation's
JSON report and the demo's ``summary.json`` alike::

    {"overall": {"parts", "defective", "caught", "missed", "good", "flagged",
                 "detection_rate", "false_alarm_rate", "wrong_defect"},
     "by_defect_type": {"scratch": {...the same keys...}, ...}}

Counting, overall:
    * a defective part is *caught* when a question of one of its defect types flags it
      (by defect type: two questions of one type catch each other's parts), else *missed*;
    * a good part is *flagged* when any question flags it;
    * ``detection_rate`` = caught / defective, ``false_alarm_rate`` = flagged / good, ``None``
      (JSON null) when the denominator is 0;
    * ``wrong_defect``: missed parts that some question flagged all the same, i.e. defective
      parts flagged only for defects they do not have. They are counted as missed (their
      defect was not found) and are not good-part false alarms (the part is defective); a
      line stops them anyway, for the wrong reason, so they are reported on their own.
Per defect type T (one row per defect type of the questions, in question order):
    * ``defective``/``caught``/``missed``: parts with a defect of type T, caught when a
      question of type T flags them;
    * ``good``/``flagged``/``false_alarm_rate``: the good parts (all of them, as overall), and
      those a question of type T flags;
    * ``wrong_defect``: parts with T that T's questions missed but another question flagged;
    * ``parts``: every part.

Thresholds for a budget (``budgeted_thresholds``)
    A part is flagged for a question when its aggregate score is ``>=`` the threshold, as in
    the alert service. With G good parts and budget b, at most K = floor(b * G) good parts may
    be flagged by any question. Per question only a few thresholds matter: just above the
    (k+1)-th highest good score for some k, as low as the next lower good score allows. Below
    that, a level that flags more good parts but catches no more defective ones is never
    worth it, so each question has a short list of *levels* (nested: more good parts flagged,
    more of its defective parts caught). The levels of all questions are chosen together by a
    branch-and-bound search that maximises, in this order, the defective parts caught, the
    fewest good parts flagged, and the (part, question) defects caught; its bound gives every
    question not yet chosen the highest level that fits the budget on its own. It starts from
    the better of a greedy solution (repeatedly lower the threshold that buys the most newly
    caught parts per newly flagged good part) and the per-question baseline
    (``independent_thresholds``), so it is never worse than either, and is exact unless it
    runs out of ``max_nodes`` (then it says so). Each chosen threshold sits midway between the
    lowest score it must catch and the highest good score it must not flag: the same flags on
    the given data, and a margin either side for new parts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Collection, Hashable, Iterable, Mapping, Sequence

import numpy as np

from schemas.part import PART_AGGREGATES, PartAggregate, PartScores

COUNT_KEYS = ("parts", "defective", "caught", "missed", "good", "flagged")
RATE_KEYS = ("detection_rate", "false_alarm_rate")
EXTRA_KEYS = ("wrong_defect",)
REPORT_KEYS = COUNT_KEYS + RATE_KEYS + EXTRA_KEYS
DEFAULT_MAX_NODES = 200_000


# --- Grouping -----------------------------------------------------------------------------------


@dataclass
class PartTable:
    """Parts of one aggregate: scores (P, Q), truth labels (P, Q) in {1, 0, -1}, frames per part (P,)."""

    keys: list[str]
    question_ids: list[str]
    scores: np.ndarray
    labels: np.ndarray
    frames: np.ndarray
    method: str = "mean"

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def defective(self) -> np.ndarray:
        return (self.labels == 1).any(axis=1)

    def subset(self, rows: np.ndarray | Sequence[int]) -> "PartTable":
        rows = np.asarray(rows)
        if rows.dtype == bool:
            rows = np.flatnonzero(rows)
        return PartTable([self.keys[i] for i in rows], list(self.question_ids), self.scores[rows],
                         self.labels[rows], self.frames[rows], self.method)

    @staticmethod
    def join(tables: Sequence["PartTable"]) -> "PartTable":
        first = tables[0]
        for t in tables[1:]:
            if t.question_ids != first.question_ids or t.method != first.method:
                raise ValueError("tables to join need the same questions and aggregate")
        return PartTable([k for t in tables for k in t.keys], list(first.question_ids),
                         np.concatenate([t.scores for t in tables]), np.concatenate([t.labels for t in tables]),
                         np.concatenate([t.frames for t in tables]), first.method)


def _label_array(labels: np.ndarray | Sequence, shape: tuple[int, int]) -> np.ndarray:
    arr = np.asarray(labels)
    if arr.shape != shape:
        raise ValueError(f"labels have shape {arr.shape}, scores {shape}")
    if arr.dtype == bool:
        return arr.astype(np.int8)
    arr = np.asarray(arr, dtype=float)
    return np.where(np.isnan(arr) | (arr < 0), -1, np.where(arr >= 0.5, 1, 0)).astype(np.int8)


def aggregate_parts(
    frame_scores: np.ndarray,
    keys: Sequence[Hashable | None],
    labels: np.ndarray,
    question_ids: Sequence[str],
    methods: Sequence[str] = PART_AGGREGATES,
) -> dict[str, PartTable]:
    """Per aggregate method, the parts of the frames (in order of first frame).

    ``frame_scores`` (N, Q) P(yes); ``keys`` (N,) each frame's part key, ``None`` for a frame
    showing no part (skipped); ``labels`` (N, Q): 1 yes, 0 no, negative or NaN unanswered
    (``LabelledSet.labels``), or bool.
    """
    scores = np.asarray(frame_scores, dtype=np.float64)
    if scores.ndim != 2 or scores.shape[1] != len(question_ids):
        raise ValueError(f"frame scores have shape {scores.shape}, expected (frames, {len(question_ids)})")
    if len(keys) != len(scores):
        raise ValueError(f"{len(keys)} part keys for {len(scores)} frames")
    unknown = [m for m in methods if m not in PART_AGGREGATES]
    if unknown:
        raise ValueError(f"unknown part aggregate {unknown}; known: {', '.join(PART_AGGREGATES)}")
    lab = _label_array(labels, scores.shape)
    rows: dict[Hashable, list[int]] = {}
    for i, key in enumerate(keys):
        if key is not None:
            rows.setdefault(key, []).append(i)
    P, Q = len(rows), len(question_ids)
    agg = {m: np.zeros((P, Q)) for m in methods}
    part_labels = np.full((P, Q), -1, dtype=np.int8)
    frames = np.zeros(P, dtype=np.int64)
    for p, idx in enumerate(rows.values()):
        frames[p] = len(idx)
        sub = lab[idx]
        part_labels[p] = np.where((sub == 1).any(axis=0), 1, np.where((sub == 0).any(axis=0), 0, -1))
        for j in range(Q):
            acc = PartScores.of(scores[idx, j].tolist())  # the alert service's own aggregation
            for m in methods:
                agg[m][p, j] = acc.value(m)  # type: ignore[arg-type]
    names = [str(k) for k in rows]
    return {m: PartTable(list(names), list(question_ids), agg[m], part_labels.copy(), frames.copy(), m) for m in methods}


def group_parts(
    frame_scores: np.ndarray,
    keys: Sequence[Hashable | None],
    labels: np.ndarray,
    question_ids: Sequence[str],
    method: PartAggregate,
) -> PartTable:
    """``aggregate_parts`` for one method."""
    return aggregate_parts(frame_scores, keys, labels, question_ids, (method,))[method]


# --- The report ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class PartFlags:
    """One part as the demo sees it: the questions it is defective for (truth) and those flagged (alerts)."""

    defects: frozenset[str] = frozenset()
    flagged: frozenset[str] = frozenset()


def _rate(num: int, den: int) -> float | None:
    return None if den == 0 else num / den


def _row(parts: int, defective: np.ndarray, caught: np.ndarray, good: np.ndarray, flagged: np.ndarray,
         any_flag: np.ndarray) -> dict:
    n_def, n_caught = int(defective.sum()), int((defective & caught).sum())
    n_good, n_flag = int(good.sum()), int((good & flagged).sum())
    return {
        "parts": parts, "defective": n_def, "caught": n_caught, "missed": n_def - n_caught,
        "good": n_good, "flagged": n_flag,
        "detection_rate": _rate(n_caught, n_def), "false_alarm_rate": _rate(n_flag, n_good),
        "wrong_defect": int((defective & ~caught & any_flag).sum()),
    }


def _type_columns(question_ids: Sequence[str], defect_type_of: Mapping[str, str] | None) -> tuple[list[str], np.ndarray]:
    """The defect types in question order, and a (Q, T) bool matrix: question j asks about type t."""
    types = [(defect_type_of or {}).get(q, q) for q in question_ids]
    order = list(dict.fromkeys(types))
    member = np.zeros((len(question_ids), len(order)), dtype=bool)
    for j, t in enumerate(types):
        member[j, order.index(t)] = True
    return order, member


def report_from_matrices(
    truth: np.ndarray, flagged: np.ndarray, question_ids: Sequence[str], defect_type_of: Mapping[str, str] | None = None
) -> dict:
    """The report from (P, Q) bool matrices: the part is defective for the question / a question flags it."""
    truth = np.asarray(truth, dtype=bool).reshape(-1, len(question_ids))
    flagged = np.asarray(flagged, dtype=bool).reshape(-1, len(question_ids))
    if truth.shape != flagged.shape:
        raise ValueError(f"truth {truth.shape} and flags {flagged.shape} differ")
    types, member = _type_columns(question_ids, defect_type_of)
    m = member.astype(np.int32)
    has = (truth.astype(np.int32) @ m) > 0  # (P, T): the part has a defect of type t
    flag_t = (flagged.astype(np.int32) @ m) > 0  # (P, T): a question of type t flags it
    P = len(truth)
    defective = has.any(axis=1)
    good = ~defective
    any_flag = flagged.any(axis=1)
    overall = _row(P, defective, (has & flag_t).any(axis=1), good, any_flag, any_flag)
    by_type = {t: _row(P, has[:, k], flag_t[:, k], good, flag_t[:, k], any_flag) for k, t in enumerate(types)}
    return {"overall": overall, "by_defect_type": by_type}


def _threshold_vector(thresholds: Mapping[str, float] | Sequence[float] | np.ndarray, question_ids: Sequence[str]) -> np.ndarray:
    if isinstance(thresholds, Mapping):
        missing = [q for q in question_ids if q not in thresholds]
        if missing:
            raise ValueError(f"no threshold for {', '.join(missing)}")
        return np.array([float(thresholds[q]) for q in question_ids])
    vec = np.asarray(thresholds, dtype=float)
    if vec.shape != (len(question_ids),):
        raise ValueError(f"{vec.shape} thresholds for {len(question_ids)} questions")
    return vec


def part_report(
    table: PartTable, thresholds: Mapping[str, float] | Sequence[float], defect_type_of: Mapping[str, str] | None = None
) -> dict:
    """The report of a part table at part thresholds (flagged: aggregate score >= threshold)."""
    t = _threshold_vector(thresholds, table.question_ids)
    return report_from_matrices(table.labels == 1, table.scores >= t[None, :], table.question_ids, defect_type_of)


def part_report_from_flags(
    parts: Iterable[PartFlags | tuple[Collection[str], Collection[str]]],
    question_ids: Sequence[str],
    defect_type_of: Mapping[str, str] | None = None,
) -> dict:
    """The report from per-part verdicts, for callers with alerts instead of scores (the demo).

    Each part: the question ids it is defective for (its frames' ``FrameTruth.answers`` that
    are true) and the question ids flagged for it (its alert's findings; empty without an
    alert). ``question_ids``: every question the line asks (one row per defect type of them).
    """
    index = {q: j for j, q in enumerate(question_ids)}
    truth_rows, flag_rows = [], []
    for part in parts:
        defects, flags = (part.defects, part.flagged) if isinstance(part, PartFlags) else part
        unknown = sorted(set(defects).union(flags) - set(index))
        if unknown:
            raise ValueError(f"questions {unknown} are not among the line's questions {list(question_ids)}")
        t, f = np.zeros(len(question_ids), dtype=bool), np.zeros(len(question_ids), dtype=bool)
        t[[index[q] for q in defects]] = True
        f[[index[q] for q in flags]] = True
        truth_rows.append(t)
        flag_rows.append(f)
    return report_from_matrices(np.array(truth_rows, dtype=bool).reshape(-1, len(question_ids)),
                                np.array(flag_rows, dtype=bool).reshape(-1, len(question_ids)),
                                question_ids, defect_type_of)


def sum_reports(reports: Sequence[dict]) -> dict:
    """Reports of disjoint sets of parts added up (counts summed, rates recomputed)."""

    def add(rows: list[dict]) -> dict:
        out = {k: sum(r[k] for r in rows) for k in COUNT_KEYS + EXTRA_KEYS}
        out["detection_rate"] = _rate(out["caught"], out["defective"])
        out["false_alarm_rate"] = _rate(out["flagged"], out["good"])
        return {k: out[k] for k in REPORT_KEYS}

    types = list(dict.fromkeys(t for r in reports for t in r["by_defect_type"]))
    empty = {k: 0 for k in COUNT_KEYS + EXTRA_KEYS}
    return {"overall": add([r["overall"] for r in reports]),
            "by_defect_type": {t: add([r["by_defect_type"].get(t, {**empty, "parts": r["overall"]["parts"],
                                                                   "good": r["overall"]["good"]}) for r in reports])
                               for t in types}}


# --- Thresholds for a false-alarm budget ----------------------------------------------------------


def _mask(rows: np.ndarray) -> int:
    """A bool vector as an int bit set (bit i = row i)."""
    return int.from_bytes(np.packbits(np.asarray(rows, dtype=bool), bitorder="little").tobytes(), "little")


@dataclass
class _Level:
    threshold: float
    good: int  # bit set of the good parts it flags
    caught: int  # bit set of the parts with the question's defect type it flags
    hits: int  # parts defective for this very question that it flags


def _levels(s: np.ndarray, good: np.ndarray, pos: np.ndarray, own: np.ndarray) -> list[_Level]:
    """A question's useful thresholds, nested, the first flagging no good part.

    ``s`` its part scores; ``good`` good parts; ``pos`` parts with its defect type (what it can
    catch); ``own`` parts defective for this question itself.
    """
    gs = np.sort(s[good])  # ascending
    ps = np.unique(s[pos])[::-1]  # distinct, descending
    top_good = gs[-1] if len(gs) else None
    levels: list[_Level] = []
    chosen: dict[int, float] = {}  # goods flagged -> the lowest positive score with that many
    for c in ps:
        n_good = int(len(gs) - np.searchsorted(gs, c, side="left"))  # goods with score >= c
        chosen[n_good] = float(c)
    if 0 not in chosen:  # no positive above every good part: the first level catches nothing
        if top_good is None:
            t = math.nextafter(1.0, math.inf)
        elif top_good < 1.0:
            t = (float(top_good) + 1.0) / 2
        else:
            t = math.nextafter(float(top_good), math.inf)
        levels.append(_Level(t, 0, 0, 0))
    for n_good in sorted(chosen):
        c = chosen[n_good]
        below = gs[gs < c]
        t = c
        if len(below):
            lower = float(below[-1])
            mid = (lower + c) / 2
            t = mid if lower < mid <= c else c
        levels.append(_Level(t, _mask(good & (s >= t)), _mask(pos & (s >= t)), int((own & (s >= t)).sum())))
    return levels


@dataclass
class BudgetedThresholds:
    """Part thresholds chosen together for a false-alarm budget, and what they buy on the data they were chosen on."""

    thresholds: dict[str, float]
    max_false_alarm_rate: float
    allowed_flagged: int  # good parts the budget allows to flag: floor(budget * good)
    detection_rate: float | None
    false_alarm_rate: float | None
    per_question: dict[str, dict]
    report: dict  # ``part_report`` of the data at these thresholds
    search: dict  # how they were found: method, exact, nodes
    no_defective: list[str] = field(default_factory=list)  # questions with no defective part in the data

    def as_dict(self) -> dict:
        return {
            "thresholds": self.thresholds, "max_false_alarm_rate": self.max_false_alarm_rate,
            "allowed_flagged": self.allowed_flagged, "detection_rate": self.detection_rate,
            "false_alarm_rate": self.false_alarm_rate, "per_question": self.per_question,
            "no_defective": self.no_defective, "search": self.search, "report": self.report,
        }


class _Problem:
    def __init__(self, scores: np.ndarray, labels: np.ndarray, budget: float, question_ids: Sequence[str],
                 defect_type_of: Mapping[str, str] | None) -> None:
        if not 0.0 <= budget <= 1.0:
            raise ValueError(f"max_false_alarm_rate must be in [0, 1], got {budget}")
        self.scores = np.asarray(scores, dtype=np.float64)
        if self.scores.ndim != 2 or self.scores.shape[1] != len(question_ids):
            raise ValueError(f"part scores have shape {self.scores.shape}, expected (parts, {len(question_ids)})")
        self.labels = _label_array(labels, self.scores.shape)
        self.question_ids = list(question_ids)
        self.defect_type_of = defect_type_of
        self.budget = budget
        truth = self.labels == 1
        _, member = _type_columns(self.question_ids, defect_type_of)
        has = (truth.astype(np.int32) @ member.astype(np.int32)) > 0
        pos_of = has[:, member.argmax(axis=1)]  # (P, Q): the part has question j's defect type
        self.good = ~truth.any(axis=1)
        self.n_good = int(self.good.sum())
        self.allowed = int(math.floor(budget * self.n_good + 1e-9))
        self.levels = [_levels(self.scores[:, j], self.good, pos_of[:, j], truth[:, j]) for j in range(len(question_ids))]

    def value(self, choice: Sequence[int]) -> tuple[int, int, int]:
        U = C = hits = 0
        for j, lv in enumerate(choice):
            level = self.levels[j][lv]
            U |= level.good
            C |= level.caught
            hits += level.hits
        return C.bit_count(), -U.bit_count(), hits

    def feasible(self, choice: Sequence[int]) -> bool:
        U = 0
        for j, lv in enumerate(choice):
            U |= self.levels[j][lv].good
        return U.bit_count() <= self.allowed

    def greedy(self) -> list[int]:
        """Lower, one at a time, the threshold that buys the most newly caught parts per newly flagged good part."""
        choice = [0] * len(self.levels)
        U = C = 0
        for j in range(len(self.levels)):
            U |= self.levels[j][0].good
            C |= self.levels[j][0].caught
        while True:
            best = None  # (ratio, gain, -cost, j, lv)
            for j, levels in enumerate(self.levels):
                for lv in range(choice[j] + 1, len(levels)):
                    newU = U | levels[lv].good
                    cost = newU.bit_count() - U.bit_count()
                    if newU.bit_count() > self.allowed:
                        break
                    gain = (C | levels[lv].caught).bit_count() - C.bit_count()
                    if gain <= 0:
                        continue
                    key = (math.inf if cost == 0 else gain / cost, gain, -cost, -j, -lv)
                    if best is None or key > best[0]:
                        best = (key, j, lv)
            if best is None:
                break
            _, j, lv = best
            choice[j] = lv
            U |= self.levels[j][lv].good
            C |= self.levels[j][lv].caught
        # then every threshold as low as the good parts already flagged allow: more defects named, no cost
        for j, levels in enumerate(self.levels):
            while choice[j] + 1 < len(levels) and (levels[choice[j] + 1].good | U) == U:
                choice[j] += 1
                C |= levels[choice[j]].caught
        return choice

    def independent(self) -> list[int]:
        """One cap on good parts per question, the largest whose union fits the budget; each question at its lowest threshold under it."""
        for cap in range(self.allowed, -1, -1):
            choice = [max(i for i, lv in enumerate(levels) if lv.good.bit_count() <= cap) for levels in self.levels]
            if self.feasible(choice):
                return choice
        return [0] * len(self.levels)

    def search(self, start: Sequence[int], max_nodes: int) -> tuple[list[int], bool, int]:
        """Branch and bound over the questions' levels; (best choice, exact, nodes)."""
        order = sorted(range(len(self.levels)), key=lambda j: -(self.levels[j][-1].caught.bit_count()))
        best_choice = list(start)
        best = self.value(best_choice)
        choice = [0] * len(self.levels)
        nodes = 0
        complete = True

        def top_feasible(levels: list[_Level], U: int) -> int:
            i = 0
            while i + 1 < len(levels) and (U | levels[i + 1].good).bit_count() <= self.allowed:
                i += 1
            return i

        def dfs(depth: int, U: int, C: int, hits: int) -> None:
            nonlocal nodes, best, best_choice, complete
            nodes += 1
            if nodes > max_nodes:
                complete = False
                return
            if depth == len(order):
                value = (C.bit_count(), -U.bit_count(), hits)
                if value > best:
                    best, best_choice = value, list(choice)
                return
            # bound: every question left at the highest level that fits the budget with U alone
            bC, bhits = C, hits
            for j in order[depth:]:
                level = self.levels[j][top_feasible(self.levels[j], U)]
                bC |= level.caught
                bhits += level.hits
            if (bC.bit_count(), -U.bit_count(), bhits) <= best:
                return
            j = order[depth]
            for lv in range(top_feasible(self.levels[j], U), -1, -1):
                level = self.levels[j][lv]
                choice[j] = lv
                dfs(depth + 1, U | level.good, C | level.caught, hits + level.hits)
                if not complete:
                    return
            choice[j] = 0

        dfs(0, 0, 0, 0)
        return best_choice, complete, nodes

    def result(self, choice: Sequence[int], search: dict) -> BudgetedThresholds:
        thresholds = {q: float(self.levels[j][lv].threshold) for j, (q, lv) in enumerate(zip(self.question_ids, choice))}
        t = np.array([thresholds[q] for q in self.question_ids])
        flagged = self.scores >= t[None, :]
        report = report_from_matrices(self.labels == 1, flagged, self.question_ids, self.defect_type_of)
        overall = report["overall"]
        if overall["flagged"] > self.allowed:  # cannot happen by construction; never hand out a broken budget
            raise AssertionError(f"{overall['flagged']} good parts flagged, {self.allowed} allowed")
        per_question, no_defective = {}, []
        for j, q in enumerate(self.question_ids):
            own = self.labels[:, j] == 1
            n_def, caught = int(own.sum()), int((own & flagged[:, j]).sum())
            n_flag = int((self.good & flagged[:, j]).sum())
            per_question[q] = {"threshold": thresholds[q], "defective": n_def, "caught": caught,
                               "detection_rate": _rate(caught, n_def), "flagged": n_flag,
                               "false_alarm_rate": _rate(n_flag, self.n_good)}
            if n_def == 0:
                per_question[q]["note"] = "no defective part in the data: threshold above every good part"
                no_defective.append(q)
        return BudgetedThresholds(thresholds, self.budget, self.allowed, overall["detection_rate"],
                                  overall["false_alarm_rate"], per_question, report, search, no_defective)


def budgeted_thresholds(
    part_scores: np.ndarray,
    labels: np.ndarray,
    max_false_alarm_rate: float,
    question_ids: Sequence[str] | None = None,
    defect_type_of: Mapping[str, str] | None = None,
    max_nodes: int = DEFAULT_MAX_NODES,
) -> BudgetedThresholds:
    """Every question's part threshold, chosen together: at most ``max_false_alarm_rate`` of the good
    parts flagged by any question on this data, as many defective parts caught as possible.

    ``part_scores`` (P, Q) aggregate scores (``PartTable.scores``); ``labels`` (P, Q) 1 / 0 / -1
    (or bool) as ``PartTable.labels``. Questions default to ``q0``, ``q1``, ...; each is its own
    defect type unless ``defect_type_of`` maps them. See the module docstring for the search.
    """
    scores = np.asarray(part_scores, dtype=np.float64)
    ids = list(question_ids) if question_ids is not None else [f"q{j}" for j in range(scores.shape[-1])]
    problem = _Problem(scores, labels, max_false_alarm_rate, ids, defect_type_of)
    greedy, independent = problem.greedy(), problem.independent()
    start = max((greedy, independent), key=problem.value)
    choice, exact, nodes = problem.search(start, max_nodes)
    return problem.result(choice, {"method": "branch_and_bound", "exact": exact, "nodes": nodes,
                                   "greedy_caught": problem.value(greedy)[0],
                                   "independent_caught": problem.value(independent)[0]})


def independent_thresholds(
    part_scores: np.ndarray,
    labels: np.ndarray,
    max_false_alarm_rate: float,
    question_ids: Sequence[str] | None = None,
    defect_type_of: Mapping[str, str] | None = None,
) -> BudgetedThresholds:
    """The baseline: each question on its own, all under one cap on the good parts each may flag
    (the largest cap whose union still fits the budget), each at its lowest threshold under it."""
    scores = np.asarray(part_scores, dtype=np.float64)
    ids = list(question_ids) if question_ids is not None else [f"q{j}" for j in range(scores.shape[-1])]
    problem = _Problem(scores, labels, max_false_alarm_rate, ids, defect_type_of)
    return problem.result(problem.independent(), {"method": "independent", "exact": False, "nodes": 0})


def cross_validate(
    table: PartTable,
    folds: Sequence[Hashable],
    max_false_alarm_rate: float,
    defect_type_of: Mapping[str, str] | None = None,
    max_nodes: int = DEFAULT_MAX_NODES,
) -> dict:
    """Thresholds chosen on all folds but one, applied to that one, for every fold; the reports summed.

    ``folds`` (P,): each part's fold (e.g. its recording's seed). An honest estimate, from
    calibration data alone, of what thresholds chosen there buy on parts they never saw.
    """
    folds = np.asarray(folds)
    reports = []
    for f in dict.fromkeys(folds.tolist()):
        test = folds == f
        fit = table.subset(~test)
        chosen = budgeted_thresholds(fit.scores, fit.labels, max_false_alarm_rate, fit.question_ids,
                                     defect_type_of, max_nodes)
        reports.append(part_report(table.subset(test), chosen.thresholds, defect_type_of))
    return sum_reports(reports)

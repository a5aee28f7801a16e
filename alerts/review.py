"""The review sample of passed parts: misses are invisible unless someone looks.

Each line's clock hour is cut into ``alerts.review_max_per_hour`` slots. In each slot the
service keeps one candidate, the passed part that came nearest a threshold so far (its highest
score/threshold ratio over the questions); when the slot has ended, that candidate becomes a
review item, whose frames are kept as evidence (its peak first), for an operator to confirm as good or mark
defective in the dashboard. So at most N parts per line and clock hour are kept, each the
hardest call of its 1/N hour, and a quiet slot keeps none. The store does the keeping
atomically (``RedisAlertStore.offer_review``).
"""

from __future__ import annotations

from alerts.parts import PartVerdict
from schemas.feedback import ReviewItem, review_id_for


def review_slot(now_ns: int, per_hour: int) -> int:
    """The review slot ``now_ns`` falls in: ``per_hour`` slots per clock hour, numbered from the epoch."""
    hour, into = divmod(now_ns // 1_000_000_000, 3600)
    return hour * per_hour + into * per_hour // 3600


def review_candidate(ended: PartVerdict, line_verdict: str | None, now_ns: int) -> ReviewItem | None:
    """The review item a decided part would become; None unless the line holds the part passed."""
    if ended.verdict != "passed" or line_verdict != "passed" or ended.closeness is None:
        return None
    return ReviewItem(
        review_id=review_id_for(ended.part_key, ended.camera_id),
        line_id=ended.line_id,
        camera_id=ended.camera_id,
        part_id=ended.part_id,
        source=ended.source,
        part_key=ended.part_key,
        closeness=ended.closeness,
        scores=ended.scores,
        thresholds=ended.thresholds,
        first_seq=ended.first_seq,
        last_seq=ended.last_seq,
        first_capture_ns=ended.first_capture_ns,
        model_id=ended.model_id,
        sampled_ns=now_ns,
        evidence=list(ended.evidence),
    )

"""The operator dashboard: one HTML page, a JSON API and a live event stream (SSE);
docs/dashboard-api.md documents the routes for other clients.

Reads everything from Redis (the alert service's store); acknowledge/resolve go
through the same state machine as the CLI, and verdicts (on alerts and on the review
sample of passed parts) through the same store calls as ``patchsight alerts verdict``.
When ``dashboard.token`` is set, every route but /healthz needs it: ``Authorization: Bearer
<token>`` or ``?token=<token>`` (the page passes it on to its API calls, the event stream
and thumbnails, which cannot set headers).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import time
from importlib import resources
from typing import AsyncIterator, Callable, Literal

import redis.asyncio as aioredis
from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from redis.exceptions import RedisError

from alerts.drift import DriftKeys, read_drift
from alerts.store import AlertNotFound, CameraHealth, IllegalTransition, RedisAlertStore, ReviewNotFound, connect
from schemas.alert import AlertState
from schemas.config import PatchsightConfig
from schemas.feedback import OperatorVerdict, ReviewItem, VerdictSubject
from schemas.frame import Id

CAMERA_REFRESH_S = 2.0


class Operator(BaseModel):
    """The body of acknowledge/resolve (docs/dashboard-api.md). Unknown fields are refused (422), not
    ignored: ``{"operator": "alice"}`` recorded the action as the dashboard's, not alice's."""

    model_config = ConfigDict(extra="forbid")

    by: str = Field("dashboard", min_length=1, max_length=64)


class VerdictBody(BaseModel):
    """A verdict from the page or any API client: on an alert confirmed / false_alarm, on a review good / defective."""

    model_config = ConfigDict(extra="forbid")

    verdict: Literal["confirmed", "false_alarm", "good", "defective"]
    defect_type: Id | None = None
    by: str = Field("dashboard", min_length=1, max_length=64)

    @model_validator(mode="after")
    def _defect_only_when_defective(self) -> "VerdictBody":
        if self.defect_type is not None and self.verdict in ("false_alarm", "good"):
            raise ValueError(f"a defect type goes only with a defective verdict, not with {self.verdict}")
        return self


def _camera_json(c: CameraHealth, now_ns: int) -> dict:
    return {
        "line_id": c.line_id,
        "camera_id": c.camera_id,
        "fps": round(c.fps, 2),
        "last_seq": c.last_seq,
        "age_s": round(c.age_s(now_ns), 1),
        "healthy": c.healthy(now_ns),
        "model_id": c.model_id,
    }


def _parts_json(store: RedisAlertStore, lines: list[str]) -> dict:
    """Per line: parts inspected (passed + flagged), passed, flagged, unscored, and the yield in percent."""
    found = {}
    for line in lines:
        counts: dict = store.part_counts(line)
        counts["yield_pct"] = round(100.0 * counts["passed"] / counts["inspected"], 1) if counts["inspected"] else None
        found[line] = counts
    return found


def create_app(config: PatchsightConfig, store: RedisAlertStore | None = None) -> FastAPI:
    store = store or RedisAlertStore(connect(config.redis), config.alerts)
    token = config.dashboard.token.get_secret_value() if config.dashboard.token else None
    page = resources.files("alerts").joinpath("dashboard.html").read_text()
    app = FastAPI(title="patchsight dashboard", docs_url=None, redoc_url=None, openapi_url=None)
    guarded = [Depends(_authorizer(token))]
    app.exception_handler(RedisError)(_store_unavailable)
    _add_page_routes(app, config, store, page, guarded)
    _add_alert_routes(app, config, store, guarded)
    _add_feedback_routes(app, store, guarded)
    _add_drift_routes(app, config, store, guarded)
    return app


def _authorizer(token: str | None) -> Callable[..., None]:
    """The dependency that guards every route but /healthz: a bearer header or ?token= (no token: open)."""

    def authorized(request: Request, token_param: str | None = Query(None, alias="token")) -> None:
        if token is None:
            return
        header = request.headers.get("authorization", "")
        given = header[7:] if header.lower().startswith("bearer ") else token_param
        if not given or not hmac.compare_digest(given.encode(), token.encode()):
            raise HTTPException(401, "a valid token is required", headers={"WWW-Authenticate": "Bearer"})

    return authorized


async def _store_unavailable(request: Request, exc: RedisError) -> JSONResponse:
    # 503, not 500: the page and load balancers retry later, and nothing here is a bug.
    return JSONResponse({"detail": f"the alert store (Redis) is unavailable: {type(exc).__name__}"},
                        status_code=503, headers={"Retry-After": "2"})


def _add_page_routes(
    app: FastAPI, config: PatchsightConfig, store: RedisAlertStore, page: str, guarded: list
) -> None:
    """/healthz, the page itself and /api/lines (lines, cameras, counts)."""

    @app.get("/healthz")
    def healthz() -> dict:
        store.redis.ping()
        return {"status": "ok"}

    @app.get("/", response_class=HTMLResponse, dependencies=guarded)
    def index() -> str:
        return page

    @app.get("/api/lines", dependencies=guarded)
    def lines() -> dict:
        now = time.time_ns()
        known = sorted(set(store.lines()) | {line.id for line in config.lines})
        return {
            "lines": known,
            "cameras": [_camera_json(c, now) for c in store.cameras()],
            "counts": {line: store.counts(line) for line in known},
            "parts": _parts_json(store, known),
            # what an operator can name as the defect seen, per configured line
            "defect_types": {line.id: sorted({q.defect_type for q in line.questions}) for line in config.lines},
        }


def _add_drift_routes(app: FastAPI, config: PatchsightConfig, store: RedisAlertStore, guarded: list) -> None:
    """Score drift (alerts/drift.py): per line, each camera's window measures, active conditions, recent events."""
    keys = DriftKeys(config.alerts.key_prefix)

    @app.get("/api/drift", dependencies=guarded)
    def drift(line: str | None = None, recent: int = Query(20, ge=0, le=1000)) -> dict:
        known = [line] if line else sorted(set(store.lines()) | {c.id for c in config.lines})
        return {line_id: read_drift(store.redis, keys, line_id, recent) for line_id in known}


def _add_alert_routes(app: FastAPI, config: PatchsightConfig, store: RedisAlertStore, guarded: list) -> None:
    """The alerts: list, one, its thumbnail, acknowledge, resolve, and the live event stream."""

    @app.get("/api/alerts", dependencies=guarded)
    def alerts(line: str | None = None, limit: int = Query(200, ge=1, le=1000)) -> list[dict]:
        return _with_feedback(store, store.list_alerts(line, unresolved_only=True, limit=limit))

    @app.get("/api/alerts/{alert_id}", dependencies=guarded)
    def alert(alert_id: str) -> dict:
        found = store.get_alert(alert_id)
        if found is None:
            raise HTTPException(404, f"no alert with id {alert_id!r}")
        return found.model_dump(mode="json")

    @app.get("/api/alerts/{alert_id}/thumbnail.jpg", dependencies=guarded)
    def thumbnail(alert_id: str) -> Response:
        jpeg = store.thumbnail(alert_id)
        if jpeg is None:
            raise HTTPException(404, "no thumbnail (none was sent, or it expired)")
        return Response(jpeg, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=3600"})

    def transition(alert_id: str, target: AlertState, operator: Operator) -> dict:
        try:
            return store.transition(alert_id, target, operator.by).model_dump(mode="json")
        except AlertNotFound as exc:
            raise HTTPException(404, str(exc)) from None
        except IllegalTransition as exc:
            raise HTTPException(409, str(exc)) from None

    @app.post("/api/alerts/{alert_id}/acknowledge", dependencies=guarded)
    def acknowledge(alert_id: str, operator: Operator = Operator()) -> dict:
        return transition(alert_id, AlertState.acknowledged, operator)

    @app.post("/api/alerts/{alert_id}/resolve", dependencies=guarded)
    def resolve(alert_id: str, operator: Operator = Operator()) -> dict:
        return transition(alert_id, AlertState.resolved, operator)

    @app.get("/api/events", dependencies=guarded)
    async def events(request: Request, line: str | None = None) -> StreamingResponse:
        return StreamingResponse(
            _event_stream(request, config, store, line),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )


def _with_feedback(store: RedisAlertStore, alerts: list) -> list[dict]:
    """Each alert as JSON with its operator verdict (or null) and the names of its evidence frames."""
    ids = [a.alert_id for a in alerts]
    verdicts = store.verdicts(VerdictSubject.alert, ids)
    evidence = store.evidence_frames_of(VerdictSubject.alert, ids)
    found = []
    for a in alerts:
        verdict = verdicts.get(a.alert_id)
        found.append(a.model_dump(mode="json") | {
            "verdict": _verdict_json(verdict) if verdict else None,
            "evidence": evidence[a.alert_id],
        })
    return found


def _reviews_json(store: RedisAlertStore, items: list[ReviewItem]) -> list[dict]:
    """Each review item as JSON with the names of its kept evidence frames (``kept``)."""
    kept = store.evidence_frames_of(VerdictSubject.review, [item.review_id for item in items])
    return [item.model_dump(mode="json") | {"kept": kept[item.review_id]} for item in items]


def _evidence_reply(store: RedisAlertStore, subject: VerdictSubject, owner_id: str, camera_id: str, seq: int) -> Response:
    jpeg = store.evidence(subject, owner_id, f"{camera_id}:{seq}")
    if jpeg is None:
        raise HTTPException(404, f"no evidence frame {camera_id}:{seq} of {subject.value} {owner_id!r} "
                                 "(not read back yet, no longer on Kafka, or evicted)")
    return Response(jpeg, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=3600"})


def _verdict_reply(record: Callable[..., object], body: VerdictBody, defective: bool) -> dict:
    try:
        verdict = record(defective=defective, by=body.by, defect_type=body.defect_type)
    except (AlertNotFound, ReviewNotFound) as exc:
        raise HTTPException(404, str(exc)) from None
    except ValidationError as exc:
        raise HTTPException(422, exc.errors()[0]["msg"]) from None
    return _verdict_json(verdict)  # type: ignore[arg-type]


def _verdict_json(verdict: OperatorVerdict) -> dict:
    return verdict.model_dump(mode="json") | {"label": verdict.label}


def _add_feedback_routes(app: FastAPI, store: RedisAlertStore, guarded: list) -> None:
    """Operator feedback: verdicts on alerts, the review sample of passed parts, and the evidence frames."""

    @app.post("/api/alerts/{alert_id}/verdict", dependencies=guarded)
    def alert_verdict(alert_id: str, body: VerdictBody) -> dict:
        if body.verdict not in ("confirmed", "false_alarm"):
            raise HTTPException(422, f"an alert's verdict is confirmed or false_alarm, not {body.verdict}")
        return _verdict_reply(lambda **kw: store.record_verdict(alert_id, **kw), body, body.verdict == "confirmed")

    @app.get("/api/alerts/{alert_id}/evidence", dependencies=guarded)
    def alert_evidence(alert_id: str) -> dict:
        if store.get_alert(alert_id) is None:
            raise HTTPException(404, f"no alert with id {alert_id!r}")
        return {"alert_id": alert_id, "frames": store.evidence_frames(VerdictSubject.alert, alert_id)}

    @app.get("/api/alerts/{alert_id}/evidence/{camera_id}/{seq}.jpg", dependencies=guarded)
    def alert_evidence_frame(alert_id: str, camera_id: str, seq: int) -> Response:
        return _evidence_reply(store, VerdictSubject.alert, alert_id, camera_id, seq)

    @app.get("/api/reviews", dependencies=guarded)
    def reviews(line: str | None = None, limit: int = Query(200, ge=1, le=1000)) -> list[dict]:
        return _reviews_json(store, store.list_reviews(line, open_only=True, limit=limit))

    @app.post("/api/reviews/{review_id}/verdict", dependencies=guarded)
    def review_verdict(review_id: str, body: VerdictBody) -> dict:
        if body.verdict not in ("good", "defective"):
            raise HTTPException(422, f"a review's verdict is good or defective, not {body.verdict}")
        return _verdict_reply(lambda **kw: store.record_review_verdict(review_id, **kw), body,
                              body.verdict == "defective")

    @app.get("/api/reviews/{review_id}/evidence/{camera_id}/{seq}.jpg", dependencies=guarded)
    def review_evidence_frame(review_id: str, camera_id: str, seq: int) -> Response:
        return _evidence_reply(store, VerdictSubject.review, review_id, camera_id, seq)


async def _event_stream(
    request: Request, config: PatchsightConfig, store: RedisAlertStore, line: str | None
) -> AsyncIterator[str]:
    """Alert events from the lines' pub/sub channels; camera health and part counts every few seconds."""
    client = aioredis.Redis.from_url(config.redis.url, **config.redis.client_kwargs())
    pubsub = client.pubsub()
    await pubsub.psubscribe(store.channel(line) if line else store.channel("*"))
    try:
        yield "retry: 2000\n\n"
        next_cameras = 0.0
        while not await request.is_disconnected():
            if time.monotonic() >= next_cameras:
                now = time.time_ns()
                cameras = await asyncio.to_thread(store.cameras, line)
                yield f"event: cameras\ndata: {json.dumps([_camera_json(c, now) for c in cameras])}\n\n"
                lines = [line] if line else sorted(set(await asyncio.to_thread(store.lines))
                                                   | {entry.id for entry in config.lines})
                parts = await asyncio.to_thread(_parts_json, store, lines)
                yield f"event: parts\ndata: {json.dumps(parts)}\n\n"
                reviews = await asyncio.to_thread(lambda: _reviews_json(store, store.list_reviews(line, limit=50)))
                yield f"event: reviews\ndata: {json.dumps(reviews)}\n\n"
                next_cameras = time.monotonic() + CAMERA_REFRESH_S
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
            if message and message["type"] == "pmessage":
                data = message["data"].decode() if isinstance(message["data"], bytes) else message["data"]
                yield f"event: alert\nid: {json.loads(data).get('id', '')}\ndata: {data}\n\n"
    finally:
        await pubsub.aclose()
        await client.aclose()


def serve(config: PatchsightConfig, host: str | None = None, port: int | None = None) -> None:
    import uvicorn

    uvicorn.run(
        create_app(config),
        host=host or config.dashboard.host,
        port=config.dashboard.port if port is None else port,
        log_level="warning",
        timeout_graceful_shutdown=2,
    )

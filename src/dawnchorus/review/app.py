"""The review web app: a Starlette application over one predict run and its verdict store.

:func:`create_app` serves the page (``static/``: plain HTML, CSS and JavaScript, no CDN, no build
step) and the JSON API the page uses and scripts can call:

- ``GET /api/info``: labels, thresholds, queues, the default reviewer;
- ``GET /api/items``: a page of items (``order``, ``species``, ``file``, ``min_score``, ``max_score``,
  ``unreviewed``, ``offset``, ``limit``); each has ``id, file, start_s, end_s, label, score`` and
  more (threshold, score bin, the window's top labels, its active verdict, media URLs);
- ``POST /api/verdicts`` (``item_id, label, verdict, other_label, note, reviewer, queue``), committed
  before the reply; ``GET /api/verdicts``; ``DELETE /api/verdicts/{id}`` (undo);
- ``GET /api/progress``: per species, detections and verdicts so far;
- ``GET /api/spectrogram/{recording}/{start_ms}.png``, ``GET /api/audio/{recording}/{start_ms}.wav``
  (``?context=1``: with a second either side): by recording id and window start only; anything
  else is a 404, so no request reaches a file outside the run;
- ``GET /api/export?format=raven|csv``: the verified selections as a download.

Errors are JSON ``{"error": "..."}``: 404 unknown id or path, 422 a request that cannot be used (the
message names the field), 403 a missing or wrong token where the app was started with one, 503 a
file of the run that cannot be written or read (the verdict store, the media cache): nothing saved.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import math
import secrets
import socket
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from dawnchorus.errors import AudioError, InputError, OutputError
from dawnchorus.io.verdicts import QUEUES, VERDICTS, VerdictStore
from dawnchorus.review import export, media
from dawnchorus.review.items import Run, item_id, parse_item_id, score_bin_of

STATIC_DIR = Path(__file__).with_name("static")
TOKEN_HEADER = "X-Review-Token"
VERDICT_FIELDS = ("item_id", "label", "verdict", "other_label", "note", "reviewer", "queue")
MAX_NOTE = 2000
MAX_NAME = 100


def create_app(run: Run, store: VerdictStore, reviewer: str = "", token: str | None = None) -> Starlette:
    """The review app over ``run``, writing verdicts to ``store``; ``reviewer`` is the name given to
    verdicts that carry none; with ``token`` every ``/api/`` request must carry it (query ``token``
    or header ``X-Review-Token``)."""
    api = _Api(run, store, reviewer)
    routes = [
        Route("/", _index),
        Route("/api/info", api.info),
        Route("/api/items", api.items),
        Route("/api/verdicts", api.list_verdicts, methods=["GET"]),
        Route("/api/verdicts", api.add_verdict, methods=["POST"]),
        Route("/api/verdicts/{verdict_id}", api.undo, methods=["DELETE"]),
        Route("/api/progress", api.progress),
        Route("/api/spectrogram/{recording}/{start_ms}.png", api.spectrogram),
        Route("/api/audio/{recording}/{start_ms}.wav", api.audio),
        Route("/api/export", api.export),
        Mount("/static", StaticFiles(directory=STATIC_DIR), name="static"),
    ]
    middleware = [Middleware(_TokenCheck, token=token)] if token else []
    handlers = {HTTPException: _http_error, OutputError: _output_error, InputError: _input_error}
    return Starlette(routes=routes, middleware=middleware, exception_handlers=handlers)  # type: ignore[arg-type]


def new_token() -> str:
    """A fresh access token for a server reachable from other hosts."""
    return secrets.token_urlsafe(16)


def error(status: int, message: str) -> JSONResponse:
    """A JSON error reply."""
    return JSONResponse({"error": message}, status_code=status)


class _TokenCheck(BaseHTTPMiddleware):
    """Refuses every ``/api/`` request without the access token (403)."""

    def __init__(self, app: Any, token: str) -> None:
        super().__init__(app)
        self.token = token

    async def dispatch(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
        if request.url.path.startswith("/api/"):
            given = request.query_params.get("token") or request.headers.get(TOKEN_HEADER) or ""
            if not secrets.compare_digest(given.encode(), self.token.encode()):
                return error(403, "access token missing or wrong: open the URL the server printed")
        return await call_next(request)


async def _index(request: Request) -> Response:
    return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return error(exc.status_code, str(exc.detail))


async def _input_error(request: Request, exc: Exception) -> Response:
    return error(422, str(exc))


async def _output_error(request: Request, exc: Exception) -> Response:
    """A file of the run that cannot be written or read (the verdict store, the media cache)."""
    return error(503, str(exc))


class _Api:
    """The API endpoints over one run and store."""

    def __init__(self, run: Run, store: VerdictStore, reviewer: str) -> None:
        self.run = run
        self.store = store
        self.reviewer = reviewer

    def info(self, request: Request) -> Response:
        run = self.run
        return JSONResponse(
            {
                "results_dir": str(run.results_dir),
                "labels": run.labels,
                "thresholds": run.thresholds,
                "threshold_source": run.threshold_source,
                "queues": list(QUEUES),
                "verdicts": list(VERDICTS),
                "reviewer": self.reviewer,
                "recordings": [
                    {"id": rid, "file": name, "found": run.recordings[rid] is not None}
                    for rid, name in run.files.items()
                ],
                "items": run.pairs,
            }
        )

    def items(self, request: Request) -> Response:
        query = request.query_params
        species = []  # species=a,b or species=a&species=b (a label with a comma in it: given whole)
        for value in query.getlist("species"):
            species += [value] if value in self.run.labels else [s for s in value.split(",") if s]
        active = self.store.frame()
        reviewed = set(zip(active["item_id"], active["label"], strict=True))
        total, page = self.run.query(
            order=query.get("order", "score"),
            species=species or None,
            file=query.get("file") or None,
            min_score=_number(query, "min_score"),
            max_score=_number(query, "max_score"),
            reviewed=reviewed if query.get("unreviewed") in ("1", "true") else None,
            offset=int(_number(query, "offset", integer=True) or 0),
            limit=int(_number(query, "limit", integer=True) or 50),
        )
        verdicts = {(row.item_id, row.label): row for row in active.itertuples(index=False)}
        for item in page:
            found = verdicts.get((item["id"], item["label"]))
            item["verdict"] = None if found is None else _verdict_json(found._asdict())
            base = f"{item['recording']}/{int(round(item['start_s'] * 1000))}"
            item["spectrogram"] = f"/api/spectrogram/{base}.png"
            item["audio"] = f"/api/audio/{base}.wav"
            item["audio_context"] = f"/api/audio/{base}.wav?context=1"
        return JSONResponse({"total": total, "items": page})

    def list_verdicts(self, request: Request) -> Response:
        frame = self.store.frame()
        return JSONResponse({"verdicts": [_verdict_json(r) for r in frame.to_dict("records")]})

    async def add_verdict(self, request: Request) -> Response:
        try:
            body = json.loads(await request.body() or b"null")
        except ValueError as exc:
            return error(422, f"request body: not JSON ({exc})")
        try:
            fields = self._verdict_fields(body)
        except InputError as exc:
            return error(422, str(exc))
        verdict_id = await run_in_threadpool(lambda: self.store.add(**fields))
        return JSONResponse({"id": verdict_id, **_verdict_json(fields)}, status_code=201)

    def undo(self, request: Request) -> Response:
        text = request.path_params["verdict_id"]
        if not text.isdigit() or not self.store.delete(int(text)):
            return error(404, f"no verdict {text!r} to undo")
        return JSONResponse({"id": int(text), "undone": True})

    def progress(self, request: Request) -> Response:
        active = self.store.frame()
        detections = self.run.detections()
        rows = []
        for label in self.run.labels:
            mine = active[active["label"] == label]
            counts = mine["verdict"].value_counts()
            rows.append(
                {
                    "label": label,
                    "detections": detections[label],
                    "reviewed": len(mine),
                    "random_sample": int((mine["queue"] == "random").sum()),
                    **{verdict: int(counts.get(verdict, 0)) for verdict in VERDICTS},
                }
            )
        return JSONResponse({"species": rows, "reviewed": len(active)})

    def spectrogram(self, request: Request) -> Response:
        recording, start_ms, row = self._window(request)
        cache = media.cache_path(self.run.results_dir, recording, start_ms, "png")
        made = self._render(lambda file: media.spectrogram_png(file, cache, *self._bounds(row)), recording)
        return _media_response(made, "image/png")

    def audio(self, request: Request) -> Response:
        recording, start_ms, row = self._window(request)
        context = request.query_params.get("context") in ("1", "true")
        kind = "context.wav" if context else "wav"
        cache = media.cache_path(self.run.results_dir, recording, start_ms, kind)
        made = self._render(
            lambda file: media.wav_slice(file, cache, *self._bounds(row), context=context), recording
        )
        return _media_response(made, "audio/wav")

    def export(self, request: Request) -> Response:
        export_format = request.query_params.get("format", "raven")
        if export_format not in export.EXPORT_FORMATS:
            return error(422, f"format must be one of {', '.join(export.EXPORT_FORMATS)}")
        selections = export.verified_selections(self.store.frame())
        if export_format == "csv":
            body, name, kind = selections.to_csv(index=False), "verified_selections.csv", "text/csv"
        else:
            body, name = export.raven_text(self.run, selections), "verified.selections.txt"
            kind = "text/plain"
        headers = {"Content-Disposition": f'attachment; filename="{name}"'}
        return Response(body, media_type=kind, headers=headers)

    # ---- helpers ------------------------------------------------------------------------------------

    def _window(self, request: Request) -> tuple[str, int, int]:
        """(recording id, start ms, row) of the window a media request names; 404 when none."""
        recording = request.path_params["recording"]
        text = request.path_params["start_ms"]
        row = self.run.window_row(recording, int(text)) if text.isdigit() else None
        if row is None:
            raise HTTPException(404, f"no window {recording}/{text} in this run")
        return recording, int(text), row

    def _bounds(self, row: int) -> tuple[float, float]:
        window = self.run.windows.iloc[row]
        return float(window["start_s"]), float(window["end_s"])

    def _render(self, make: Callable[[Path], Path | bytes], recording: str) -> Path | bytes:
        file = self.run.recordings.get(recording)
        if file is None:
            name = self.run.files.get(recording, recording)
            raise HTTPException(404, f"recording {name} not found on disk (start review with --audio DIR)")
        try:
            return make(file)
        except AudioError as exc:
            raise HTTPException(404, f"recording cannot be read: {exc}") from None

    def _verdict_fields(self, body: Any) -> dict[str, Any]:
        """The store's fields of a verdict request ``body``; raises :class:`InputError` naming the field."""
        if not isinstance(body, Mapping):
            raise InputError("request body: a JSON object with item_id and verdict expected")
        unknown = sorted(set(body) - set(VERDICT_FIELDS))
        if unknown:
            raise InputError(f"unknown field(s) {', '.join(unknown)}; expected {', '.join(VERDICT_FIELDS)}")
        for name in VERDICT_FIELDS:
            if body.get(name) is not None and not isinstance(body[name], str):
                raise InputError(f"{name}: must be a string")
        given = body.get("item_id")
        if not given:
            raise InputError("item_id: missing")
        parsed = parse_item_id(given)
        item = self.run.item(given)
        if parsed is None or item is None:
            raise InputError(f"item_id: {given!r} is not an item of this run")
        label = body.get("label") or item["label"]
        if label not in self.run.labels:
            raise InputError(f"label: {label!r} is not one of the model's labels")
        verdict = body.get("verdict")
        if verdict not in VERDICTS:
            raise InputError(f"verdict: must be one of {', '.join(VERDICTS)}, not {verdict!r}")
        other = (body.get("other_label") or "").strip() or None
        if verdict == "other" and other is None:
            raise InputError("other_label: needed with verdict 'other' (the species heard instead)")
        if other is not None and (len(other) > MAX_NAME or any(c in other for c in "\t\r\n")):
            raise InputError(f"other_label: at most {MAX_NAME} characters, no tabs or line breaks")
        note = body.get("note") or ""
        if len(note) > MAX_NOTE:
            raise InputError(f"note: at most {MAX_NOTE} characters")
        reviewer = (body.get("reviewer") or self.reviewer).strip()
        if len(reviewer) > MAX_NAME:
            raise InputError(f"reviewer: at most {MAX_NAME} characters")
        queue = body.get("queue") or ""
        if queue and queue not in QUEUES:
            raise InputError(f"queue: must be one of {', '.join(QUEUES)}")
        if queue == "random" and label != item["label"]:
            # Only the label the stratified sample drew belongs to it: another label of the window was
            # not drawn from its own species x score bin (precision estimates weight the sample by bin).
            queue = ""
        recording, start_ms, _ = parsed
        row = self.run.window_row(recording, start_ms)
        assert row is not None  # the item exists
        score = float(self.run.windows.iloc[row][label])
        return {
            "item_id": item_id(recording, start_ms, label),
            "file": item["file"],
            "start_s": item["start_s"],
            "end_s": item["end_s"],
            "label": label,
            "score": score,
            "verdict": verdict,
            "other_label": other if verdict == "other" else None,
            "note": note,
            "reviewer": reviewer,
            "queue": queue,
            "score_bin": score_bin_of(score) if queue == "random" else -1,
        }


def _media_response(made: Path | bytes, media_type: str) -> Response:
    """A cached file (with range requests, so audio can seek), or bytes rendered for this request."""
    if isinstance(made, Path):
        return FileResponse(made, media_type=media_type)
    return Response(made, media_type=media_type)


def _number(query: Mapping[str, str], name: str, integer: bool = False) -> float | None:
    """Query parameter ``name`` as a number (None when absent); :class:`InputError` when it is not one."""
    text = query.get(name, "")
    if text == "":
        return None
    try:
        value = int(text) if integer else float(text)
    except ValueError:
        raise InputError(f"{name}: {text!r} is not {'an integer' if integer else 'a number'}") from None
    if not math.isfinite(value) or (integer and value < 0):
        raise InputError(f"{name}: {text!r} is out of range")
    return value


def _verdict_json(row: Mapping[str, Any]) -> dict[str, Any]:
    """A verdict row as JSON (NaN and None as null)."""
    keys = ("id", "item_id", "file", "start_s", "end_s", "label", "score", "verdict", "other_label", "note",
            "reviewer", "created_at", "queue", "score_bin")
    out: dict[str, Any] = {}
    for key in keys:
        if key not in row:
            continue
        value = row[key]
        if isinstance(value, float) and math.isnan(value):
            value = None
        elif hasattr(value, "item"):
            value = value.item()
        out[key] = value
    return out


def is_loopback(host: str) -> bool:
    """Whether ``host`` is reachable from this machine only (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(app: Starlette, host: str, port: int, ready: Callable[[int], None]) -> None:
    """Serve ``app`` on ``host``:``port`` (0: a free port) until Ctrl-C (or SIGTERM), then return;
    ``ready(port)`` is called
    once the socket listens, with the port it got. Raises :class:`InputError` when it cannot listen."""
    import uvicorn

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        why = exc.strerror or str(exc)
        raise InputError(f"--host {host} --port {port}: cannot listen there ({why})") from None
    sock.listen(128)
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
    ready(int(sock.getsockname()[1]))
    with contextlib.suppress(KeyboardInterrupt):  # uvicorn stops on Ctrl-C, then raises it again
        uvicorn.Server(config).run(sockets=[sock])

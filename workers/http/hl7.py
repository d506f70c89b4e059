"""HL7 v2 over HTTP (docs/interfaces.md §5 "HTTP"; HAPI's "HL7 over HTTP" profile): `POST /hl7`.

    POST /hl7   Content-Type: application/hl7-v2 | application/hl7-v2+er7 | x-application/hl7-v2+er7
                [; charset=utf-8], one message as the body, credential with the `submit` role
                (Bearer, or HTTP Basic whose password is the token)
        -> 200, the HL7 answer in the request's content type (charset=utf-8), for AA, AE and AR alike

The message goes to the same inbound stream as MLLP's (workers/queue/verdicts.py): the bridge
judges, deduplicates and audits it exactly as any other delivery, and the answer is the one it
publishes for that entry. No verdict within RXGATE_MLLP_TIMEOUT: 200 with the timeout `AR`
(ERR-5 rxgate.timeout, to this request only; the entry stays queued and a resend gets its verdict).
The broker not taking it: 200 with `AR` 207 "not queued (broker unavailable), resend". A body that
is not HL7 (no MSH) or holds more than one message: 200 with `AR` hl7.structure, not queued (one
request is one delivery, one answer). Non-2xx only when no HL7 answer can be made: 401/403/429 (the
credential), 413 (a body over RXGATE_MAX_MESSAGE_BYTES, refused before it is read), 415 (another
content type or charset), 503 (HL7 over HTTP not configured on this app).

MSH-15/MSH-16 (enhanced mode) change nothing here: HTTP is one request, one answer, so the answer
is always the application response.
"""

# no `from __future__ import annotations`: FastAPI reads the route signature at runtime
import logging
from datetime import datetime
from typing import Annotated, Protocol

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response

from validator.er7 import RawMessage, decode, split_messages
from validator.errors import MessageRejected
from validator.reader import read_header
from validator.response import build_rejection
from workers.http.auth import Principal, require_role
from workers.queue.verdicts import NotQueued
from workers.settings import Settings

__all__ = ["HL7_MEDIA_TYPES", "Hl7Judge", "router"]

log = logging.getLogger("rxgate.http.hl7")

HL7_MEDIA_TYPES = ("application/hl7-v2", "application/hl7-v2+er7", "x-application/hl7-v2+er7")
NOT_QUEUED_RULE = "service.not_processed"  # as the MLLP listener answers (workers/queue/mllp.py)
NOT_QUEUED_TEXT = "not queued (broker unavailable), resend"
STRUCTURE_RULE = "hl7.structure"


class Hl7Judge(Protocol):
    """What /hl7 needs of workers.queue.verdicts.Verdicts: queue one message and await its answer."""

    async def judge(self, raw: RawMessage, timeout: float) -> tuple[object, str]: ...


def _media_type(header: str) -> tuple[str, dict[str, str]]:
    media, *params = [p.strip() for p in header.split(";")]
    values = {}
    for p in params:
        name, _, value = p.partition("=")
        values[name.strip().lower()] = value.strip().strip('"').lower()
    return media.lower(), values


def _rejection(raw: RawMessage | None, rule: str, code: str, text: str, settings: Settings) -> str:
    header = None
    if raw is not None:
        try:
            header = read_header(raw, settings.tz)
        except MessageRejected:
            header = None
    return build_rejection(header, rule, code, text, None, datetime.now(settings.tz))


def _hl7(text: str, media: str) -> Response:
    return Response(text.encode("utf-8", "replace"), status_code=200,
                    media_type=f"{media}; charset=utf-8", headers={"Cache-Control": "no-store"})


def _refused(status: int, message: str) -> JSONResponse:
    return JSONResponse({"message": message, "detail": message}, status_code=status)


router = APIRouter(tags=["hl7"])

_BODY_DOC = {"requestBody": {"required": True, "content": {
    m: {"schema": {"type": "string"}, "example": "MSH|^~\\&|EHR|WARD|RXGATE|PHARM|...\r..."}
    for m in HL7_MEDIA_TYPES}}}
_RESPONSES = {
    200: {"description": "the HL7 answer (AA, AE or AR), in the request's content type",
          "content": {m: {"schema": {"type": "string"}} for m in HL7_MEDIA_TYPES}},
    401: {"description": "no or a wrong credential"}, 403: {"description": "the credential lacks the `submit` role"},
    413: {"description": "body over the message size limit"}, 415: {"description": "not an HL7 v2 content type "
                                                                                   "or not UTF-8"},
    429: {"description": "too many failed credentials from this address"},
    503: {"description": "HL7 over HTTP is not configured"},
}


@router.post("/hl7", openapi_extra=_BODY_DOC, responses=_RESPONSES, response_class=Response,
             summary="Submit one HL7 v2 message; the answer is its ACK (HAPI HL7 over HTTP)")
async def submit_hl7(request: Request,
                     who: Annotated[Principal, Depends(require_role("submit", allow_basic=True))]) -> Response:
    media, params = _media_type(request.headers.get("content-type", ""))
    if media not in HL7_MEDIA_TYPES:
        return _refused(415, f"Content-Type must be one of {', '.join(HL7_MEDIA_TYPES)} (got {media or 'none'!r})")
    charset = params.get("charset", "utf-8")
    if charset not in ("utf-8", "utf8"):
        return _refused(415, f"charset must be utf-8 (got {charset!r})")
    judge: Hl7Judge | None = request.app.state.hl7_judge
    settings: Settings = request.app.state.hl7_settings
    if judge is None or settings is None:
        return _refused(503, "HL7 over HTTP is not configured on this server")
    body = await request.body()  # bounded by the app's body limit (413 past RXGATE_MAX_MESSAGE_BYTES)
    split = split_messages(decode(body))
    if split.no_msh or not split.messages:
        log.warning("hl7 over http (%s): body of %d bytes without an MSH segment: AR", who.name, len(body))
        return _hl7(_rejection(None, STRUCTURE_RULE, "100", "body is not HL7 (no MSH segment found)", settings), media)
    raw = split.messages[0]
    if len(split.messages) > 1:
        log.warning("hl7 over http (%s): %d messages in one body: AR", who.name, len(split.messages))
        return _hl7(_rejection(raw, STRUCTURE_RULE, "100", "one message per request (the body holds "
                               f"{len(split.messages)})", settings), media)
    try:
        _submission, answer = await judge.judge(raw, settings.mllp_timeout)
    except NotQueued as exc:
        log.error("hl7 over http (%s): could not queue the message (%s): AR sent", who.name, exc)
        return _hl7(_rejection(raw, NOT_QUEUED_RULE, "207", NOT_QUEUED_TEXT, settings), media)
    return _hl7(answer, media)

"""The operators' routes (docs/interfaces.md §5 "Operators"): the dead letters over HTTP, as `rxgate deadletter`.

    GET  /operator/deadletters           {"entries": [{id, reason, time, source, control_id, resendable, ...}]}
    POST /operator/deadletters/resend    {"ids": [...]} or {"all": true}   -> {"done": [...], "refused": {id: why}}
    POST /operator/deadletters/drop      {"ids": [...], "reason": "..."}  -> {"done": [...], "refused": {id: why}}

Role `operator` (an auditor's credential gets 403). Operators see ids, reasons and control ids, never
message text. The dead-letter stream is the app's
`state.dead_letters` (a callable giving a `workers.queue.deadletters.DeadLetters`; `rxgate serve`
sets it from the settings); without it the routes answer 503 naming what is missing.
"""

# no `from __future__ import annotations`: FastAPI must see the Annotated types at runtime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Request
from pydantic import BaseModel, Field, model_validator

from workers.http.auth import Principal, require_role

__all__ = ["router"]

Operator = Annotated[Principal, Depends(require_role("operator"))]  # docs/interfaces.md §5 "Access"

_ID = r"^\d{1,20}-\d{1,20}$"  # a Redis stream entry id


class ResendIn(BaseModel):
    ids: list[Annotated[str, Field(pattern=_ID)]] = Field(default_factory=list, max_length=100)
    all: bool = False

    @model_validator(mode="after")
    def _one_of(self):
        if self.all == bool(self.ids):
            raise ValueError("give ids or all=true (one of them)")
        return self


class DropIn(BaseModel):
    ids: list[Annotated[str, Field(pattern=_ID)]] = Field(min_length=1, max_length=100)
    reason: str = Field(min_length=1, max_length=500, pattern=r"\S")


def _dead_letters(request: Request):
    factory = getattr(request.app.state, "dead_letters", None)
    if factory is None:
        raise HTTPException(503, "the dead-letter stream is not configured on this server (run it under rxgate serve)")
    try:
        return factory()
    except Exception as exc:  # noqa: BLE001 - the broker is down: said plainly
        raise HTTPException(503, f"the stream broker does not answer ({type(exc).__name__})") from None


def _handled(handled) -> dict[str, Any]:
    return {"done": handled.done, "refused": handled.refused}


router = APIRouter(prefix="/operator", tags=["operators"], dependencies=[Depends(require_role("operator"))],
                   responses={401: {"description": "missing or wrong credential"},
                              403: {"description": "the credential lacks the `operator` role"},
                              503: {"description": "the dead-letter stream is not configured or does not answer"}})


@router.get("/deadletters", summary="the dead letters (ids, reasons, control ids; never message text)")
def list_dead_letters(request: Request) -> dict[str, Any]:
    letters = _dead_letters(request)
    return {"entries": [e.summary(request.app.state.tz) for e in letters.entries()]}


@router.post("/deadletters/resend", summary="judge dead letters again (replay_of set on their answers)")
def resend_dead_letters(request: Request, body: ResendIn) -> dict[str, Any]:
    return _handled(_dead_letters(request).resend(None if body.all else body.ids))


@router.post("/deadletters/drop", summary="remove dead letters, recorded in the audit log")
def drop_dead_letters(request: Request, body: DropIn, operator: Operator) -> dict[str, Any]:
    letters = _dead_letters(request)
    letters.store = request.app.state.store
    who = f"{operator.name} (http {request.client.host if request.client else '?'})"
    return _handled(letters.drop(body.ids, body.reason, by=who))

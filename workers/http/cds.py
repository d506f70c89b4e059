"""CDS Hooks 2.0 `order-sign` with FHIR R4 (docs/interfaces.md §5 "HTTP"; docs/cds-hooks.md): discovery, the call, feedback.

    GET  /cds-services                                  open: the one service and its prefetch templates
    POST /cds-services/rxgate-go-order-sign             JWT: draft orders + prefetch -> {"cards": [...]}
    POST /cds-services/rxgate-go-order-sign/feedback    JWT: each card's outcome, into the audit log

A call is judged exactly as an HL7 order message: `context.draftOrders` and the prefetched Patient,
Observations and MedicationRequests are mapped onto the same order set (validator/fhir.py) and judged
by `validator.verdict.judge` against the patient's course history (rxgate's accepted orders plus the
record's MedicationRequests, each order counted once). Every error finding is a `critical` card,
every warning a `warning` card, with the finding's message as detail. A draft order is not an order:
nothing enters the course history, but the call is one audit record (sender = the JWT issuer,
control id = hookInstance, raw message = the request with any FHIR access token redacted, result =
the cards and findings). Data that neither prefetch nor the `fhirServer` can supply: 412.
"""

# no `from __future__ import annotations`: FastAPI reads the route signatures at runtime
import json
import logging
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, tzinfo
from typing import Any, Literal
from urllib.parse import quote, urlsplit

import httpx
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.concurrency import run_in_threadpool

from validator import fhir
from validator.findings import Finding, error
from validator.history import HistoryChanged, ProcessedMessage
from validator.protocol import Protocol, ProtocolSet, load_protocol_set
from validator.verdict import Judgement, OrderVerdict, judge
from workers.http.cds_auth import LEEWAY, CdsAuthError, CdsKeysUnavailable, Issuer, authenticate, parse_issuers
from workers.store import SqlStore, StoreUnavailable
from workers.store.cds import Card, CdsLedger

log = logging.getLogger("rxgate.cds")

SERVICE_ID = "rxgate-go-order-sign"
HOOK = "order-sign"
SERVICE_PATH = f"/cds-services/{SERVICE_ID}"
FEEDBACK_PATH = f"{SERVICE_PATH}/feedback"
MAX_BODY_BYTES = 16 * 1024 * 1024
MAX_PAGES = 20  # per prefetch query fetched from a fhirServer
SUMMARY_LIMIT = 139  # CDS Hooks: a summary under 140 characters
TOPIC_SYSTEM = "urn:rxgate:protocol"
OVERRIDE_SYSTEM = "urn:rxgate:override-reason"
OVERRIDE_REASONS = [
    {"system": OVERRIDE_SYSTEM, "code": "approved-deviation", "display": "Deviation approved by the responsible physician"},
    {"system": OVERRIDE_SYSTEM, "code": "data-incorrect", "display": "The data rxgate used is incorrect or out of date"},
    {"system": OVERRIDE_SYSTEM, "code": "other", "display": "Other reason (see comment)"},
]
INTERNAL_RULE = "rxgate.internal_error"
REJUDGE_ATTEMPTS = 5
_FHIR_ID = r"^[A-Za-z0-9\-.]{1,64}$"
_MARKDOWN = re.compile(r"([\\`*_\[\]<>#|~])")


# --- request and response shapes ----------------------------------------------------------------


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class FhirAuthorization(_Open):
    access_token: str = Field(min_length=1)
    token_type: str = "Bearer"
    expires_in: int | None = None
    scope: str = ""
    subject: str = ""


class OrderSignContext(_Open):
    userId: str = Field(min_length=1)
    patientId: str = Field(pattern=_FHIR_ID)
    encounterId: str | None = None
    draftOrders: dict[str, Any]


class OrderSignRequest(_Open):
    hook: str
    hookInstance: str = Field(min_length=1, max_length=500)
    fhirServer: str | None = Field(default=None, pattern=r"^https?://")
    fhirAuthorization: FhirAuthorization | None = None
    context: OrderSignContext
    prefetch: dict[str, Any] | None = None


class Coding(_Open):
    system: str | None = None
    code: str | None = None
    display: str | None = None


class OverrideReason(_Open):
    reason: Coding | None = None
    userComment: str | None = Field(default=None, max_length=10_000)


class FeedbackItem(_Open):
    card: str = Field(min_length=1, max_length=100)
    outcome: Literal["accepted", "overridden"]
    acceptedSuggestions: list[dict[str, Any]] | None = None
    overrideReason: OverrideReason | None = None
    outcomeTimestamp: datetime


class FeedbackRequest(_Open):
    feedback: list[FeedbackItem] = Field(min_length=1, max_length=1000)


class ServiceOut(BaseModel):
    hook: str
    id: str
    title: str
    description: str
    prefetch: dict[str, str]
    usageRequirements: str


class DiscoveryOut(BaseModel):
    services: list[ServiceOut]


class CardsOut(BaseModel):
    model_config = ConfigDict(extra="allow")
    cards: list[dict[str, Any]]


class ErrorOut(BaseModel):
    message: str


# --- configuration ------------------------------------------------------------------------------


def _utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass
class CdsConfig:
    """What the CDS routes need besides the store; `now` and `http` are replaced in tests."""

    protocols: ProtocolSet
    tz: tzinfo
    issuers: dict[str, Issuer]
    base_url: str = ""  # public base URL for the JWT aud check; "" -> the URL as the request reached us
    fhir_timeout: float = 10.0
    now: Callable[[], datetime] = _utc_now
    http: Callable[[], httpx.Client] | None = None

    @classmethod
    def from_settings(cls, settings) -> "CdsConfig":
        """From RXGATE_*: a bad RXGATE_CDS_ISSUERS (unreadable key file…) raises, naming the entry."""
        return cls(protocols=load_protocol_set(settings.protocol, settings.protocol_field), tz=settings.tz,
                   issuers=parse_issuers(settings.cds_issuers, timeout=settings.cds_fhir_timeout),
                   base_url=settings.cds_base_url.rstrip("/"), fhir_timeout=settings.cds_fhir_timeout)

    def client(self) -> httpx.Client:
        if self.http is not None:
            return self.http()
        return httpx.Client(timeout=self.fhir_timeout, follow_redirects=False)


def prefetch_templates(protocols: ProtocolSet) -> dict[str, str]:
    """Context fields only; observations by the LOINC codes rxgate reads (and the CD33 code list)."""
    codes = ",".join(f"{fhir.LOINC}|{c}" if re.fullmatch(r"\d{1,7}-\d", c) else c for c in fhir.observation_codes(protocols))
    return {
        "patient": "Patient/{{context.patientId}}",
        "observations": "Observation?patient={{context.patientId}}&code=" + codes,
        "medications": "MedicationRequest?patient={{context.patientId}}",
    }


def _service(protocols: ProtocolSet) -> dict[str, Any]:
    return {
        "hook": HOOK,
        "id": SERVICE_ID,
        "title": "rxgate: gemtuzumab ozogamicin protocol check",
        "description": "Checks draft gemtuzumab ozogamicin (GO) orders and their premedications against the "
                       f"site's GO protocol ({protocols.default.id}) before they are signed: eligibility, dose by "
                       "BSA, route, infusion duration, course schedule, premedications, CD33, WBC, liver tests "
                       "and HSCT timing. One card per problem: critical for an error, warning for a warning.",
        "prefetch": prefetch_templates(protocols),
        "usageRequirements": "Requests must carry a JWT (RS384 or ES384) from a trusted issuer. Send the Patient "
                             "with an MR identifier (assigner = the HL7 assigning authority) so rxgate's own "
                             "course history is found.",
    }


# --- errors ---------------------------------------------------------------------------------------


def _error(status: int, message: str, **extra: Any) -> JSONResponse:
    headers = {"WWW-Authenticate": 'Bearer realm="cds-hooks"'} if status == 401 else None
    return JSONResponse({"message": message, "detail": message, **extra}, status_code=status, headers=headers)


class Precondition(Exception):
    """Data the rules need that neither prefetch nor the fhirServer supplied: HTTP 412."""

    def __init__(self, message: str, key: str):
        super().__init__(message)
        self.key = key


# --- fetching what prefetch lacks -----------------------------------------------------------------


@dataclass
class _Sources:
    """The FHIR data of one call: prefetch values, else the client's fhirServer."""

    request: OrderSignRequest
    config: CdsConfig
    fetched: list[str] = field(default_factory=list)  # queries sent to the fhirServer (audited)
    _client: httpx.Client | None = None

    def close(self) -> None:
        if self._client is not None:
            self._client.close()

    @property
    def server(self) -> str:
        return (self.request.fhirServer or "").rstrip("/")

    def _headers(self) -> dict[str, str]:
        headers = {"Accept": "application/fhir+json"}
        auth = self.request.fhirAuthorization
        if auth is not None:
            parts = urlsplit(self.server)
            if parts.scheme != "https" and parts.hostname not in ("127.0.0.1", "localhost", "::1"):
                raise Precondition(f"fhirServer {self.server} is not https: the access token is not sent in the "
                                   "clear", "fhirServer")
            headers["Authorization"] = f"Bearer {auth.access_token}"
        return headers

    def _get(self, url: str, key: str) -> Any:
        if self._client is None:
            self._client = self.config.client()
        self.fetched.append(url[len(self.server):] if url.startswith(self.server) else url)
        try:
            response = self._client.get(url, headers=self._headers())
        except httpx.HTTPError as exc:
            raise Precondition(f"prefetch {key!r}: the fhirServer could not be reached ({type(exc).__name__})",
                               key) from None
        if response.status_code == 404 and key == "patient":
            return None  # the read found nothing: no such data (as a null prefetch value)
        if response.status_code != 200:
            raise Precondition(f"prefetch {key!r}: the fhirServer answered HTTP {response.status_code}", key)
        try:
            return response.json()
        except ValueError:
            raise Precondition(f"prefetch {key!r}: the fhirServer's answer is not JSON", key) from None

    def _fetch(self, query: str, key: str, why: str) -> fhir.Read | None:
        if not self.server:
            raise Precondition(f"prefetch {key!r} ({query}) {why} and the request names no fhirServer", key)
        data = self._get(f"{self.server}/{query}", key)
        if data is None:
            return None
        return self._complete(fhir.read_bundle(data, f"prefetch.{key}"), key)

    def _complete(self, read: fhir.Read, key: str) -> fhir.Read:
        """Follow a searchset's `next` links on the same fhirServer (a paged prefetch is incomplete)."""
        pages = 1
        while read.paged:
            if not self.server:
                raise Precondition(f"prefetch {key!r} is paged (a next link) and the request names no fhirServer "
                                   "to read the rest", key)
            if not read.next_url.startswith(self.server + "/"):
                raise Precondition(f"prefetch {key!r}: its next link leaves the fhirServer", key)
            if pages >= MAX_PAGES:
                raise Precondition(f"prefetch {key!r} has more than {MAX_PAGES} pages", key)
            more = fhir.read_bundle(self._get(read.next_url, key), f"prefetch.{key}.page{pages + 1}")
            pages += 1
            read = fhir.Read(resources=read.resources + more.resources, problems=read.problems + more.problems,
                             paged=more.paged, next_url=more.next_url, outcomes=read.outcomes + more.outcomes)
            if read.outcomes:
                raise Precondition(f"prefetch {key!r}: the fhirServer reported {'; '.join(read.outcomes)}", key)
        return read

    def get(self, key: str) -> fhir.Read | None:
        """The data of one prefetch key; None when the client says it has none (a null value)."""
        query = prefetch_templates(self.config.protocols)[key].replace(
            "{{context.patientId}}", quote(self.request.context.patientId, safe=""))
        prefetch = self.request.prefetch or {}
        if key not in prefetch:
            return self._fetch(query, key, "was not sent")
        value = prefetch[key]
        if value is None:
            return None
        read = fhir.read_bundle(value, f"prefetch.{key}")
        if read.outcomes:
            return self._fetch(query, key, f"holds the client's error ({'; '.join(read.outcomes)})")
        return self._complete(read, key)

    def medication(self, reference: str) -> fhir.Read:
        """A Medication a MedicationRequest references and nothing sent holds."""
        key = f"medication {reference}"
        if reference.startswith(("http://", "https://")):
            if not self.server or not reference.startswith(self.server + "/"):
                raise Precondition(f"{key} is on another server than the fhirServer", "medication")
            url = reference
        elif self.server:
            url = f"{self.server}/{reference}"
        else:
            raise Precondition(f"{key} is neither contained nor in the request, and the request names no "
                               "fhirServer", "medication")
        data = self._get(url, key)
        return fhir.read_bundle(data, reference) if data is not None else fhir.Read()


# --- cards -------------------------------------------------------------------------------------------


def _markdown(text: str) -> str:
    return _MARKDOWN.sub(r"\\\1", text)


def summary_text(rule: str, message: str) -> str:
    """`rule: message`, under 140 characters: cut at a word boundary with `...` when longer."""
    text = " ".join(f"{rule}: {message}".split())
    if len(text) <= SUMMARY_LIMIT:
        return text
    cut = text[: SUMMARY_LIMIT - 3]
    if " " in cut[len(rule) + 2:]:
        cut = cut[: cut.rfind(" ")]
    return cut.rstrip(" ,;:(") + "..."


def overridable_rules(protocol: Protocol) -> frozenset[str]:
    """The protocol's `overridable` rule ids (issue 14's schema field); none when the schema has no such field."""
    return frozenset(getattr(protocol, "overridable", None) or ())


def _order_label(verdict: OrderVerdict | None) -> str:
    if verdict is None:
        return ""
    order = verdict.order
    resource = order.orc_location.resource if order.orc_location is not None else ""
    return f"{order.drug_label() or 'order'} ({resource or order.placer_number})"


def make_card(found: Finding, verdict: OrderVerdict | None, protocol: Protocol) -> dict[str, Any]:
    where = found.location.short() if found.location is not None else ""
    lines = [f"**{_markdown(found.rule)}** ({found.severity})" + (f" — {_markdown(_order_label(verdict))}"
                                                                   if verdict is not None else ""),
             "", _markdown(found.message)]
    if where:
        lines += ["", f"Where: `{where}`"]
    lines += ["", f"Protocol: {_markdown(protocol.title)} (`{protocol.id}`, version `{protocol.version}`)"]
    card: dict[str, Any] = {
        "uuid": str(uuid.uuid4()),
        "summary": summary_text(found.rule, found.message),
        "detail": "\n".join(lines),
        "indicator": "critical" if found.severity == "error" else "warning",
        "source": {
            "label": "rxgate",
            "topic": {"system": TOPIC_SYSTEM, "code": protocol.id, "display": f"{protocol.id} version {protocol.version}"},
        },
    }
    if found.rule in overridable_rules(protocol):
        card["overrideReasons"] = OVERRIDE_REASONS
    return card


def _protocol_of(verdict: OrderVerdict | None, protocols: ProtocolSet) -> Protocol:
    if verdict is not None:
        chosen = protocols.for_order(verdict.order)
        if chosen is not None:
            return chosen
    return protocols.default


def cards_of(judgement: Judgement, protocols: ProtocolSet) -> list[tuple[dict[str, Any], Finding]]:
    """One card per error or warning, message-level findings first, then each order's, in order."""
    out = []
    for found in judgement.message_findings:
        if found.severity in ("error", "warning"):
            out.append((make_card(found, None, protocols.default), found))
    for verdict in judgement.orders:
        for found in verdict.findings:
            if found.severity in ("error", "warning"):
                out.append((make_card(found, verdict, _protocol_of(verdict, protocols)), found))
    return out


# --- the audit record of a call ----------------------------------------------------------------------


def _redacted(body: dict[str, Any]) -> str:
    """The request as received, with the FHIR access token (a credential, not order data) redacted."""
    if isinstance(body.get("fhirAuthorization"), dict) and "access_token" in body["fhirAuthorization"]:
        body = {**body, "fhirAuthorization": {**body["fhirAuthorization"], "access_token": "[redacted]"}}
    return json.dumps(body, ensure_ascii=False, separators=(",", ":"))


def call_result(judgement: Judgement, cards: list[dict[str, Any]], protocols: ProtocolSet) -> dict[str, Any]:
    order_set = judgement.order_set
    orders = []
    for v in judgement.orders:
        item = {
            "placer_order_number": v.order.placer_number,
            "resource": v.order.orc_location.resource if v.order.orc_location is not None else "",
            "drug": v.order.drug_label(),
            "protocol_order": v.protocol_order,
            "order_control": v.control,
            "findings": [f.to_json() for f in v.findings],
        }
        if "protocol_id" in v.computed:
            item["protocol"] = {"id": v.computed["protocol_id"], "version": v.computed["protocol_version"]}
        orders.append(item)
    return {
        "control_id": order_set.control_id,
        "message_type": order_set.message_type,
        "ack_code": judgement.ack_code,
        "patient_id": order_set.patient.id or None,
        "orders": orders,
        "findings": [f.to_json() for f in judgement.findings],
        "protocol": {"id": protocols.default.id, "version": protocols.default.version},
        "cards": cards,
        "response": json.dumps({"cards": cards}, ensure_ascii=False),
    }


# --- the router ----------------------------------------------------------------------------------------


def cds_router(store: SqlStore, config: CdsConfig) -> APIRouter:
    router = APIRouter(tags=["cds-hooks"])
    ledger = CdsLedger(store)

    def audience(request: Request) -> str:
        if config.base_url:
            return config.base_url + request.url.path
        url = request.url
        return f"{url.scheme}://{url.netloc}{url.path}"

    def authenticated(request: Request):
        now = config.now()

        def claim(issuer: str, jti: str, expires_at: datetime) -> bool:
            return ledger.claim_jti(issuer, jti, expires_at, now, LEEWAY)

        return authenticate(request.headers.get("authorization"), audience(request), config.issuers, claim)

    async def authorise(request: Request):
        """(caller, None) or (None, the 401/503 answer): the body is not read before this passes."""
        try:
            return await run_in_threadpool(authenticated, request), None
        except CdsAuthError as exc:
            log.info("cds: refused %s: %s", request.url.path, exc)
            return None, _error(401, str(exc))
        except CdsKeysUnavailable as exc:
            return None, _error(503, str(exc))
        except StoreUnavailable as exc:
            return None, _error(503, f"database unavailable: {exc}")

    async def read_json(request: Request) -> tuple[Any, JSONResponse | None]:
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
            return None, _error(413, f"request of {declared} bytes exceeds {MAX_BODY_BYTES} bytes")
        body = await request.body()
        if len(body) > MAX_BODY_BYTES:
            return None, _error(413, f"request of {len(body)} bytes exceeds {MAX_BODY_BYTES} bytes")
        try:
            return json.loads(body), None
        except ValueError as exc:
            return None, _error(400, f"the request body is not JSON ({exc})")

    @router.get("/cds-services", response_model=DiscoveryOut)
    def discovery():
        return {"services": [_service(config.protocols)]}

    common = {400: {"model": ErrorOut, "description": "not an order-sign request"},
              401: {"model": ErrorOut, "description": "missing or bad JWT"},
              413: {"model": ErrorOut, "description": "request too large"},
              503: {"model": ErrorOut, "description": "database or the issuer's JWKS unavailable"}}
    body_doc = {"requestBody": {"required": True, "content": {"application/json": {"schema": {"type": "object"}}}}}

    @router.post(SERVICE_PATH, response_model=CardsOut, openapi_extra=body_doc,
                 responses={**common, 412: {"model": ErrorOut, "description": "data the rules need is missing"}})
    async def order_sign(request: Request):
        caller, refused = await authorise(request)
        if refused is not None:
            return refused
        raw, bad = await read_json(request)
        if bad is not None:
            return bad
        if not isinstance(raw, dict):
            return _error(400, "the request body is not a JSON object")
        try:
            call = OrderSignRequest.model_validate(raw)
        except ValidationError as exc:
            return _error(400, f"not a CDS Hooks order-sign request: {fhir.validation_text(exc)}")
        if call.hook != HOOK:
            return _error(400, f"hook {call.hook!r} is not served here (order-sign)")
        if call.context.draftOrders.get("resourceType") != "Bundle":
            return _error(400, "context.draftOrders is not a FHIR Bundle")
        if call.fhirAuthorization is not None and not call.fhirServer:
            return _error(400, "fhirAuthorization without fhirServer")
        return await run_in_threadpool(answer_call, call, raw, caller)

    def answer_call(call: OrderSignRequest, raw: dict[str, Any], caller) -> JSONResponse:
        started = time.perf_counter()
        received_at = config.now()
        sources = _Sources(call, config)
        try:
            for attempt in range(1, REJUDGE_ATTEMPTS + 1):
                try:
                    judgement, fetched = judge_call(call, sources, caller.issuer, received_at)
                    pairs = cards_of(judgement, config.protocols)
                    save_call(call, raw, caller, judgement, pairs, fetched, received_at)
                    break
                except HistoryChanged:
                    if attempt == REJUDGE_ATTEMPTS:
                        raise
        except Precondition as exc:
            log.info("cds order-sign hookInstance=%s: 412 (%s)", call.hookInstance, exc.key)
            return _error(412, str(exc), prefetch=exc.key)
        except StoreUnavailable as exc:
            return _error(503, f"database unavailable: {exc}")
        except Exception:  # noqa: BLE001 - never a silent failure: a critical card, audited
            log.exception("cds order-sign hookInstance=%s: internal error", call.hookInstance)
            return internal_error(call, raw, caller, received_at)
        finally:
            sources.close()
        cards = [card for card, _ in pairs]
        rules = sorted({found.rule for _, found in pairs})
        log.info("cds order-sign hookInstance=%s cards=%d rules=%s ms=%.1f", call.hookInstance, len(cards),
                 ",".join(rules) or "-", (time.perf_counter() - started) * 1000)
        return JSONResponse({"cards": cards})

    def judge_call(call: OrderSignRequest, sources: _Sources, issuer: str, received_at: datetime):
        patient_id = call.context.patientId
        drafts = fhir.read_bundle(call.context.draftOrders, "context.draftOrders")
        patient = sources.get("patient")
        observations = sources.get("observations")
        medications = sources.get("medications")
        known = fhir.medications_in(drafts, *(r for r in (medications,) if r is not None))
        requests = [r for _, r in drafts.resources + (medications.resources if medications else [])
                    if isinstance(r, fhir.MedicationRequest)]
        for reference in sorted({fhir.medication_reference(r) for r in requests} - {""}):
            if reference not in known and not any(k.endswith("/" + reference) for k in known):
                known.update(fhir.medications_in(sources.medication(reference)))
        mapped = fhir.order_set_from_fhir(
            hook_instance=call.hookInstance, sender=issuer, patient_id=patient_id, drafts=drafts, patient=patient,
            observations=observations, medications=known, protocols=config.protocols, tz=config.tz,
            received_at=received_at,
        )
        order_set = mapped.order_set
        key = order_set.patient.key
        stored = store.orders_for(key) if key else []
        from_record = [] if medications is None else fhir.history_from_fhir(
            medications, patient_id=patient_id, patient_key=key, sender=issuer, medications=known,
            protocols=config.protocols,
            tz=config.tz, since=fhir.lookback_start(order_set, config.protocols, received_at),
            draft_ids={r.id for _, r in drafts.resources if getattr(r, "id", None)},
        )
        history = fhir.course_history(stored, from_record, order_set)
        judgement = judge(order_set, history, config.protocols, tz=config.tz, received_at=received_at)
        judgement = fhir.localise(fhir.add_problems(judgement, mapped.problems), mapped.patient_location)
        judgement.new_orders, judgement.cancellations = [], []  # a draft order is not an order
        return judgement, list(sources.fetched)

    def save_call(call, raw, caller, judgement: Judgement, pairs, fetched: list[str], received_at: datetime) -> None:
        cards = [card for card, _ in pairs]
        result = call_result(judgement, cards, config.protocols)
        computed = {
            "caller": {"issuer": caller.issuer, "subject": caller.subject, "tenant": caller.tenant, "jti": caller.jti},
            "user": call.context.userId,
            "fhir_server": call.fhirServer,
            "fetched": fetched,
            "orders": [v.computed for v in judgement.orders],
            "cards": {card["uuid"]: found.rule for card, found in pairs},
        }
        store.save(ProcessedMessage(
            key=None, received_at=received_at, answered_at=config.now(), sender=caller.issuer,
            control_id=call.hookInstance, patient_key=judgement.order_set.patient.key, raw_message=_redacted(raw),
            ack_code=judgement.ack_code, result=result, response=result["response"],
            protocol_id=config.protocols.default.id, protocol_version=config.protocols.default.version,
            computed=computed,
        ))
        ledger.add_cards([
            Card(card["uuid"], caller.issuer, call.hookInstance, judgement.order_set.patient.key, found.rule,
                 card["indicator"], found.location.short() if found.location else None, card["summary"])
            for card, found in pairs
        ], config.now())

    def internal_error(call, raw, caller, received_at: datetime) -> JSONResponse:
        found = error(INTERNAL_RULE, "rxgate could not check these orders (an internal error, logged with the "
                                     "hookInstance): check them by hand")
        card = make_card(found, None, config.protocols.default)
        result = {"control_id": call.hookInstance, "message_type": "CDS order-sign", "ack_code": "AR",
                  "patient_id": None, "orders": [], "findings": [found.to_json()], "cards": [card],
                  "response": json.dumps({"cards": [card]})}
        try:
            store.save(ProcessedMessage(
                key=None, received_at=received_at, answered_at=config.now(), sender=caller.issuer,
                control_id=call.hookInstance, patient_key="", raw_message=_redacted(raw), ack_code="AR",
                result=result, response=result["response"], protocol_id=config.protocols.default.id,
                protocol_version=config.protocols.default.version,
            ))
            ledger.add_cards([Card(card["uuid"], caller.issuer, call.hookInstance, "", INTERNAL_RULE, "critical",
                                   None, card["summary"])], config.now())
        except Exception:  # noqa: BLE001 - the database is the problem: nothing can be answered unaudited
            log.exception("cds order-sign hookInstance=%s: the internal error could not be audited", call.hookInstance)
            return _error(503, "rxgate could not check these orders and could not record it")
        return JSONResponse({"cards": [card]})

    @router.post(FEEDBACK_PATH, openapi_extra=body_doc,
                 responses={**common, 404: {"model": ErrorOut, "description": "a card rxgate did not answer"}})
    async def feedback(request: Request):
        caller, refused = await authorise(request)
        if refused is not None:
            return refused
        raw, bad = await read_json(request)
        if bad is not None:
            return bad
        try:
            body = FeedbackRequest.model_validate(raw)
        except ValidationError as exc:
            return _error(400, f"not a CDS Hooks feedback request: {fhir.validation_text(exc)}")
        try:
            return await run_in_threadpool(record_feedback, body, raw, caller)
        except StoreUnavailable as exc:
            return _error(503, f"database unavailable: {exc}")

    def record_feedback(body: FeedbackRequest, raw: dict[str, Any], caller) -> JSONResponse:
        cards = ledger.cards([item.card for item in body.feedback])
        # a card answered to another issuer is as unknown as one never answered (no existence leak)
        unknown = [item.card for item in body.feedback
                   if item.card not in cards or cards[item.card].issuer != caller.issuer]
        if unknown:
            return _error(404, f"no card {', '.join(unknown)} was answered to {caller.issuer}: nothing recorded")
        now = config.now()
        batch = []
        for item, item_raw in zip(body.feedback, raw["feedback"], strict=True):
            card = cards[item.card]
            reason = item.overrideReason.reason if item.overrideReason is not None else None
            comment = item.overrideReason.userComment if item.overrideReason is not None else None
            said = item.outcome
            if item.outcome == "overridden" and reason is not None:
                said += f": {reason.display or reason.code or 'a reason'}"
            if comment:
                said += f" — {comment}"
            message = f"card {card.uuid} ({card.summary}) {said}"
            finding_json = {"rule": card.rule, "severity": "info", "location": card.location, "message": message}
            result = {
                "control_id": card.hook_instance, "message_type": "CDS feedback", "ack_code": "",
                "patient_id": card.patient_key.split("^", 1)[0] or None, "card": card.uuid, "rule": card.rule,
                "outcome": item.outcome,
                "override_reason": reason.model_dump(exclude_none=True) if reason is not None else None,
                "user_comment": comment, "outcome_timestamp": item.outcomeTimestamp.isoformat(),
                "accepted_suggestions": [s.get("id") for s in item.acceptedSuggestions or []],
                "orders": [], "findings": [finding_json], "response": "",
            }
            batch.append(ProcessedMessage(
                key=None, received_at=now, answered_at=now, sender=caller.issuer, control_id=card.hook_instance,
                patient_key=card.patient_key, raw_message=json.dumps(item_raw, ensure_ascii=False), ack_code="",
                result=result, response="", protocol_id="", protocol_version="",
                computed={"caller": {"issuer": caller.issuer, "subject": caller.subject, "jti": caller.jti}},
            ))
        store.save_all(batch)
        log.info("cds feedback: %d outcome(s) recorded (%s)", len(batch),
                 ",".join(sorted({f"{cards[i.card].rule}:{i.outcome}" for i in body.feedback})))
        return JSONResponse({"recorded": len(batch)})

    return router

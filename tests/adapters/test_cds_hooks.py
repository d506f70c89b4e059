"""CDS Hooks order-sign (workers/http/cds.py, validator/fhir.py): discovery, cards, JWT, 412, feedback, audit.

Keys are made here with `cryptography`; the FHIR comes from tests/fhir_builders.py, built from the
same parameters as the HL7 of tests/builders.py. The service's clock is set to each case's message
time (the examples are dated 2026-12-01), and its fhirServer calls go to an httpx MockTransport.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from fastapi.testclient import TestClient

from tests import fhir_builders as fb
from tests.builders import (
    ACETAMINOPHEN,
    GO_DRUG,
    go_order,
    message,
    msh,
    orc,
    pid,
    premed_order,
    pv1,
    rxe,
    rxr,
    standard_observation_params,
    standard_observations,
    standard_premed_params,
)
from tests.paths import EXAMPLES
from validator import process_text
from validator.er7 import decode
from validator.protocol import load_protocol_set
from workers.http.app import create_app
from workers.http.cds import FEEDBACK_PATH, SERVICE_PATH, CdsConfig, make_card, prefetch_templates, summary_text
from workers.http.cds_auth import parse_issuers
from workers.store import AuditFilter, get_message, open_sql_store, query_messages

EC_ISSUER = "https://ehr.genhosp.example.org"
RSA_ISSUER = "https://rsa-ehr.example.org"
EC_KID = "ehr-2026-1"
SERVICE_URL = f"http://testserver{SERVICE_PATH}"
FEEDBACK_URL = f"http://testserver{FEEDBACK_PATH}"


def parse_hl7_time(value: str) -> datetime:
    return datetime.strptime(value, "%Y%m%d%H%M%S").replace(tzinfo=UTC)


@dataclass
class Clock:
    at: datetime = parse_hl7_time("20261201083000")

    def __call__(self) -> datetime:
        return self.at


@dataclass
class Cds:
    client: TestClient
    store: object
    clock: Clock
    ec_key: ec.EllipticCurvePrivateKey
    rsa_key: rsa.RSAPrivateKey
    fhir_requests: list[httpx.Request] = field(default_factory=list)
    fhir_routes: dict[str, dict] = field(default_factory=dict)  # path+query -> JSON answer
    config: CdsConfig | None = None

    def token(self, *, aud: str = SERVICE_URL, iss: str = EC_ISSUER, alg: str = "ES384", kid: str | None = EC_KID,
              exp: float | None = None, jti: str | None = None, key=None, **claims) -> str:
        now = int(time.time())
        payload = {"iss": iss, "aud": aud, "iat": now, "exp": exp if exp is not None else now + 300,
                   "jti": jti or str(uuid.uuid4()), "sub": "ehr-client", **claims}
        headers = {"kid": kid} if kid is not None else {}
        if key is None:
            key = self.rsa_key if alg == "RS384" else self.ec_key
        return jwt.encode(payload, key, algorithm=alg, headers=headers)

    def call(self, body: dict, token: str | None = None, path: str = SERVICE_PATH):
        aud = FEEDBACK_URL if path == FEEDBACK_PATH else SERVICE_URL
        return self.client.post(path, json=body, headers={"Authorization": f"Bearer {token or self.token(aud=aud)}"})

    def records(self) -> list[dict]:
        return query_messages(self.store, AuditFilter(), UTC)[1]


def _harness(tmp_path, url):
    ec_key = ec.generate_private_key(ec.SECP384R1())
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(ec_key.public_key()))
    (tmp_path / "ehr.jwks").write_text(json.dumps({"keys": [{**jwk, "kid": EC_KID, "alg": "ES384", "use": "sig"}]}))
    (tmp_path / "rsa.pem").write_bytes(rsa_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    issuers = parse_issuers(f"{EC_ISSUER}={tmp_path / 'ehr.jwks'},{RSA_ISSUER}={tmp_path / 'rsa.pem'}")
    clock = Clock()
    store = open_sql_store(url, create=True)  # the service made the log; the API and CDS routes use it
    harness = Cds(client=None, store=store, clock=clock, ec_key=ec_key, rsa_key=rsa_key)  # type: ignore[arg-type]

    def fhir_server(request: httpx.Request) -> httpx.Response:
        harness.fhir_requests.append(request)
        key = request.url.raw_path.decode().removeprefix("/fhir/")
        answer = harness.fhir_routes.get(key)
        return httpx.Response(200, json=answer) if answer is not None else httpx.Response(404, json={})

    config = CdsConfig(protocols=load_protocol_set(), tz=UTC, issuers=issuers, now=clock,
                       http=lambda: httpx.Client(transport=httpx.MockTransport(fhir_server)))
    harness.config = config
    app = create_app(store=store, token_sha256="", tz=UTC, cds=config)
    with TestClient(app) as client:
        harness.client = client
        yield harness
    store.dispose()


@pytest.fixture
def cds(tmp_path, sqlite_url):
    yield from _harness(tmp_path, sqlite_url)


@pytest.fixture
def cds_any_db(tmp_path, db_url):
    yield from _harness(tmp_path, db_url)


def adult_request(**go) -> dict:
    """The shared adult example (tests/builders.py `adult_order_set`) as an order-sign request."""
    return fb.order_sign([fb.go_request(**go), *fb.premed_requests()], patient_resource=fb.patient(),
                         observation_resources=fb.observations())


def critical(cards: list[dict]) -> set[str]:
    return {c["summary"].split(":", 1)[0] for c in cards if c["indicator"] == "critical"}


# --- discovery ----------------------------------------------------------------------------------------


def test_discovery_lists_the_order_sign_service_open(cds):
    r = cds.client.get("/cds-services")  # no token: discovery is open
    assert r.status_code == 200
    (service,) = r.json()["services"]
    assert service["hook"] == "order-sign" and service["id"] == "rxgate-go-order-sign"
    assert service["title"] and service["description"]
    prefetch = service["prefetch"]
    assert prefetch["patient"] == "Patient/{{context.patientId}}"
    assert prefetch["medications"] == "MedicationRequest?patient={{context.patientId}}"
    codes = prefetch["observations"].split("&code=", 1)[1].split(",")
    for loinc in ("8302-2", "29463-7", "8277-6", "6690-2", "1975-2", "1920-8", "1742-6"):  # height…ALT
        assert f"http://loinc.org|{loinc}" in codes
    assert {"CD33BL", "CD33"} <= set(codes)
    tokens = [t for v in prefetch.values() for t in v.split("{{")[1:]]
    assert len(tokens) == 3 and all(t.split("}}")[0] == "context.patientId" for t in tokens)  # context fields only


def test_openapi_lists_the_cds_routes(cds):
    spec = cds.client.app.openapi()
    assert {"/cds-services", SERVICE_PATH, FEEDBACK_PATH} <= set(spec["paths"])
    assert "412" in spec["paths"][SERVICE_PATH]["post"]["responses"]


# --- the bundled examples, HL7 and FHIR through one table ------------------------------------------------

ADULT_OBS = dict(height="170", weight="70", wbc="12", cd33="85")
ADULT_PREMEDS = dict(methylprednisolone="70")
DAY8_OBS = dict(height="170", weight="70", wbc="6.0", cd33="85", body_time="20261207090000", lab_time="20261207060000")
DAY14_OBS = dict(height="170", weight="69", wbc="3.1", cd33="85", body_time="20261213090000",
                 lab_time="20261213060000", cd33_time="20261115120000")


@dataclass(frozen=True)
class Case:
    """One bundled example as parameters: each group is (go_order arguments with `observations` as
    standard_observations arguments, the premed_order arguments of its premedications)."""

    name: str
    control_id: str
    mrn: str
    groups: tuple
    dob: str = "19600315"
    sex: str = "F"
    time: str = "20261201083000"
    pv1: bool = True


def _adult(name, n_or_control, mrn, *, go=None, premeds=None, **kw) -> Case:
    go = {"placer": "ORD1001", "dose": "16.4", "observations": ADULT_OBS, **(go or {})}
    premeds = standard_premed_params(**ADULT_PREMEDS) if premeds is None else premeds
    return Case(name, n_or_control, mrn, ((go, tuple(premeds)),), **kw)


CASES = [
    _adult("adult-day1-accept.hl7", "EX-ADULT-D1", "EXMRN001"),
    Case("adult-day14-accept.hl7", "EX-ADULT-D14", "EXMRN001", (
        ({"placer": "ORD2001", "dose": "16.3", "start": "20261214100000", "end": "20261214140000",
          "observations": DAY14_OBS},
         tuple(standard_premed_params(methylprednisolone="69", first_start="20261214090000",
                                      steroid_start="20261214094000", placers=("ORD2002", "ORD2003", "ORD2004")))),
    ), time="20261214083000"),
    Case("child-day1-accept.hl7", "EX-CHILD-D1", "EXMRN003", (
        ({"placer": "ORD3001", "dose": "10", "observations": dict(height="140", weight="32", wbc="5.2", cd33="64")},
         tuple(standard_premed_params(acetaminophen="480", diphenhydramine="32", methylprednisolone="32",
                                      placers=("ORD3002", "ORD3003", "ORD3004")))),
    ), dob="20160520", sex="M"),
    _adult("refused-dose.hl7", "EX-REFUSED-01", "EXMRN101", go={"dose": "18.5"}),
    _adult("refused-route.hl7", "EX-REFUSED-02", "EXMRN102", go={"route": "SC^Subcutaneous^HL70162"}),
    _adult("refused-infusion.hl7", "EX-REFUSED-03", "EXMRN103", go={"duration": "120^min", "end": "20261201120000"}),
    Case("refused-schedule.hl7", "EX-REFUSED-04", "EXMRN104", (
        ({"placer": "ORD1001", "dose": "16.4", "observations": ADULT_OBS}, tuple(standard_premed_params(**ADULT_PREMEDS))),
        ({"placer": "ORD1901", "dose": "16.4", "start": "20261208100000", "end": "20261208140000",
          "observations": DAY8_OBS},
         tuple(standard_premed_params(methylprednisolone="70", first_start="20261208090000",
                                      steroid_start="20261208094000", placers=("ORD1902", "ORD1903", "ORD1904")))),
    ), time="20261208083000"),
    _adult("refused-premedication.hl7", "EX-REFUSED-05", "EXMRN105",
           premeds=standard_premed_params(**ADULT_PREMEDS)[:2]),
    _adult("refused-cd33.hl7", "EX-REFUSED-06", "EXMRN106", go={"observations": {**ADULT_OBS, "cd33": "22"}}),
    _adult("refused-wbc.hl7", "EX-REFUSED-07", "EXMRN107", go={"observations": {**ADULT_OBS, "wbc": "45"}}),
    _adult("refused-eligibility.hl7", "EX-REFUSED-08", "EXMRN108", dob="20250101"),
    Case("refused-cancel-unknown.hl7", "EX-REFUSED-CANCEL", "EXMRN199", (
        ({"placer": "NOSUCH1", "control": "CA", "dose": "16.4", "units": "mg", "route": "IV", "start": None}, ()),
    ), dob="19660412", pv1=False),
]
# rejected-version-2.2.hl7 is refused for its HL7 envelope (MSH-12): there is no FHIR form of it.
NOT_ORDER_SETS = {"rejected-version-2.2.hl7"}


def hl7_of(case: Case) -> str:
    segments: list = [msh(case.control_id, time=case.time), pid(case.mrn, case.dob, case.sex)]
    if case.pv1:
        segments.append(pv1())
    for go, premeds in case.groups:
        kw = {k: v for k, v in go.items() if k != "observations"}
        if kw.get("start", "") is None:  # an order without timing (the cancel example)
            segments.append([orc(kw["placer"], control=kw["control"]), rxe(GO_DRUG, kw["dose"], kw["units"]),
                             rxr(kw["route"])])
        else:
            segments.append(go_order(**kw, observations=standard_observations(**go["observations"])))
        segments += [premed_order(**p) for p in premeds]
    return message(*segments)


def fhir_of(case: Case) -> dict:
    drafts, observations = [], []
    for go, premeds in case.groups:
        drafts.append(fb.go_request(**go))
        drafts += [fb.premed_request(**p) for p in premeds]
        if "observations" in go:
            observations += fb.observations(**go["observations"])
    return fb.order_sign(drafts, patient_resource=fb.patient(case.mrn, case.dob, case.sex),
                         observation_resources=observations, hook_instance=f"hook-{case.control_id}")


def rules_by_order(orders: list[dict]) -> dict[str, set[tuple[str, str]]]:
    return {o["placer_order_number"]: {(f["rule"], f["severity"]) for f in o["findings"]
                                       if f["severity"] in ("error", "warning")} for o in orders}


def test_examples_give_the_same_rules_as_hl7_and_as_fhir(cds):
    """Each bundled example order set, built once as HL7 and once as FHIR from the same parameters,
    judged against the same course history: the same rules on the same orders, the same outcome."""
    expected = json.loads((EXAMPLES / "expected.json").read_text())
    assert {c.name for c in CASES} == set(expected) - NOT_ORDER_SETS
    protocols = load_protocol_set()
    for case in CASES:  # in file-name order, as `rxgate check examples/*.hl7` (day 1 before day 14)
        hl7 = hl7_of(case)
        assert hl7 == decode((EXAMPLES / case.name).read_bytes()), f"{case.name}: the table is not the example"
        cds.clock.at = parse_hl7_time(case.time)

        r = cds.call(fhir_of(case))  # judged on the history the earlier examples' HL7 left in the store
        assert r.status_code == 200, (case.name, r.text)
        cards = r.json()["cards"]
        record = get_message(cds.store, cds.records()[-1]["id"], UTC)
        assert record["control_id"] == f"hook-{case.control_id}"

        outcome = process_text(hl7, cds.store, protocols, tz=UTC)[0]  # the HL7 form, into the same store
        want = expected[case.name]
        assert outcome.ack_code == want["ack_code"] == record["outcome"], case.name
        assert rules_by_order(record["orders"]) == rules_by_order(outcome.result["orders"]), case.name
        errors = {f["rule"] for f in outcome.result["findings"] if f["severity"] == "error"}
        assert critical(cards) == errors, case.name
        if want["rule"]:
            assert want["rule"] in critical(cards), case.name
        else:
            assert cards == [], case.name


# --- cards -------------------------------------------------------------------------------------------------


def test_a_wrong_dose_gives_a_critical_card_naming_go_dose(cds):
    r = cds.call(adult_request(dose="18.5"))
    assert r.status_code == 200, r.text
    cards = r.json()["cards"]
    (card,) = [c for c in cards if c["summary"].startswith("go.dose")]
    # the premedications of the refused dose are refused with it, as in the HL7 answer
    assert sorted(c["summary"].split(":")[0] for c in cards if c is not card) == ["go.orderset"] * 3
    assert card["indicator"] == "critical"
    assert card["summary"].startswith("go.dose: dose 18.5 mg exceeds 9 mg/m²") and len(card["summary"]) < 140
    assert "18.5 mg" in card["detail"] and "15.2 mg" in card["detail"]  # seen and expected (165 cm, 62 kg)
    assert "MedicationRequest/ORD1001.dosageInstruction[0].doseAndRate[0].doseQuantity" in card["detail"]
    protocols = load_protocol_set()
    assert card["source"]["label"] == "rxgate"
    assert card["source"]["topic"]["code"] == protocols.default.id
    assert protocols.default.version in card["source"]["topic"]["display"]
    assert uuid.UUID(card["uuid"]) and "overrideReasons" not in card  # no bundled rule is overridable
    # the same finding message as the HL7 answer of the same order set
    hl7 = process_text(message(msh("T1"), pid(), pv1(), go_order(dose="18.5"),
                               [s for p in standard_premed_params() for s in premed_order(**p)]),
                       cds.store, load_protocol_set(), tz=UTC)[0]
    (hl7_finding,) = [f for f in hl7.result["findings"] if f["rule"] == "go.dose"]
    assert hl7_finding["message"] in card["detail"].replace("\\", "")


def test_an_accepted_order_set_gives_no_cards(cds):
    r = cds.call(adult_request())
    assert r.status_code == 200 and r.json() == {"cards": []}


def test_overridable_rules_offer_override_reasons():
    protocol = load_protocol_set().default
    overridable = protocol.model_copy(update={"overridable": ["go.dose"]})  # issue 14's schema field
    from validator.findings import error

    card = make_card(error("go.dose", "dose too high"), None, overridable)
    assert card["overrideReasons"] and all(r["display"] for r in card["overrideReasons"])
    assert "overrideReasons" not in make_card(error("go.cd33", "too low"), None, overridable)


def test_summary_stays_under_140_characters():
    text = summary_text("go.premedication", "acetaminophen ORD1002: dose 900 mg is outside the allowed 585–715 mg: "
                        "expected 650 mg (+38.5%, tolerance 10%) and more words to make it long enough")
    assert len(text) < 140 and text.startswith("go.premedication: ") and text.endswith("...")


def test_more_than_one_start_is_refused(cds):
    body = adult_request()
    repeat = body["context"]["draftOrders"]["entry"][0]["resource"]["dosageInstruction"][0]["timing"]["repeat"]
    repeat.update(count=2, period=14, periodUnit="d")
    cards = cds.call(body).json()["cards"]
    assert any(c["indicator"] == "critical" and c["summary"].startswith(
        "go.schedule: one order per dose: this order plans more than one start") for c in cards)


def test_an_unreadable_draft_order_gets_a_critical_card_not_silence(cds):
    body = adult_request()
    body["context"]["draftOrders"]["entry"][0]["resource"]["dosageInstruction"][0]["doseAndRate"][0][
        "doseQuantity"]["value"] = "lots"
    r = cds.call(body)
    assert r.status_code == 200
    cards = r.json()["cards"]
    assert any(c["summary"].startswith("rxgate.fhir: context.draftOrders.entry[0] is not valid FHIR") for c in cards)


# --- authentication --------------------------------------------------------------------------------------


def _hs256(cds):
    return jwt.encode({"iss": EC_ISSUER, "aud": SERVICE_URL, "exp": int(time.time()) + 300, "iat": int(time.time()),
                       "jti": "x"}, "shared-secret-shared-secret-shared!", algorithm="HS256", headers={"kid": EC_KID})


BAD_TOKENS = {
    "HS256": (_hs256, "alg 'HS256' is not accepted"),
    "wrong aud": (lambda c: c.token(aud="https://elsewhere.example.org/cds-services/rxgate-go-order-sign"), "aud"),
    "expired": (lambda c: c.token(exp=time.time() - 120), "expired"),
    "unknown iss": (lambda c: c.token(iss="https://stranger.example.org"), "not trusted"),
    "missing kid": (lambda c: c.token(kid=None), "no kid"),
    "unknown kid": (lambda c: c.token(kid="other"), "no key with kid"),
    "foreign key": (lambda c: c.token(key=ec.generate_private_key(ec.SECP384R1())), "not valid"),
    "RS384 token for an ES384 key": (lambda c: c.token(alg="RS384"), "is for ES384"),
    "not a JWT": (lambda c: "not-a-jwt", "not a JWT"),
}


@pytest.mark.parametrize("case", sorted(BAD_TOKENS))
def test_a_bad_jwt_is_401_and_the_body_is_not_read(cds, case):
    make, reason = BAD_TOKENS[case]
    before = len(cds.records())
    r = cds.client.post(SERVICE_PATH, content=b"{not json at all", headers={"Authorization": f"Bearer {make(cds)}"})
    assert r.status_code == 401, r.text  # not 400: the body is never parsed
    assert reason in r.json()["message"] and r.headers["www-authenticate"].startswith("Bearer")
    assert len(cds.records()) == before


def test_no_token_is_401(cds):
    r = cds.client.post(SERVICE_PATH, json=adult_request())
    assert r.status_code == 401 and "Bearer" in r.json()["message"]


def test_a_replayed_jti_is_401(cds):
    token = cds.token()
    assert cds.call(adult_request(), token).status_code == 200
    r = cds.call(adult_request(), token)
    assert r.status_code == 401 and "already used" in r.json()["message"]


def test_rs384_from_a_pem_key_is_accepted(cds):
    assert cds.call(adult_request(), cds.token(iss=RSA_ISSUER, alg="RS384", kid="any")).status_code == 200


def test_an_unreadable_key_file_is_a_start_up_error(tmp_path):
    from workers.http.cds_auth import IssuerConfigError

    with pytest.raises(IssuerConfigError, match="cannot be read"):
        parse_issuers(f"{EC_ISSUER}={tmp_path / 'missing.jwks'}")
    with pytest.raises(IssuerConfigError, match="issuer=jwks_url_or_key_file"):
        parse_issuers("just-a-name")


# --- prefetch and the fhirServer ---------------------------------------------------------------------------


def test_missing_prefetch_without_fhir_server_is_412(cds):
    body = fb.order_sign([fb.go_request(), *fb.premed_requests()], patient_resource=fb.patient(),
                         observation_resources=fb.observations(), omit=("observations",))
    before = len(cds.records())
    r = cds.call(body)
    assert r.status_code == 412, r.text
    assert r.json()["prefetch"] == "observations" and "no fhirServer" in r.json()["message"]
    assert len(cds.records()) == before


def test_missing_prefetch_is_read_from_the_fhir_server_with_its_token(cds):
    observations = fb.observations()
    codes = "&code=" + prefetch_templates(load_protocol_set())["observations"].split("&code=", 1)[1]
    cds.fhir_routes[f"Observation?patient={fb.PATIENT_ID}{codes}"] = fb.bundle(observations)
    body = fb.order_sign([fb.go_request(dose="18.5"), *fb.premed_requests()], patient_resource=fb.patient(),
                         observation_resources=None, omit=("observations",),
                         fhirServer="https://ehr.genhosp.example.org/fhir",
                         fhirAuthorization={"access_token": "fhir-token-1", "token_type": "Bearer", "expires_in": 300,
                                            "scope": "user/Observation.read", "subject": "rxgate"})
    r = cds.call(body)
    assert r.status_code == 200, r.text
    assert critical(r.json()["cards"]) == {"go.dose", "go.orderset"}
    (request,) = cds.fhir_requests
    assert request.headers["authorization"] == "Bearer fhir-token-1"
    record = get_message(cds.store, cds.records()[-1]["id"], UTC)
    assert "fhir-token-1" not in record["raw_message"] and "[redacted]" in record["raw_message"]
    assert record["computed"]["fetched"] and record["computed"]["fetched"][0].startswith("/Observation?")


def test_a_paged_prefetch_without_fhir_server_is_412(cds):
    body = adult_request()
    body["prefetch"]["observations"]["link"] = [{"relation": "next", "url": "https://ehr.example.org/fhir/page2"}]
    r = cds.call(body)
    assert r.status_code == 412 and "paged" in r.json()["message"]


def test_a_client_error_in_prefetch_counts_as_missing(cds):
    body = adult_request()
    body["prefetch"]["observations"] = {"resourceType": "OperationOutcome",
                                        "issue": [{"severity": "error", "code": "timeout", "diagnostics": "lab down"}]}
    r = cds.call(body)
    assert r.status_code == 412 and "lab down" in r.json()["message"]


def test_null_prefetch_means_no_data_the_rules_report(cds):
    body = fb.order_sign([fb.go_request(), *fb.premed_requests()], patient_resource=fb.patient(),
                         observation_resources=None)  # the client has no observations
    cards = cds.call(body).json()["cards"]
    assert {"go.dose", "go.wbc", "go.cd33"} <= critical(cards)


# --- feedback -------------------------------------------------------------------------------------------------


def test_feedback_is_recorded_in_the_audit_log(cds):
    call = adult_request(dose="18.5")
    (card,) = [c for c in cds.call(call).json()["cards"] if c["summary"].startswith("go.dose")]
    feedback = {"feedback": [{"card": card["uuid"], "outcome": "overridden",
                              "overrideReason": {"reason": {"system": "urn:rxgate:override-reason",
                                                            "code": "approved-deviation",
                                                            "display": "Deviation approved"},
                                                 "userComment": "renal dosing discussed with attending"},
                              "outcomeTimestamp": "2026-12-01T08:35:00Z"}]}
    r = cds.call(feedback, cds.token(aud=FEEDBACK_URL), path=FEEDBACK_PATH)
    assert r.status_code == 200 and r.json() == {"recorded": 1}
    record = get_message(cds.store, cds.records()[-1]["id"], UTC)
    assert record["message_type"] == "CDS feedback" and record["control_id"] == call["hookInstance"]
    assert record["sender"] == EC_ISSUER and record["patient_id"] == "MRN55501"
    (found,) = record["findings"]
    assert found["rule"] == "go.dose" and found["severity"] == "info"
    assert card["uuid"] in found["message"] and "overridden: Deviation approved" in found["message"]
    assert "renal dosing discussed with attending" in found["message"]
    accepted = {"feedback": [{"card": card["uuid"], "outcome": "accepted", "acceptedSuggestions": [],
                              "outcomeTimestamp": "2026-12-01T08:36:00Z"}]}
    assert cds.call(accepted, cds.token(aud=FEEDBACK_URL), path=FEEDBACK_PATH).status_code == 200
    assert "accepted" in get_message(cds.store, cds.records()[-1]["id"], UTC)["findings"][0]["message"]


def test_feedback_for_an_unknown_card_records_nothing(cds):
    before = len(cds.records())
    unknown = {"feedback": [{"card": str(uuid.uuid4()), "outcome": "accepted", "outcomeTimestamp": "2026-12-01T08:35:00Z"}]}
    r = cds.call(unknown, cds.token(aud=FEEDBACK_URL), path=FEEDBACK_PATH)
    assert r.status_code == 404 and len(cds.records()) == before
    # the service URL's token is not valid for the feedback URL (aud is the exact URL invoked)
    assert cds.call(unknown, cds.token(aud=SERVICE_URL), path=FEEDBACK_PATH).status_code == 401


# --- the course history and the audit log ---------------------------------------------------------------------


def test_a_call_adds_no_course_history_but_one_audit_record(cds):
    before = len(cds.records())
    body = adult_request()
    assert cds.call(body).json() == {"cards": []}
    assert cds.store.orders_for("MRN55501^GENHOSP") == []  # a draft order is not an order
    records = cds.records()
    assert len(records) == before + 1
    record = get_message(cds.store, records[-1]["id"], UTC)
    assert record["sender"] == EC_ISSUER and record["control_id"] == body["hookInstance"]
    assert record["message_type"] == "CDS order-sign" and record["outcome"] == "AA"
    assert json.loads(record["raw_message"]) == body
    assert json.loads(record["response"]) == {"cards": []}
    # a second call for the same day-1 dose is judged as day 1 again: nothing was counted
    assert cds.call(adult_request()).json() == {"cards": []}


def _record_request(placer: str, start: str, end: str, status: str = "completed") -> dict:
    resource = fb.go_request(placer, start=start, end=end)
    resource["status"] = status
    return resource


def test_the_patient_record_counts_in_the_course_and_an_accepted_order_counts_once(cds):
    # day 1 accepted through HL7, and the same order in the EHR's MedicationRequests: one dose, not two
    day1 = message(msh("H1", time="20261201083000"), pid(), pv1(), go_order("ORD1001"),
                   [s for p in standard_premed_params() for s in premed_order(**p)])
    assert process_text(day1, cds.store, load_protocol_set(), tz=UTC)[0].ack_code == "AA"
    cds.clock.at = parse_hl7_time("20261214083000")
    obs = dict(body_time="20261213090000", lab_time="20261213060000")
    day14_premeds = [fb.premed_request(**p) for p in standard_premed_params(
        first_start="20261214090000", steroid_start="20261214094000", placers=("ORD2002", "ORD2003", "ORD2004"))]
    day14 = fb.go_request("ORD2001", start="20261214100000", end="20261214140000")
    record = [_record_request("ORD1001", "20261201100000", "20261201140000")]
    body = fb.order_sign([day14, *day14_premeds], patient_resource=fb.patient(),
                         observation_resources=fb.observations(**obs), medication_resources=record)
    assert cds.call(body).json() == {"cards": []}  # dose 2 on day 14

    # the EHR also holds a day-14 order that rxgate never saw: the draft is then the third dose
    other = _record_request("EHR-777", "20261214100000", "20261214140000", status="active")
    body = fb.order_sign([day14, *day14_premeds], patient_resource=fb.patient(),
                         observation_resources=fb.observations(**obs), medication_resources=record + [other])
    assert "go.schedule" in critical(cds.call(body).json()["cards"])

    # the draft re-signs the day-14 order the record holds (same placer number): counted once
    resigned = _record_request("ORD2001", "20261214100000", "20261214140000", status="active")
    body = fb.order_sign([day14, *day14_premeds], patient_resource=fb.patient(),
                         observation_resources=fb.observations(**obs), medication_resources=record + [resigned])
    assert cds.call(body).json() == {"cards": []}


def test_a_dose_only_the_patient_record_knows_still_counts(cds):
    cds.clock.at = parse_hl7_time("20261208083000")
    record = [_record_request("EHR-1", "20261201100000", "20261201140000")]
    draft = fb.go_request("ORD8", start="20261208100000", end="20261208140000")
    premeds = [fb.premed_request(**p) for p in standard_premed_params(
        first_start="20261208090000", steroid_start="20261208094000", placers=("P1", "P2", "P3"))]
    body = fb.order_sign([draft, *premeds], patient_resource=fb.patient(),
                         observation_resources=fb.observations(body_time="20261207090000", lab_time="20261207060000"),
                         medication_resources=record)
    cards = cds.call(body).json()["cards"]
    assert critical(cards) == {"go.schedule", "go.orderset"}  # day 8 of the course the record's day-1 dose started
    assert any("course day 8" in c["detail"] for c in cards)


def test_an_observation_of_another_patient_is_not_used(cds):
    observations = fb.observations()
    for o in observations:
        o["subject"]["reference"] = "Patient/someone-else"
    body = fb.order_sign([fb.go_request(), *fb.premed_requests()], patient_resource=fb.patient(),
                         observation_resources=observations)
    found = critical(cds.call(body).json()["cards"])
    assert {"rxgate.fhir", "go.dose", "go.wbc"} <= found


def test_a_hl7_premedication_is_an_acetaminophen_order(cds):
    """The FHIR builders keep the HL7 builders' drug codes (a guard for the table above)."""
    assert fb.premed_request("P", ACETAMINOPHEN, "650")["medicationCodeableConcept"]["coding"][0] == {
        "code": "161", "system": "http://www.nlm.nih.gov/research/umls/rxnorm", "display": "acetaminophen"}
    assert len(standard_observation_params()) == len(fb.observations()) == 7


def test_a_call_and_its_feedback_are_audited_on_sqlite_and_postgresql(cds_any_db):
    """FHIR paths are longer than HL7 locations: the 0007 migration makes room for them on PostgreSQL."""
    cds = cds_any_db
    (card,) = [c for c in cds.call(adult_request(dose="18.5")).json()["cards"] if c["summary"].startswith("go.dose")]
    feedback = {"feedback": [{"card": card["uuid"], "outcome": "overridden", "outcomeTimestamp": "2026-12-01T08:35:00Z"}]}
    assert cds.call(feedback, cds.token(aud=FEEDBACK_URL), path=FEEDBACK_PATH).status_code == 200
    call, answer = cds.records()[-2:]
    assert call["message_type"] == "CDS order-sign" and answer["message_type"] == "CDS feedback"
    assert any(f["location"] == "MedicationRequest/ORD1001.dosageInstruction[0].doseAndRate[0].doseQuantity"
               for f in call["findings"])
    from workers.store import verify_chain

    assert verify_chain(cds.store).intact


def test_the_bundled_cds_example_gives_the_readme_card(cds):
    """examples/cds/order-sign-refused-dose.json (README "Connecting") is refused-dose.hl7 as FHIR."""
    body = json.loads((EXAMPLES / "cds" / "order-sign-refused-dose.json").read_text())
    cards = cds.call(body).json()["cards"]
    assert [c["summary"] for c in cards][0] == (
        "go.dose: dose 18.5 mg exceeds 9 mg/m² × 1.82 m² = 16.4 mg (+13%, tolerance 5%)")
    assert critical(cards) == {"go.dose", "go.orderset"}


def test_a_bad_issuer_setting_stops_the_service_with_one_line(tmp_path, monkeypatch):
    from workers.cli import main

    monkeypatch.setenv("RXGATE_CDS_ISSUERS", f"{EC_ISSUER}={tmp_path / 'gone.pem'}")
    with pytest.raises(ValueError, match="gone.pem of issuer https://ehr.genhosp.example.org cannot be read"):
        from workers.settings import Settings

        Settings()
    assert main(["health"]) == 2  # `bad setting: …`, no traceback


def test_keys_from_a_jwks_url_and_503_when_it_cannot_be_fetched(cds, tmp_path):
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    jwks = (tmp_path / "ehr.jwks").read_bytes()

    class Jwks(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's name
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(jwks)

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Jwks)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    issuers = cds.config.issuers
    try:
        url = f"http://127.0.0.1:{server.server_port}/jwks.json"
        issuers.update(parse_issuers(f"https://jwks-ehr.example.org={url}"))
        token = cds.token(iss="https://jwks-ehr.example.org")
        assert cds.call(adult_request(), token).status_code == 200
    finally:
        server.shutdown()
        server.server_close()
    issuers.update(parse_issuers(f"https://down-ehr.example.org=http://127.0.0.1:{server.server_port}/jwks.json",
                                 timeout=2))
    r = cds.call(adult_request(), cds.token(iss="https://down-ehr.example.org"))
    assert r.status_code == 503 and "cannot be fetched" in r.json()["message"]

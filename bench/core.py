"""Part 1 — the core, per message: python-hl7 parse, hl7apy parse, str.split, rxgate's full validation.

rxgate's "full validation without storage" is `validate_text` below: the service's path minus the
store — `validator.er7.split_messages` → `validator.reader.read_order_set` → `validator.verdict.judge`
with an EMPTY course history → `validator.response.build_response` (a message the reader rejects
gets `build_rejection`, as in the service). It is timed on the text as received (its own separator
normalisation included); the parsers get the text already normalised to `\\r` and split per message.
As a second, informational figure, `validator.process_text` with a fresh `InMemoryStore` per call
(dedupe key hashing, JSON result, in-memory save) is timed too.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from datetime import datetime
from typing import Any

import hl7
from hl7apy.parser import parse_message

from validator import InMemoryStore, Protocol, load_protocol, process_text
from validator.er7 import split_messages
from validator.errors import MessageRejected
from validator.reader import read_header, read_order_set
from validator.response import build_rejection, build_response
from validator.verdict import judge

from . import corpus
from .timing import calibrate, interleaved, summary_ms

UTC = corpus.b.UTC


def validate_text(text: str, protocol: Protocol, received_at: datetime = corpus.RECEIVED_AT) -> list[tuple[str, str]]:
    """read → rules → response text, no storage: [(ack code, response)] per message of the text."""
    out: list[tuple[str, str]] = []
    for raw in split_messages(text).messages:
        try:
            order_set = read_order_set(raw, UTC)
        except MessageRejected as exc:
            try:
                header = read_header(raw, UTC)
            except MessageRejected:
                header = None
            out.append(("AR", build_rejection(header, exc.rule, exc.code, exc.message, None, received_at)))
            continue
        judgement = judge(order_set, [], protocol, tz=UTC, received_at=received_at)
        out.append((judgement.ack_code, build_response(judgement, received_at)))
    return out


def contenders_for(s: corpus.Sample, protocol: Protocol) -> dict[str, Callable[[], Any]]:
    messages = s.messages
    text = s.text

    def python_hl7() -> Any:
        return [hl7.parse(m) for m in messages]

    def hl7apy_parse() -> Any:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return [parse_message(m, find_groups=False) for m in messages]

    def plain_split() -> Any:
        return [[seg.split("|") for seg in m.split("\r")] for m in messages]

    def rxgate_validate() -> Any:
        return validate_text(text, protocol)

    def rxgate_service_inmemory() -> Any:
        return process_text(text, InMemoryStore(), protocol, tz=UTC, received_at=corpus.RECEIVED_AT)

    return {
        "python-hl7 parse": python_hl7,
        "hl7apy parse_message(find_groups=False)": hl7apy_parse,
        "str.split segments/fields": plain_split,
        "rxgate validate (read+rules+response, no storage)": rxgate_validate,
        "rxgate process_text (InMemoryStore per call)": rxgate_service_inmemory,
    }


PY_HL7 = "python-hl7 parse"
HL7APY = "hl7apy parse_message(find_groups=False)"
SPLIT = "str.split segments/fields"
RXGATE = "rxgate validate (read+rules+response, no storage)"
SERVICE = "rxgate process_text (InMemoryStore per call)"
SLOW = {HL7APY}


def _working(fns: dict[str, Callable[[], Any]]) -> tuple[dict[str, Callable[[], Any]], dict[str, str]]:
    ok: dict[str, Callable[[], Any]] = {}
    failed: dict[str, str] = {}
    for name, fn in fns.items():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                fn()
        except Exception as exc:  # a library that cannot parse a sample is reported, not timed
            failed[name] = f"{type(exc).__name__}: {str(exc)[:120]}"
        else:
            ok[name] = fn
    return ok, failed


def measure_one(s: corpus.Sample, protocol: Protocol, cfg: dict[str, Any]) -> dict[str, Any]:
    """Time every contender on one sample; iteration counts from a per-contender time budget."""
    fns, failed = _working(contenders_for(s, protocol))
    plan = {}
    for name, fn in fns.items():
        if name in SLOW:
            n = calibrate(fn, cfg["slow_budget_s"], cfg["slow_min"], cfg["slow_max"])
        else:
            n = calibrate(fn, cfg["budget_s"], cfg["min_n"], cfg["max_n"])
        plan[name] = (fn, n)
    samples = interleaved(plan, rounds=cfg["rounds"], warmup=cfg["warmup"])
    acks = [ack for ack, _ in validate_text(s.text, protocol)]
    return {
        "name": s.name,
        "segments": s.segments,
        "messages": len(s.messages),
        "rxgate_ack_codes": acks,
        "failed": failed,
        "timings": {name: summary_ms(v) for name, v in samples.items()},
        "_raw": samples,
    }


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return round(a / b, 3)


def run_core(cfg: dict[str, Any], protocol: Protocol | None = None, log=print) -> dict[str, Any]:
    protocol = protocol or load_protocol()
    out: dict[str, Any] = {"method": __doc__.strip(), "fixed": {}, "public": {}}
    fixed = [corpus.adult_sample(), corpus.sample("order set, ~100 segments (built)", corpus.large_order_set())]
    for s in fixed:
        log(f"  core: {s.name}")
        r = measure_one(s, protocol, cfg)
        r.pop("_raw")
        t = r["timings"]
        r["ratio_rxgate_to_python_hl7_median"] = ratio(t.get(RXGATE, {}).get("median_ms"), t.get(PY_HL7, {}).get("median_ms"))
        r["ratio_rxgate_to_python_hl7_p99"] = ratio(t.get(RXGATE, {}).get("p99_ms"), t.get(PY_HL7, {}).get("p99_ms"))
        r["ratio_hl7apy_to_python_hl7_median"] = ratio(t.get(HL7APY, {}).get("median_ms"), t.get(PY_HL7, {}).get("median_ms"))
        out["fixed"][s.name] = r
    public, source = corpus.public_samples()
    if cfg.get("public_limit"):
        public = public[: cfg["public_limit"]]
    log(f"  core: {len(public)} samples from {source}")
    pub_cfg = dict(cfg, budget_s=cfg["public_budget_s"], slow_budget_s=cfg["public_slow_budget_s"])
    per_sample = []
    pooled: dict[str, list[float]] = {}
    sum_median: dict[str, float] = {}
    both_ok = {PY_HL7: 0.0, RXGATE: 0.0}
    judged = {PY_HL7: 0.0, RXGATE: 0.0}  # the samples rxgate reads and judges (AA/AE), not rejects
    for s in public:
        r = measure_one(s, protocol, pub_cfg)
        raw = r.pop("_raw")
        for name, v in raw.items():
            pooled.setdefault(name, []).extend(v)
            sum_median[name] = sum_median.get(name, 0.0) + r["timings"][name]["median_ms"]
        if PY_HL7 in raw and RXGATE in raw:
            both_ok[PY_HL7] += r["timings"][PY_HL7]["median_ms"]
            both_ok[RXGATE] += r["timings"][RXGATE]["median_ms"]
            if r["rxgate_ack_codes"] and "AR" not in r["rxgate_ack_codes"]:
                judged[PY_HL7] += r["timings"][PY_HL7]["median_ms"]
                judged[RXGATE] += r["timings"][RXGATE]["median_ms"]
        per_sample.append(r)
    out["public"] = {
        "samples": len(public),
        "source": source,
        "pooled_per_message_file": {name: summary_ms(v) for name, v in pooled.items()},
        "sum_of_medians_ms": {k: round(v, 4) for k, v in sum_median.items()},
        "failures": {name: sum(1 for r in per_sample if name in r["failed"]) for name in contenders_for(public[0], protocol)}
        if public else {},
        "ratio_rxgate_to_python_hl7_sum_of_medians_where_both_parse": ratio(both_ok[RXGATE], both_ok[PY_HL7]),
        "judged_samples": sum(1 for r in per_sample if r["rxgate_ack_codes"] and "AR" not in r["rxgate_ack_codes"]),
        "ratio_rxgate_to_python_hl7_sum_of_medians_judged_samples": ratio(judged[RXGATE], judged[PY_HL7]),
        "per_sample": per_sample,
    }
    return out

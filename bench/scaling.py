"""Part 3 — scaling: cost per message as the course history grows and as the message grows.

History: a store holding 1, 10^3, 10^5 patients' course history (each: the accepted day-1 GO dose and
its three premeds, 4 entries), then `process_message` of day-14 GO order sets for patients that are
in the store (each message a new key, so nothing is answered from the dedupe table). Stores: the
in-memory store (core only) and, when `workers.store` is importable, SQLite and PostgreSQL via
`workers.store.open_sql_store`. The SQL history is bulk-inserted into `course_history` (one real
audit record first, whose id the bulk rows reference); the measured messages go through `save`,
the audit chain included.

Message size: `validate_text` (no storage) of order sets of 1 to 50 orders, two shapes: one GO dose
plus supportive orders, and N GO doses (every dose runs every rule against the doses accepted
before it).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from validator import InMemoryStore, Protocol, process_text
from validator.history import HistoryEntry

from . import corpus
from .core import UTC, validate_text
from .timing import calibrate, interleaved, summary_ms

b = corpus.b


def patient_mrn(i: int) -> str:
    return f"H{i:08d}"


def patient_key(i: int) -> str:
    return f"{patient_mrn(i)}^GENHOSP"


def template_history(protocol: Protocol) -> list[HistoryEntry]:
    """The entries an accepted day-1 order set leaves (GO dose + premeds), for patient 0."""
    from validator.er7 import split_messages
    from validator.reader import read_order_set
    from validator.verdict import judge

    text = b.go_dose_message("TPL0001", "20261201", mrn=patient_mrn(0))
    order_set = read_order_set(split_messages(text).messages[0], UTC)
    j = judge(order_set, [], protocol, tz=UTC, received_at=corpus.RECEIVED_AT)
    return list(j.new_orders)


def day14_messages(targets: list[int], tag: str) -> list[str]:
    """One day-14 GO order set per target patient (a target listed twice gets two, with distinct keys)."""
    return [b.go_dose_message(f"{tag}{k:06d}", "20261214", placer="ORD1401", mrn=patient_mrn(i),
                              premed_placers=("ORD1402", "ORD1403", "ORD1404")) for k, i in enumerate(targets)]


def fill_memory(store: InMemoryStore, template: list[HistoryEntry], patients: int, targets: set[int]) -> None:
    shared = list(template)  # filler patients share one list: the dict still has `patients` keys
    for i in range(patients):
        key = patient_key(i)
        if i in targets:
            store.orders[key] = [e.model_copy(update={"patient_key": key}) for e in template]
        else:
            store.orders[key] = shared


def fill_sql(store: Any, template: list[HistoryEntry], patients: int, protocol: Protocol, chunk: int = 5000) -> None:
    """Bulk insert `patients` x 4 course_history rows (the first patient's via a real `save`)."""
    from workers.store.schema import HistoryRow

    # one real record: patient 0's accepted day-1 message
    process_text(b.go_dose_message("FILL0000", "20261201", mrn=patient_mrn(0)), store, protocol, tz=UTC,
                 received_at=corpus.RECEIVED_AT)
    with store.engine.begin() as conn:
        message_id = conn.exec_driver_sql("SELECT max(id) FROM messages").scalar_one()
        key0 = patient_key(0)
        jsons = [e.model_dump_json() for e in template]
        rows: list[dict[str, Any]] = []
        for i in range(1, patients):
            key = patient_key(i)
            for e, js in zip(template, jsons, strict=True):
                rows.append({
                    "patient_key": key, "sender": e.sender, "placer_number": e.placer_number,
                    "placer_namespace": e.placer_namespace, "control_id": e.control_id, "drug_code": e.drug.code,
                    "drug_text": e.drug.text, "protocol_order": e.protocol_order, "start": e.start,
                    "entry": js.replace(key0, key), "message_id": message_id,
                })
            if len(rows) >= chunk:
                conn.execute(HistoryRow.__table__.insert(), rows)
                rows = []
        if rows:
            conn.execute(HistoryRow.__table__.insert(), rows)
        if conn.dialect.name == "postgresql":
            conn.exec_driver_sql("ANALYZE course_history")


def history_scaling(protocol: Protocol, sizes: list[int], per_size: int, stores: dict[str, Callable[[], Any]],
                    log=print) -> dict[str, Any]:
    """Per store kind: fill one store per size, then time the sizes' messages in turn (size A's k-th
    message, size B's k-th, ...) so that a busy phase of a shared machine hits every size alike."""
    template = template_history(protocol)
    out: dict[str, Any] = {}
    for store_name, open_store in stores.items():
        opened: dict[int, Any] = {}
        batches: dict[int, list[str]] = {}
        fill_s: dict[int, float] = {}
        try:
            for size in sizes:
                t0 = time.perf_counter()
                store = opened[size] = open_store()
                targets = list(range(0, size, max(1, size // per_size)))[:per_size] if size > 1 else [0]
                if isinstance(store, InMemoryStore):
                    fill_memory(store, template, size, set(targets))
                else:
                    fill_sql(store, template, size, protocol)
                fill_s[size] = time.perf_counter() - t0
                # with 1 patient every message is that patient's: a second day-14 order is refused by the
                # schedule rule but still judged in full (its own new key)
                batches[size] = day14_messages((targets * (per_size // len(targets) + 1))[:per_size], f"S{size}")
            times: dict[int, list[float]] = {size: [] for size in sizes}
            acks: dict[int, dict[str, int]] = {size: {} for size in sizes}
            for k in range(per_size):
                for size in sizes:
                    t0 = time.perf_counter()
                    res = process_text(batches[size][k], opened[size], protocol, tz=UTC, received_at=corpus.RECEIVED_AT)
                    times[size].append(time.perf_counter() - t0)
                    acks[size][res[0].ack_code] = acks[size].get(res[0].ack_code, 0) + 1
        finally:
            for store in opened.values():
                dispose = getattr(store, "dispose", None)
                if dispose:
                    dispose()
        rows = {}
        for size in sizes:
            warm = times[size][3:] if len(times[size]) > 10 else times[size]  # first calls: connections, caches
            rows[str(size)] = {**summary_ms(warm), "ack_codes": acks[size], "fill_seconds": round(fill_s[size], 2)}
        log(f"  scaling {store_name}: " + ", ".join(f"{s} patients {rows[str(s)]['median_ms']:.2f} ms" for s in sizes))
        out[store_name] = rows
    return out


def size_scaling(protocol: Protocol, counts: list[int], cfg: dict[str, Any], log=print) -> dict[str, Any]:
    """Every size of one shape timed in interleaved rounds (a busy phase hits all sizes alike)."""
    out: dict[str, Any] = {}
    for shape, go_doses in (("one GO dose + supportive orders", False), ("N GO doses", True)):
        texts = {n: corpus.order_set_with(n, go_doses=go_doses) for n in counts}
        plan = {}
        for n, text in texts.items():
            fn = lambda text=text: validate_text(text, protocol)  # noqa: E731
            plan[str(n)] = (fn, calibrate(fn, cfg["budget_s"], cfg["min_n"], cfg["max_n"]))
        samples = interleaved(plan, rounds=cfg["rounds"], warmup=1)
        rows = {}
        for n, text in texts.items():
            s = summary_ms(samples[str(n)])
            s["segments"] = text.count("\r")
            s["per_order_ms"] = round(s["median_ms"] / n, 6)
            s["ack_code"] = validate_text(text, protocol)[0][0]
            rows[str(n)] = s
        log(f"  scaling message size ({shape}): " + ", ".join(f"{k}:{v['median_ms']:.2f}ms" for k, v in rows.items()))
        out[shape] = rows
    return out

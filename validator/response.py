"""The HL7 response, built as text (docs/interfaces.md §2).

Only the fields the response's version has are written: below 2.5 the ERR
segment has only ERR-1; from 2.7 on MSA-3 is gone (the reason is in ERR-8).
Responses use `|^~\\&`; they are ASCII, with forms that keep the meaning (`10⁹` -> `10^9`,
escaped `10\\S\\9` in a field), unless the input declared MSH-18 `UNICODE UTF-8` (v2.5 and
later): then the response is UTF-8 and declares the same (docs/interfaces.md §5, "Text of answers").
"""

from __future__ import annotations

import re
import unicodedata
import uuid
from datetime import datetime

from .er7 import escape
from .findings import Finding
from .model import Location, OrderSet
from .reader import SUPPORTED_VERSIONS as _SUPPORTED
from .verdict import Judgement

# (message code, event) -> (response code, event, structure)
RESPONSE_TYPES = {
    ("RDE", "O11"): ("RRE", "O12", "RRE_O12"),
    ("RDE", "O25"): ("RRE", "O26", "RRE_O12"),
    ("RDE", "O01"): ("RRE", "O02", "RRE_O02"),
    ("OMP", "O09"): ("ORP", "O10", "ORP_O10"),
    ("ORM", "O01"): ("ORR", "O02", "ORR_O02"),
}
FALLBACK_VERSION = "2.5.1"
ERROR_TEXTS = {
    "100": "Segment sequence error",
    "101": "Required field missing",
    "102": "Data type error",
    "103": "Table value not found",
    "200": "Unsupported message type",
    "201": "Unsupported event code",
    "202": "Unsupported processing id",
    "203": "Unsupported version id",
    "205": "Duplicate key identifier",
    "207": "Application internal error",
}
# docs/interfaces.md §2: ERR-3 is 207 for protocol rules, a structure code (table 0357) for the hl7.* findings
# of a processed message.
HL7_RULE_CODES = {"hl7.structure": "101", "hl7.order_control": "103"}
_ASCII = {"²": "2", "³": "3", "×": "x", "µ": "u", "μ": "u", "≥": ">=", "≤": "<=", "−": "-", "–": "-", "—": "-",
          "±": "+/-", "°": " deg", "→": "->", "’": "'", "‘": "'", "“": '"', "”": '"', "√": "sqrt"}


_SUPERSCRIPT = "⁰¹²³⁴⁵⁶⁷⁸⁹⁺⁻"
_SUPERSCRIPT_PLAIN = str.maketrans(_SUPERSCRIPT, "0123456789+-")
_EXPONENT = re.compile(f"(?<=[0-9])[{_SUPERSCRIPT}]+")  # 10⁹, 10⁻³: an exponent of a number
UTF8 = "UNICODE UTF-8"
MSA3_MAX = 80
_CLOSING = {"(": ")", "[": "]", "{": "}"}


def to_ascii(text: str, exponent: str = "^") -> str:
    """Transliterate to ASCII keeping the meaning: `10⁹/L` -> `10^9/L` (never `109/L`), m², ×, µg, ≥ ->
    m2, x, ug, >=. `exponent` marks a superscript after a digit: `^` in a text that is escaped after
    (`\\S\\` in the field), `*` in text already written as ER7 (`10*9/L`)."""
    if text.isascii():
        return text
    text = _EXPONENT.sub(lambda m: exponent + m.group(0).translate(_SUPERSCRIPT_PLAIN), text)
    text = text.translate(_SUPERSCRIPT_PLAIN)  # m², cm³: part of a unit
    for k, v in _ASCII.items():
        text = text.replace(k, v)
    return unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")


def utf8_answer(header: OrderSet) -> bool:
    """The input declared MSH-18 `UNICODE UTF-8` in v2.5 or later: answer in UTF-8."""
    return header.character_set == UTF8 and version_tuple(header.version or "0") >= (2, 5)


def _plain(text: str, utf8: bool, exponent: str = "^") -> str:
    return text if utf8 else to_ascii(text, exponent)


def _balanced(text: str) -> bool:
    """No bracket left open in `text`."""
    depth: list[str] = []
    for ch in text:
        if ch in _CLOSING:
            depth.append(_CLOSING[ch])
        elif depth and ch == depth[-1]:
            depth.pop()
    return not depth


def msa_text(reason: str) -> str:
    """MSA-3: at most 80 characters once escaped, cut at a word boundary and ending in `...`, never
    inside a bracket or an escape (the full text is in ERR-8)."""
    if len(escape(reason)) <= MSA3_MAX:
        return escape(reason)
    spaces = [i for i, ch in enumerate(reason) if ch == " "]
    for cut in reversed(spaces):
        head = reason[:cut].rstrip(" ,;:-")
        if head and _balanced(head) and len(escape(head)) + 3 <= MSA3_MAX:
            return escape(head) + "..."
    head = ""
    for ch in reason:  # one long word: cut by characters, still outside brackets
        if len(escape(head + ch)) + 3 > MSA3_MAX:
            break
        head += ch
    while head and not _balanced(head):
        head = head[:-1]
    return escape(head) + "..."


def version_tuple(version: str) -> tuple[int, ...]:
    try:
        return tuple(int(p) for p in version.split("."))
    except ValueError:
        return (2, 5, 1)


def new_control_id() -> str:
    """A unique response MSH-10 of 20 characters."""
    return "RX" + uuid.uuid4().hex[:18].upper()


def processing_field(header: OrderSet) -> str:
    """The response's MSH-11: the request's (P when it was empty), escaped."""
    sent = header.processing_id or "P"
    return escape(sent) + (f"^{escape(header.processing_mode)}" if header.processing_mode else "")


def _msh(header: OrderSet, message_type: str, version: str, now: datetime) -> str:
    """The response's MSH: MSH-3..6 are the input's MSH-5/6/3/4 re-encoded with our `^~\\&`."""
    if header.response_hd:
        sending_app, sending_fac, receiving_app, receiving_fac = header.response_hd
    else:
        sending_app, sending_fac, receiving_app, receiving_fac = (escape_hd(v) for v in (
            header.sending_application, header.sending_facility,
            header.receiving_application, header.receiving_facility))
    fields = [
        "MSH", "^~\\&", receiving_app.replace("\r", ""), receiving_fac.replace("\r", ""),
        sending_app.replace("\r", ""), sending_fac.replace("\r", ""),
        now.strftime("%Y%m%d%H%M%S%z"), "", message_type, new_control_id(), processing_field(header), version,
    ]
    if utf8_answer(header):
        fields += ["", "", "", "", "", UTF8]  # MSH-13..17 empty, MSH-18
    return "|".join(fields)


def escape_hd(raw: str) -> str:
    """MSH-3..6 as sent, with field and repetition characters that would break ours escaped."""
    return raw.replace("|", "\\F\\").replace("~", "\\R\\").replace("\r", "")


def _err(found: Finding, location: Location | None, version: tuple[int, ...], code: str = "207",
         utf8: bool = False) -> str:
    loc = location or Location(segment="MSH", occurrence=1, field=0)
    severity = {"error": "E", "warning": "W"}.get(found.severity, "I")
    message = escape(_plain(found.message, utf8))
    code_text = ERROR_TEXTS.get(code, "Application internal error")
    if version < (2, 5):
        # ERR-1 (ELD): segment^sequence^field^code (CE with the rule id and message as the local alternate).
        ce = "&".join([code, code_text, "HL70357", found.rule, message.replace("&", "\\T\\"), "L"])
        return f"ERR|{loc.segment}^{loc.occurrence}^{loc.field or ''}^{ce}"
    err2 = loc.err2()
    return f"ERR||{err2}|{code}^{code_text}^HL70357|{severity}|{found.rule}|||{message}"


def _msa(ack: str, control_id: str, reason: str, version: tuple[int, ...], utf8: bool = False) -> str:
    fields = ["MSA", ack, escape(_plain(control_id, utf8, "*"))]
    if ack != "AA" and version < (2, 7):
        fields.append(msa_text(_plain(reason, utf8)))
    return "|".join(fields)


def reason_line(findings: list[Finding]) -> str:
    errors = [f for f in findings if f.severity == "error"]
    if not errors:
        return ""
    first = errors[0]
    more = f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{first.rule}: {first.message}{more}"


def build_response(judgement: Judgement, now: datetime) -> str:
    """The RRE^O12 (or pair) for a processed order message."""
    order_set = judgement.order_set
    version = order_set.version
    vt = version_tuple(version)
    code, event, structure = RESPONSE_TYPES[(order_set.message_code, order_set.trigger_event)]
    message_type = f"{code}^{event}" if vt < (2, 3, 1) else f"{code}^{event}^{structure}"
    findings = judgement.findings
    ack = judgement.ack_code
    utf8 = utf8_answer(order_set)
    lines = [_msh(order_set, message_type, version, now),
             _msa(ack, order_set.control_id, reason_line(findings), vt, utf8)]
    for found in findings:
        if found.severity == "info":
            continue
        location = found.location
        if location is None and found.order_index is not None:
            location = order_set.orders[found.order_index].orc_location
        lines.append(_err(found, location, vt, HL7_RULE_CODES.get(found.rule, "207"), utf8))
    if order_set.pid_line:
        lines.append(order_set.pid_line)
    for verdict in judgement.orders:
        order = verdict.order
        orc = order.orc_line.split("|") if order.orc_line else ["ORC"]
        if len(orc) < 2:
            orc.append("")
        orc[1] = verdict.control
        lines.append("|".join(orc))
        lines.extend(order.echo_lines)
    return _plain("\r".join(lines) + "\r", utf8, "*")  # the echoed segments are ER7 already


def build_rejection(
    header: OrderSet | None, rule: str, code: str, message: str, location: Location | None, now: datetime,
) -> str:
    """An ACK with MSA-1 AR: the message as a whole was not processed."""
    header = header or OrderSet()
    version = header.version if header.version in _SUPPORTED else FALLBACK_VERSION
    vt = version_tuple(version)
    event = header.trigger_event if header.trigger_event.isalnum() else ""
    message_type = "ACK" if not event else (f"ACK^{event}" if vt < (2, 3, 1) else f"ACK^{event}^ACK")
    found = Finding(rule=rule, severity="error", message=message, location=location)
    utf8 = utf8_answer(header)
    lines = [
        _msh(header, message_type, version, now),
        _msa("AR", header.control_id, f"{rule}: {message}", vt, utf8),
        _err(found, location, vt, code, utf8),
    ]
    return _plain("\r".join(lines) + "\r", utf8, "*")



def build_commit_ack(
    header: OrderSet | None, code: str, now: datetime, refusal: Finding | None = None, err_code: str = "207",
) -> str:
    """An enhanced-mode commit ACK (docs/interfaces.md §5 "MLLP"): `ACK`, MSA-1 `CA`/`CE`/`CR`.

    `CA` is MSH and MSA only; `CE`/`CR` carry the reason as `refusal` (MSA-3 where the version has it,
    and one ERR with `err_code`). MSH-15/16 stay empty: an acknowledgment asks for none itself.
    """
    header = header or OrderSet()
    version = header.version if header.version in _SUPPORTED else FALLBACK_VERSION
    vt = version_tuple(version)
    event = header.trigger_event if header.trigger_event.isalnum() else ""
    message_type = "ACK" if not event else (f"ACK^{event}" if vt < (2, 3, 1) else f"ACK^{event}^ACK")
    utf8 = utf8_answer(header)
    lines = [_msh(header, message_type, version, now)]
    if refusal is None:
        lines.append(f"MSA|{code}|{escape(_plain(header.control_id, utf8, '*'))}")
    else:
        lines += [_msa(code, header.control_id, f"{refusal.rule}: {refusal.message}", vt, utf8),
                  _err(refusal, refusal.location, vt, err_code, utf8)]
    return _plain("\r".join(lines) + "\r", utf8, "*")

"""The detail page's view of a stored message: its segments and fields, with the findings placed on them.

Read with the core's ER7 reader (`validator.er7`): the message's own encoding characters
(MSH-1/MSH-2), MLLP bytes, LF or CRLF separators. Field n of a segment is shown as number n, MSH
counting from MSH-2 (MSH-1 is the field separator itself).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from validator.er7 import Encoding, RawMessage, Segment, normalise, split_messages

__all__ = ["ErrLocation", "FieldView", "SegmentView", "annotate_segments", "err_locations", "message_segments",
           "segment_lines"]

_RANK = {"error": 3, "warning": 2, "info": 1}


@dataclass(frozen=True)
class ErrLocation:
    """A response ERR's rule (ERR-5) and ERR-2 location `segment^occurrence^field`."""

    rule: str
    segment: str
    occurrence: int
    field: int


@dataclass
class FieldView:
    number: int
    text: str  # as received, escapes and all
    marks: list[dict[str, Any]] = field(default_factory=list)
    severity: str = ""  # the worst severity among the marks

    def mark(self, finding: dict[str, Any]) -> None:
        self.marks.append(finding)
        if _RANK.get(finding["severity"], 0) > _RANK.get(self.severity, 0):
            self.severity = finding["severity"]


@dataclass
class SegmentView:
    name: str
    occurrence: int
    sep: str  # the message's field separator, shown between fields
    fields: list[FieldView]
    notes: list[dict[str, Any]] = field(default_factory=list)  # findings on a field the segment does not have

    @property
    def flagged(self) -> bool:
        return bool(self.notes) or any(f.marks for f in self.fields)


def segment_lines(text: str) -> list[str]:
    """The non-blank segment lines of a message text (MLLP bytes, BOM, CR/LF/CRLF handled by er7)."""
    return [line for line in normalise(text).split("\r") if line.strip()]


def message_segments(raw: str) -> list[Segment]:
    """Every non-blank line of a stored message as a segment, split with the first MSH's encoding.

    Stored messages are the validator's own segment lines, so occurrences count as ERR-2 counts
    them; an unparseable record (junk, no MSH) still shows every line it holds.
    """
    lines = segment_lines(raw)
    msh = next((line for line in lines if line.startswith("MSH")), "")
    return RawMessage(lines, Encoding.from_msh(msh)).segments()


def err_locations(response: str) -> list[ErrLocation]:
    """The ERRs of our response that carry ERR-2 (v2.5+) and ERR-5; ERR-1 (below 2.5) gives none."""
    out = []
    for message in split_messages(response).messages:
        for seg in message.segments():
            if seg.name != "ERR":
                continue
            rule = seg.component(5)
            segment, occurrence, number = (seg.component(2, c) for c in (1, 2, 3))
            if rule and occurrence.isdigit() and number.isdigit():
                out.append(ErrLocation(rule, segment, int(occurrence), int(number)))
    return out


def _view(seg: Segment) -> SegmentView:
    first = 2 if seg.name == "MSH" else 1
    fields = [FieldView(number=n, text=seg.fields[n]) for n in range(first, len(seg.fields))]
    return SegmentView(name=seg.name, occurrence=seg.occurrence, sep=seg.enc.field, fields=fields)


def _place(view: SegmentView, finding: dict[str, Any], errs: list[ErrLocation]) -> None:
    seg, _, num = (finding.get("location") or "").partition("-")
    if seg != view.name:
        return
    judged = {e.occurrence for e in errs if e.rule == finding["rule"] and e.segment == seg and str(e.field) == num}
    if judged and view.occurrence not in judged:
        return
    target = next((f for f in view.fields if num.isdigit() and f.number == int(num)), None)
    if target is None:
        view.notes.append(finding)
    else:
        target.mark(finding)


def _order_groups(views: list[SegmentView]) -> list[int | None]:
    """The order index of each segment: the n-th ORC and the segments up to the next ORC are order n
    (as the reader counts orders), None before the first ORC."""
    groups: list[int | None] = []
    current: int | None = None
    for view in views:
        if view.name == "ORC":
            current = 0 if current is None else current + 1
        groups.append(current)
    return groups


def annotate_segments(raw: str, findings: list[dict[str, Any]], response: str) -> list[SegmentView]:
    """The message's segments, each field with the findings located on it.

    A finding filed under an order (`order_index`) is placed on that order's own segment when the order
    group has one of the located name (`go.orderset` on the third premed's ORC, not the first's). Else
    the finding's JSON location is `SEG-field` (no occurrence) and the response's ERR-2 (`SEG^occ^field`)
    of the same rule narrows it to the segment occurrence judged; without such an ERR (info findings,
    versions below 2.5) every occurrence of the segment is marked.
    """
    errs = err_locations(response)
    views = [_view(seg) for seg in message_segments(raw)]
    groups = _order_groups(views)
    for finding in findings:
        segment = (finding.get("location") or "").partition("-")[0]
        order_index = finding.get("order_index")
        own = [v for v, g in zip(views, groups, strict=True)
               if order_index is not None and g == order_index and v.name == segment]
        for view in own[:1] or views:
            _place(view, finding, [] if own else errs)
    return views

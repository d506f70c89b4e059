"""The fixed corpus: the shared 26-segment GO order set, a ~100-segment order set, the 36 public samples.

The shared folder is found the way `tests/paths.py` finds it: `$RXGATE_SHARED_DIR`, else
`../shared` beside the repository. Without it the bench still runs, on the repository's own copies:
the builders' adult order set and the messages of `examples/` instead of the public samples; the
results and BENCHMARKS.md name the corpus used (`public.source`). Messages are read as bytes and decoded with the reader's
`validator.er7.decode` (never text mode: it would turn `\\r` into `\\n`).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from tests import builders as b
from validator.er7 import decode

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("RXGATE_SHARED_DIR", REPO.parent / "shared"))
ADULT_SAMPLE = SHARED / "samples" / "go" / "adult-day1-accept.hl7"
PUBLIC_DIR = SHARED / "samples" / "public"
EXAMPLES_DIR = REPO / "examples"
RECEIVED_AT = datetime(2026, 12, 1, 8, 30, tzinfo=b.UTC)  # the adult example is accepted at this time


@dataclass
class Sample:
    name: str
    text: str  # decoded as received (separators as sent)
    messages: list[str] = field(default_factory=list)  # each message normalised to \r separators

    @property
    def segments(self) -> int:
        return sum(m.count("\r") for m in self.messages)


_MSH_START = re.compile(r"(?=^MSH)", re.M)


def to_messages(text: str) -> list[str]:
    """Separators normalised to \\r (what python-hl7 and hl7apy need), BOM/MLLP removed, split at each MSH.

    Done once outside the timed region: the parsers are timed on clean input, rxgate on the text as sent.
    """
    clean = text.replace("\ufeff", "").replace("\x0b", "").replace("\x1c", "")
    clean = clean.replace("\r\n", "\n").replace("\r", "\n")
    lines = [ln.rstrip() for ln in clean.split("\n") if ln.strip()]
    lines = [ln for ln in lines if ln[:3] not in ("FHS", "BHS", "BTS", "FTS")]
    messages: list[list[str]] = []
    for ln in lines:
        if ln.startswith("MSH") or not messages:
            messages.append([])
        messages[-1].append(ln)
    return ["\r".join(m) + "\r" for m in messages]


def sample(name: str, text: str) -> Sample:
    return Sample(name, text, to_messages(text))


def adult_sample() -> Sample:
    """The shared example GO order set (26 segments); the builders' copy if the shared folder is absent."""
    if ADULT_SAMPLE.exists():
        return sample("adult-day1-accept (26 seg)", decode(ADULT_SAMPLE.read_bytes()))
    return sample("adult-day1-accept (26 seg, built)", b.adult_order_set())


EXTRA_DRUGS = [
    ("26225^ondansetron^RXNORM", "8", "IV^Intravenous^HL70162"),
    ("519^allopurinol^RXNORM", "300", "PO^Oral^HL70162"),
    ("281^acyclovir^RXNORM", "400", "PO^Oral^HL70162"),
    ("4450^fluconazole^RXNORM", "200", "PO^Oral^HL70162"),
    ("82122^levofloxacin^RXNORM", "500", "PO^Oral^HL70162"),
    ("40790^pantoprazole^RXNORM", "40", "IV^Intravenous^HL70162"),
    ("8591^potassium chloride^RXNORM", "20", "IV^Intravenous^HL70162"),
    ("4603^furosemide^RXNORM", "20", "IV^Intravenous^HL70162"),
    ("6470^lorazepam^RXNORM", "1", "PO^Oral^HL70162"),
    ("3355^docusate^RXNORM", "100", "PO^Oral^HL70162"),
    ("9863^sodium chloride^RXNORM", "1000", "IV^Intravenous^HL70162"),
    ("5224^heparin^RXNORM", "5000", "SC^Subcutaneous^HL70162"),
]


def supportive_orders(count: int, *, first: int = 1, day: str = "20261201") -> list[str]:
    """`count` non-GO orders (ORC/RXE/TQ1/RXR each): supportive care that rides along a GO order set."""
    segs: list[str] = []
    for i in range(count):
        drug, dose, route = EXTRA_DRUGS[i % len(EXTRA_DRUGS)]
        segs += b.premed_order(f"SUP{first + i:04d}", drug, dose, route=route, start=f"{day}{8 + i % 12:02d}0000")
    return segs


def large_order_set(control_id: str = "B0100") -> str:
    """A 100-segment order set: GO day 1 and day 14, each with three premeds and seven OBX,
    twelve supportive orders and three more OBX (3 + 2 x 23 + 12 x 4 + 3 = 100 segments)."""
    day14 = b.go_order("ORD1401", start="20261214100000", end="20261214140000")
    premeds14 = b.standard_premeds(first_start="20261214090000", steroid_start="20261214094000",
                                   placers=("ORD1402", "ORD1403", "ORD1404"))
    extra = supportive_orders(12) + [
        b.obx(8, "777-3^Platelets^LN", "142", "10*9/L^10*9/L^UCUM"),
        b.obx(9, "718-7^Hemoglobin^LN", "9.8", "g/dL^g/dL^UCUM"),
        b.obx(10, "2160-0^Creatinine^LN", "0.9", "mg/dL^mg/dL^UCUM"),
    ]
    return b.adult_order_set(control_id, extra_orders=day14 + premeds14 + extra)


def order_set_with(orders: int, *, go_doses: bool, control_id: str = "S0001", mrn: str = "MRN55501") -> str:
    """An order set of `orders` order groups (4 segments each) plus MSH/PID/PV1 and seven OBX.

    go_doses=False: the accepted GO dose, then `orders - 1` supportive orders (the reader and response
    scale). go_doses=True: `orders` GO doses on consecutive days (every dose runs every rule against
    the doses accepted before it: the rule engine's scaling).
    """
    if not go_doses:
        go = b.go_order()
        return b.adult_order_set(control_id, mrn=mrn, go=go, premeds=[], extra_orders=supportive_orders(orders - 1))
    start = datetime(2026, 12, 1, 10, 0)
    segs: list[str] = []
    for i in range(orders):
        t = start + timedelta(days=i)
        segs += [b.orc(f"GO{i + 1:04d}"), b.rxe(b.GO_DRUG, "15.2"),
                 b.tq1(t.strftime("%Y%m%d%H%M%S"), (t + timedelta(minutes=240)).strftime("%Y%m%d%H%M%S"), "240^min"),
                 b.rxr()]
    segs += b.standard_observations()
    return b.adult_order_set(control_id, mrn=mrn, go=segs, premeds=[])


def public_samples() -> tuple[list[Sample], str]:
    """The public samples and where they come from: the shared folder's, else the repository's examples/."""
    paths = sorted(PUBLIC_DIR.glob("*/*.hl7")) if PUBLIC_DIR.exists() else []
    source = "the public samples of the shared folder (samples/public)"
    if not paths:
        paths = sorted(EXAMPLES_DIR.glob("*.hl7"))
        source = "the repository's examples/ (the shared folder's public samples were not found)"
    return [sample(p.name, decode(p.read_bytes())) for p in paths], source

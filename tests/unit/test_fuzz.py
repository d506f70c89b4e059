"""Structured HL7 mutations (extends tests/unit/test_properties.py, whose segment-level mutations stay there).

Field-level mutations of every segment type of the accepted adult order set, the encoding characters
(MSH-1/MSH-2: consistent re-encodings read the same, broken ones are answered), MSH-18 character sets
with the message sent as UTF-8 or Latin-1 bytes, the CLI path, and targeted mutations of the GO dose,
the infusion duration and the premedication times that must never be accepted.

About 1 000 examples in `make test` (~10 s); `make fuzz` runs 20 times as many (RXGATE_FUZZ_SCALE=20, tests/budget.py).
The properties themselves are in fuzz/properties.py (shared with the atheris targets).
"""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

from hypothesis import example, given
from hypothesis import strategies as st

from fuzz.properties import RECEIVED, UTC, answer_bytes, answer_text, check_cli
from tests.budget import examples
from tests.builders import EXPECTED_MG, GO_START, adult_order_set, go_order, standard_premeds
from validator.er7 import split_messages
from validator.hl7time import parse_datetime
from validator.reader import read_order_set

BASE = adult_order_set("F0001")
LINES = BASE.rstrip("\r").split("\r")
SEGMENT_TYPES = sorted({line[:3] for line in LINES})  # MSH PID PV1 ORC RXE TQ1 RXR OBX

# values that exercise the reader: encoding characters, every escape, HL7 null, numbers at the edges
ATOMS = [
    "", '""', "^", "~", "&", "\\", "|", "^^^", "~~~", "&&", "\\F\\", "\\S\\", "\\T\\", "\\R\\", "\\E\\",
    "\\X41\\", "\\XC3A9\\", "\\XE9\\", "\\XZZ\\", "\\X\\", "\\X4\\", "\\.br\\", "\\H\\", "\\N\\", "\\Zabc\\",
    "\\", "\\E", "-1", "0", "0.0", "1e9", "1E-9", "NaN", "Infinity", "9" * 40, "0." + "0" * 40 + "1",
    "20261301", "20261232", "2026120125", "20261201100000+2500", "20261201100000-0500", "2026",
    "é", "ü", "µg", "m²", "日本", "\x00", "\x0b", "\x1c", "\ufeff", "\t", " ", "MSH|^~\\&|", "PID|1",
    "240^min", "4^h", "15.2", "mg^milligram^UCUM", "IV^Intravenous^HL70162",
]
TEXT = st.text(alphabet=st.characters(codec="utf-8", exclude_characters="\r\n"), max_size=40)
VALUE = st.one_of(
    st.sampled_from(ATOMS),
    TEXT,
    st.lists(st.sampled_from(ATOMS), min_size=2, max_size=5).map("".join),
    st.builds(lambda a, n: a * n, st.sampled_from(["~", "^", "&", "x~", "9^"]), st.integers(10, 120)),
)


def _replace_field(line: str, k: int, value: str) -> str:
    fields = line.split("|")
    if line.startswith("MSH"):
        k = max(k, 2)  # fields[1] is MSH-2 here: keep MSH-1 as the separator itself
    while len(fields) <= k:
        fields.append("")
    fields[k] = value
    return "|".join(fields)


@st.composite
def field_mutations(draw):
    lines = list(LINES)
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(SEGMENT_TYPES))
        positions = [i for i, line in enumerate(lines) if line.startswith(kind)]
        i = draw(st.sampled_from(positions))
        k = draw(st.integers(1, max(len(lines[i].split("|")) + 2, 12)))
        lines[i] = _replace_field(lines[i], k, draw(VALUE))
    return "\r".join(lines) + "\r"


@examples(250)
@given(field_mutations())
def test_field_mutations_of_every_segment_type_always_answered(text):
    answer_text(text)


# --- encoding characters (MSH-1, MSH-2) -------------------------------------------------------------

FREE = [c for c in "!#$%*+,./:;<=>?@[]_`{}'\"" if c not in BASE] + [c for c in "|^~\\&"]


@examples(75)
@given(st.lists(st.sampled_from(FREE), min_size=5, max_size=5, unique=True))
@example(list("#$%@!") if all(c in FREE for c in "#$%@!") else list("|^~\\&"))
def test_consistent_reencoding_reads_the_same(chars):
    """The same message written with other encoding characters (MSH-1/MSH-2) is read the same: accepted."""
    table = str.maketrans(dict(zip("|^~\\&", chars, strict=True)))
    text = BASE.translate(table)
    [outcome] = answer_text(text)
    assert outcome.ack_code == "AA", outcome.result["findings"]
    assert outcome.control_id == "F0001"


@examples(75)
@given(st.text(alphabet=st.characters(codec="utf-8", exclude_characters="\r\n"), max_size=6),
       st.sampled_from(["|", "#", "A", " ", "^", "\\", "é"]))
def test_broken_encoding_characters_are_answered(msh2, fs):
    body = LINES[0][9:]  # after "MSH|^~\&|"
    lines = [f"MSH{fs}{msh2}{fs}{body.replace('|', fs)}"] + LINES[1:]
    answer_text("\r".join(lines) + "\r")


# --- character sets: MSH-18 and the bytes as sent ----------------------------------------------------

CHARSETS = ["", "ASCII", "8859/1", "UNICODE UTF-8", "UNICODE", "UTF-8", "8859/15", "ISO IR192", "KLINGON", "\\X00\\"]


@examples(100)
@given(st.sampled_from(CHARSETS), st.sampled_from(["utf-8", "latin-1"]), st.text(
    alphabet=st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="|^~\\&"), max_size=20),
    st.booleans(), st.binary(max_size=8))
def test_charsets_and_byte_encodings_are_answered(charset, codec, accented, bom, junk):
    msh = _replace_field(LINES[0], 17, charset)  # fields[17] = MSH-18 (fields[1] is MSH-2)
    pid = LINES[1].replace("DOE^JANE", f"DOE{accented}^JANE")
    text = "\r".join([msh, pid, *LINES[2:]]) + "\r"
    data = (b"\xef\xbb\xbf" if bom else b"") + text.encode(codec, "replace")
    [outcome] = answer_bytes(data)
    assert outcome.control_id == "F0001"
    answer_bytes(data + junk)  # trailing bytes after the last segment: still answered


@examples(75)
@given(st.one_of(field_mutations().map(lambda t: t.encode("utf-8")), st.binary(max_size=400),
                 st.binary(max_size=300).map(lambda b: BASE.encode() + b)))
def test_cli_check_json_path_always_answers(data):
    assert check_cli(data) in (0, 1, 2)


# --- mutations that must never be accepted --------------------------------------------------------------

NUMBERISH = st.one_of(
    st.decimals(min_value=Decimal("-1e6"), max_value=Decimal("1e6"), allow_nan=False, allow_infinity=False,
                places=3).map(str),
    st.sampled_from(["15.2mg", "15,2", "1 5.2", "15.2.1", "+15.2", ".152e2", "1.52E1", "0x0F", "Ⅰ5.2", "١٥.٢",
                     "15.2\\X00\\", "15.2%", "-15.2", "152", "1.52", "16.4", "14.0", "0", "", '""']),
    TEXT,
)


BSA = (Decimal(165) * Decimal(62) / Decimal(3600)).sqrt()  # Mosteller, the adult example's height and weight


def _go(text: str):
    order_set = read_order_set(split_messages(text).messages[0], UTC)
    return order_set.orders[0], order_set


def _go_verdict(text: str):
    [outcome] = answer_text(text)
    go = next(o for o in outcome.result["orders"] if o["protocol_order"])
    return outcome.ack_code, go["order_control"]


@examples(150)
@given(NUMBERISH, st.sampled_from(["mg^milligram^UCUM", "mg", "ug^microgram^UCUM", "g", "mg/m2", "", "MG"]))
def test_mutated_go_dose_never_accepted(dose, units):
    """Whatever RXE-3/RXE-5 hold: unless the reader reads a dose within 5 % of 9 mg/m2 x BSA in mg, refused."""
    text = adult_order_set(go=go_order(dose=dose.replace("|", "\\F\\").replace("\r", ""), units=units))
    go, _ = _go(text)
    ack, control = _go_verdict(text)
    per_mg = {"mg": Decimal(1), "ug": Decimal("0.001"), "g": Decimal(1000), "mg/m2": BSA}
    factor = per_mg.get(go.amount_units.code.lower())
    in_tolerance = (go.amount is not None and factor is not None
                    and abs(go.amount * factor - EXPECTED_MG) <= EXPECTED_MG * Decimal("0.05"))
    if not in_tolerance:
        assert ack != "AA" and control == "UA", (dose, units)


DURATIONS = st.one_of(
    st.builds(lambda n, u: f"{n}^{u}", st.integers(-10, 100_000), st.sampled_from(["min", "h", "s", "d", "xyz", ""])),
    st.builds(lambda n: f"{n}^min", st.decimals(min_value=0, max_value=1000, places=2)),
    TEXT, st.sampled_from(ATOMS),
)
ENDS = st.one_of(
    st.builds(lambda m: (RECEIVED.replace(hour=10, minute=0, tzinfo=None) + timedelta(minutes=m)).strftime("%Y%m%d%H%M%S"),
              st.integers(-600, 3000)),
    TEXT, st.sampled_from(ATOMS),
)


@examples(150)
@given(st.one_of(st.tuples(DURATIONS, st.just("20261201140000")), st.tuples(st.just("240^min"), ENDS),
                 st.tuples(DURATIONS, ENDS)))
def test_mutated_infusion_duration_never_accepted(case):
    """TQ1-6 and/or TQ1-8 mutated: accepted only when every source the reader reads is 240 +/- 15 min and
    nothing sent is unreadable."""
    duration, end = case
    text = adult_order_set(go=go_order(duration=duration.replace("|", "\\F\\"), end=end.replace("|", "\\F\\")))
    go, _ = _go(text)
    ack, control = _go_verdict(text)
    timing = go.timing
    minutes = []
    readable = True
    if timing.service_duration is not None:
        unit = {"min": 1, "h": 60, "s": Decimal(1) / 60}.get(timing.service_duration.unit.code)
        if unit is None:
            readable = False
        else:
            minutes.append(timing.service_duration.value * unit)
    elif timing.duration_location is not None:
        readable = False
    if timing.end is not None:
        minutes.append(Decimal((timing.end - timing.start).total_seconds()) / 60)
    elif timing.end_location is not None:
        readable = False
    ok = readable and minutes and all(225 <= m <= 255 for m in minutes) and max(minutes) - min(minutes) <= 5
    if not ok:
        assert ack != "AA" and control == "UA", (duration, end, minutes)


PREMED_TIMES = st.one_of(
    st.builds(lambda m: (RECEIVED.replace(hour=10, minute=0, tzinfo=None) - timedelta(minutes=m)).strftime(
        "%Y%m%d%H%M%S"), st.integers(-300, 600)),
    TEXT, st.sampled_from(ATOMS),
)


@examples(125)
@given(PREMED_TIMES, st.sampled_from(["first", "steroid"]))
def test_mutated_premedication_time_never_accepted(when, which):
    """A premedication start (TQ1-7) outside its window before the GO start, or unreadable: GO refused."""
    when = when.replace("|", "\\F\\")
    premeds = standard_premeds(first_start=when) if which == "first" else standard_premeds(steroid_start=when)
    ack, control = _go_verdict(adult_order_set(premeds=premeds))
    start = parse_datetime(when, UTC)
    go_start = parse_datetime(GO_START, UTC)
    window = (30, 90) if which == "first" else (0, 30)
    inside = start is not None and window[0] <= (go_start - start).total_seconds() / 60 <= window[1]
    if not inside:
        assert ack != "AA" and control == "UA", (when, which)

"""ER7 text: the plain-split layer under the reader.

Splits a byte stream into messages and segments, and reads fields, repetitions,
components and sub-components with the message's own encoding characters
(MSH-1/MSH-2). Measured against python-hl7 and hl7apy (BENCHMARKS.md): a split
is ~100x faster than python-hl7 and tolerates more of what real senders do
(LF separators, BOMs, MLLP bytes, broken lines, odd encoding characters).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

MLLP_BYTES = ("\x0b", "\x1c")
BOM = "\ufeff"
# A segment line starts with a three-character id (letters/digits, first a letter).
_SEGMENT_START = re.compile(r"^[A-Z][A-Z0-9]{2}")
BATCH_SEGMENTS = frozenset({"FHS", "BHS", "BTS", "FTS"})


@dataclass(frozen=True)
class Encoding:
    """The five encoding characters of a message (MSH-1 and MSH-2)."""

    field: str = "|"
    component: str = "^"
    repetition: str = "~"
    escape: str = "\\"
    subcomponent: str = "&"

    @classmethod
    def from_msh(cls, msh_line: str) -> Encoding:
        if len(msh_line) < 4:
            return cls()
        fs = msh_line[3]
        rest = msh_line[4:].split(fs, 1)[0]
        defaults = "^~\\&"
        chars = list(rest[:4]) + list(defaults[len(rest[:4]) :])
        return cls(fs, chars[0], chars[1], chars[2], chars[3])


_ESCAPE_NAMES = {"F": "field", "S": "component", "T": "subcomponent", "R": "repetition", "E": "escape"}


def unescape(value: str, enc: Encoding) -> str:
    """Resolve HL7 escape sequences (\\F\\ \\S\\ \\T\\ \\R\\ \\E\\ \\Xhh\\ \\.br\\) in a leaf value."""
    esc = enc.escape
    if not esc or esc not in value:
        return value
    out: list[str] = []
    i = 0
    n = len(value)
    while i < n:
        ch = value[i]
        if ch != esc:
            out.append(ch)
            i += 1
            continue
        end = value.find(esc, i + 1)
        if end < 0:  # unterminated: keep literally
            out.append(value[i:])
            break
        code = value[i + 1 : end]
        if code in _ESCAPE_NAMES:
            out.append(getattr(enc, _ESCAPE_NAMES[code]))
        elif code.startswith("X") and len(code) > 1:
            try:
                data = bytes.fromhex(code[1:])
                try:  # a UNICODE UTF-8 message escapes é as \XC3A9\; an 8859/1 one as \XE9\ (not UTF-8)
                    out.append(data.decode("utf-8"))
                except UnicodeDecodeError:
                    out.append(data.decode("latin-1"))
            except ValueError:
                out.append(value[i : end + 1])
        elif code in (".br", "H", "N") or code.startswith((".sp", ".in", ".ti", ".ce", ".fi", ".nf")):
            out.append("\n" if code == ".br" else "")
        else:
            out.append(value[i : end + 1])
        i = end + 1
    return "".join(out)


def escape(value: str, enc: Encoding | None = None) -> str:
    """Escape a text value for writing into an ER7 field."""
    enc = enc or Encoding()
    out = value.replace(enc.escape, "\x00E")
    for name, ch in (("F", enc.field), ("S", enc.component), ("T", enc.subcomponent), ("R", enc.repetition)):
        out = out.replace(ch, f"{enc.escape}{name}{enc.escape}")
    out = out.replace("\x00E", f"{enc.escape}E{enc.escape}")
    return out.replace("\r", " ").replace("\n", " ")


@dataclass
class Segment:
    """One segment: `fields[n]` is field n (for MSH too: fields[1] is MSH-1)."""

    name: str
    fields: list[str]
    enc: Encoding
    occurrence: int = 1  # n-th segment of this name in the message (ERR-2)
    line: str = ""
    # field n split into repetitions > components > sub-components, on first use: the reader asks
    # for several components of the same field (a CWE five times), each used to split it again
    _split: dict[int, list[list[list[str]]]] = field(default_factory=dict, repr=False, compare=False)

    def field(self, n: int) -> str:
        return self.fields[n] if n < len(self.fields) else ""

    def _parts(self, n: int, raw: str) -> list[list[list[str]]]:
        parts = self._split.get(n)
        if parts is None:
            enc = self.enc
            parts = [[comp.split(enc.subcomponent) for comp in rep.split(enc.component)]
                     for rep in raw.split(enc.repetition)]
            self._split[n] = parts
        return parts

    def repetitions(self, n: int) -> list[str]:
        raw = self.field(n)
        if self.name == "MSH" and n in (1, 2):
            return [raw]
        return raw.split(self.enc.repetition) if raw else []

    def component(self, n: int, c: int = 1, rep: int = 0, sub: int = 1) -> str:
        """Unescaped value of field n, component c (1-based), repetition rep (0-based)."""
        raw = self.field(n)
        if self.name == "MSH" and n in (1, 2):
            return raw if c == 1 else ""
        if not raw:
            return ""
        reps = self._parts(n, raw)
        if rep >= len(reps):
            return ""
        comps = reps[rep]
        if c > len(comps):
            return ""
        subs = comps[c - 1]
        if sub > len(subs):
            return ""
        value = subs[sub - 1]
        if value == '""':  # HL7 explicit null
            return ""
        return unescape(value, self.enc).strip()

    def components(self, n: int, rep: int = 0) -> list[str]:
        raw = self.field(n)
        if not raw:
            return []
        reps = raw.split(self.enc.repetition)
        if rep >= len(reps):
            return []
        return [self.component(n, i + 1, rep) for i in range(len(reps[rep].split(self.enc.component)))]


@dataclass
class RawMessage:
    """One message's text as received, split into segment lines."""

    lines: list[str]
    enc: Encoding = field(default_factory=Encoding)
    leading_garbage: bool = False

    @property
    def text(self) -> str:
        return "\r".join(self.lines) + "\r"

    def segments(self) -> list[Segment]:
        counts: dict[str, int] = {}
        out: list[Segment] = []
        fs = self.enc.field
        for line in self.lines:
            name = line[:3]
            if name == "MSH":
                fields = ["MSH", fs] + line[4:].split(fs)
            else:
                fields = line.split(fs)
                name = fields[0].strip()
            counts[name] = counts.get(name, 0) + 1
            out.append(Segment(name, fields, self.enc, counts[name], line))
        return out


def decode(data: bytes) -> str:
    """Decode message bytes: UTF-8 (BOM tolerated), else Latin-1, which never fails.

    MSH-18 names the character set; UTF-8 and ASCII read as UTF-8, 8859/1 as
    Latin-1. Reading the whole stream as UTF-8 first and falling back keeps
    every byte sequence answerable.
    """
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")
    if "8859" in _charset_hint(text) and not text.isascii():
        return data.decode("latin-1")
    return text


def _charset_hint(text: str) -> str:
    head = text[:2000]
    idx = head.find("MSH")
    if idx < 0:
        return ""
    line = re.split(r"[\r\n]", head[idx:], maxsplit=1)[0]
    if len(line) < 4:
        return ""
    parts = line.split(line[3])
    return parts[17] if len(parts) > 17 else ""


def normalise(text: str) -> str:
    """Separators to \\r, MLLP bytes and a BOM removed, trailing whitespace stripped.

    This is the text the message key hashes (docs/interfaces.md §3).
    """
    for b in MLLP_BYTES:
        text = text.replace(b, "")
    text = text.replace(BOM, "")
    text = text.replace("\r\n", "\r").replace("\n", "\r")
    return text.strip()


def _trim(value: str, separators: str) -> str:
    """`value` with trailing empty parts removed at each level (`a^^` -> `a`, `a&^b~` -> `a^b`)."""
    if not separators:
        return value
    sep, inner = separators[0], separators[1:]
    parts = [_trim(part, inner) for part in value.split(sep)]
    while parts and not parts[-1]:
        parts.pop()
    return sep.join(parts)


def redelivery_form(text: str) -> str:
    """The text the redelivery key hashes (docs/interfaces.md §3, "the same message again").

    `normalise`d, then, with each message's own encoding characters (MSH-1/MSH-2 untouched): MSH-7
    emptied, and trailing empty fields, repetitions, components and sub-components removed from
    every segment. An engine that re-stamps MSH-7 or re-serialises a resend with `|||` sends the
    same form again.
    """
    lines = [line for line in normalise(text).split("\r") if line.strip()]
    enc = Encoding.from_msh(next((line for line in lines if line.startswith("MSH")), ""))
    nested = enc.repetition + enc.component + enc.subcomponent
    out = []
    for line in lines:
        fields = line.split(enc.field)
        if fields[0] == "MSH":
            head, rest = fields[:2], fields[2:]  # MSH, MSH-2; rest[0] is MSH-3
            if len(rest) > 4:
                rest[4] = ""  # MSH-7
            fields = head + [_trim(f, nested) for f in rest]
            keep = 2
        else:
            fields = [fields[0]] + [_trim(f, nested) for f in fields[1:]]
            keep = 1
        while len(fields) > keep and not fields[-1]:
            fields.pop()
        out.append(enc.field.join(fields))
    return "\r".join(out)


@dataclass
class Split:
    messages: list[RawMessage]
    junk_before_first: bool  # non-blank bytes before the first MSH (docs/interfaces.md §1)
    no_msh: bool


def split_messages(text: str) -> Split:
    """Split a stream into messages: a new one starts at each line beginning with MSH.

    Batch envelope segments (FHS/BHS/BTS/FTS) are dropped. A line that does not
    start like a segment continues the previous one (a field broken by a line
    feed, seen in real Epic traffic). A whole message sent on one line with
    spaces between segments is split where a known segment id follows.
    """
    for b in MLLP_BYTES:
        text = text.replace(b, "\r")
    text = text.replace(BOM, "")
    raw_lines = re.split(r"\r\n|\r|\n", text)
    messages: list[RawMessage] = []
    current: list[str] | None = None
    junk = False
    for line in raw_lines:
        stripped = line.strip()
        if not stripped:
            continue
        candidate = line.lstrip()
        if candidate.startswith("MSH") and len(candidate) > 3:
            current = []
            messages.append(RawMessage(current, Encoding.from_msh(candidate)))
            for part in _split_inline_segments(candidate, messages[-1].enc):
                current.append(part)
            continue
        seg_id = candidate[:3]
        if seg_id in BATCH_SEGMENTS:
            continue
        if current is None:
            junk = True
            continue
        fs = messages[-1].enc.field
        if _SEGMENT_START.match(candidate) and (len(candidate) == 3 or candidate[3] == fs):
            current.append(candidate)
        elif current:
            current[-1] = current[-1] + line  # a broken line continues the previous segment
    return Split(messages, junk, not messages)


_INLINE = re.compile(r" (?=(?:EVN|PID|PD1|PV1|PV2|NK1|GT1|IN1|IN2|DG1|AL1|ORC|RXO|RXE|RXR|RXC|TQ1|TQ2|OBR|OBX|NTE|FT1|MSA|ERR|ZDS|ZPD)\|)")


def _split_inline_segments(line: str, enc: Encoding) -> list[str]:
    """A message sent on one line with spaces between segments (seen in node-hl7 samples).

    Only the MSH line is split this way: such a message arrives as one line.
    """
    if enc.field != "|" or " " not in line:
        return [line]
    parts = _INLINE.split(line)
    return [p.rstrip() if i < len(parts) - 1 else p for i, p in enumerate(parts)]

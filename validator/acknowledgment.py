"""HL7 acknowledgment modes (docs/interfaces.md §5 "MLLP"): what a message asks to be told, and when.

Pure functions over one message's MSH; the MLLP listener (workers/queue/mllp.py) does the I/O.

- **Original mode**: MSH-15 and MSH-16 both empty. The application response answers the message
  on the connection it came in on.
- **Enhanced mode**: MSH-15 (accept acknowledgment type) or MSH-16 (application acknowledgment
  type) valued; then an empty MSH-15 means `NE` and an empty MSH-16 means `AL`. A commit ACK
  (MSA-1 `CA`/`CE`/`CR`) is sent as MSH-15 asks, the application response as MSH-16 asks
  (HL7 table 0155):

      AL  always        NE  never
      ER  only when the answer is not CA (commit) / not AA (application)
      SU  only when it is CA / AA

  A value outside table 0155 is read as `AL`: answering is never wrong, withholding an answer the
  sender needed would be (the safe reading, docs/interfaces.md §5).
- **Commit reject** (`CR`): the message's type (MSH-9), processing id (MSH-11) or version (MSH-12)
  is one rxgate does not take — the same checks that make the judge answer `AR`
  (`validator.reader.check_supported`), so the two never disagree.
- A commit ACK that a peer sends (MSH-9 `ACK` with MSA-1 `CA`/`CE`/`CR`) is consumed, never answered.
"""

from __future__ import annotations

from dataclasses import dataclass

from .er7 import RawMessage
from .errors import MessageRejected
from .model import OrderSet
from .reader import check_supported

ALWAYS, NEVER, ON_ERROR, ON_SUCCESS = "AL", "NE", "ER", "SU"
TABLE_0155 = (ALWAYS, NEVER, ON_ERROR, ON_SUCCESS)
COMMIT_ACCEPT, COMMIT_ERROR, COMMIT_REJECT = "CA", "CE", "CR"
COMMIT_CODES = (COMMIT_ACCEPT, COMMIT_ERROR, COMMIT_REJECT)
# the MSH fields whose refusal is a commit reject (HL7 v2.5 2.9.3.1), as check_supported names them
COMMIT_REJECT_FIELDS = (9, 11, 12)


@dataclass(frozen=True)
class AckModes:
    """MSH-15 and MSH-16 as they apply: `accept` and `application` are AL/NE/ER/SU."""

    enhanced: bool
    accept: str = NEVER
    application: str = ALWAYS

    @classmethod
    def of(cls, raw: RawMessage) -> AckModes:
        msh = raw.segments()[0] if raw.lines else None
        if msh is None or msh.name != "MSH":
            return ORIGINAL
        accept, application = (msh.component(n, 1).strip().upper() for n in (15, 16))
        if not accept and not application:
            return ORIGINAL
        return cls(enhanced=True, accept=_mode(accept, NEVER), application=_mode(application, ALWAYS))

    def commit_wanted(self, code: str) -> bool:
        """Whether a commit ACK with MSA-1 `code` (CA/CE/CR) goes back to the sender."""
        return self.enhanced and _wanted(self.accept, code == COMMIT_ACCEPT)

    def application_wanted(self, ack_code: str) -> bool:
        """Enhanced mode: whether the application response (MSA-1 `ack_code`) goes to the reply address."""
        return self.enhanced and _wanted(self.application, ack_code == "AA")


ORIGINAL = AckModes(enhanced=False)


def _mode(value: str, empty: str) -> str:
    if not value:
        return empty
    return value if value in TABLE_0155 else ALWAYS


def _wanted(mode: str, success: bool) -> bool:
    if mode == ALWAYS:
        return True
    if mode == ON_ERROR:
        return not success
    if mode == ON_SUCCESS:
        return success
    return False


def commit_refusal(header: OrderSet) -> MessageRejected | None:
    """The reason for a commit reject (`CR`): MSH-9, MSH-11 or MSH-12 not taken; else None.

    Other refusals (a missing MSH-10, a bad order) are the judge's: the message is committed (`CA`)
    and answered `AR`/`AE` by the application response.
    """
    try:
        check_supported(header)
    except MessageRejected as exc:
        if exc.segment == "MSH" and exc.field in COMMIT_REJECT_FIELDS:
            return exc
    return None


def peer_commit_ack(raw: RawMessage) -> str | None:
    """MSA-1 when the message is a commit ACK (MSH-9 `ACK`, MSA-1 CA/CE/CR) — consumed, never answered."""
    segments = raw.segments()
    if not segments or segments[0].name != "MSH" or segments[0].component(9, 1).strip().upper() != "ACK":
        return None
    msa = next((s for s in segments if s.name == "MSA"), None)
    code = msa.component(1, 1).strip().upper() if msa is not None else ""
    return code if code in COMMIT_CODES else None


def sender_namespaces(raw: RawMessage) -> tuple[str, str]:
    """(MSH-3.1, MSH-4.1), unescaped with the message's own encoding characters: the namespace ids a reply address is configured for."""
    msh = raw.segments()[0]
    return msh.component(3, 1), msh.component(4, 1)

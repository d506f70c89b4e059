"""validator/acknowledgment.py and the commit ACK builder: the acknowledgment modes of docs/interfaces.md §5."""

from __future__ import annotations

from datetime import UTC, datetime

import hl7
import pytest
from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.parser import parse_message

from tests.builders import adult_order_set
from tests.hl7check import check_response
from validator import reader
from validator.acknowledgment import ORIGINAL, AckModes, commit_refusal, peer_commit_ack, sender_namespaces
from validator.er7 import split_messages
from validator.findings import error
from validator.model import Location
from validator.reader import read_header
from validator.response import build_commit_ack

NOW = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)


def raw_of(text: str):
    return split_messages(text).messages[0]


def with_msh(text: str, **fields: str) -> str:
    """`text` with MSH fields set: with_msh(t, f15="AL")."""
    lines = text.split("\r")
    parts = lines[0].split("|")
    for name, value in fields.items():
        n = int(name[1:])
        parts += [""] * (n - len(parts))
        parts[n - 1] = value
    lines[0] = "|".join(parts)
    return "\r".join(lines)


def modes(accept: str, application: str) -> AckModes:
    return AckModes.of(raw_of(with_msh(adult_order_set("A1"), f15=accept, f16=application)))


def test_both_empty_is_original_mode():
    assert modes("", "") == ORIGINAL
    assert not ORIGINAL.commit_wanted("CA") and not ORIGINAL.application_wanted("AE")


@pytest.mark.parametrize(("accept", "application", "want"), [
    ("AL", "", ("AL", "AL")),  # an empty MSH-16 in enhanced mode means AL
    ("", "ER", ("NE", "ER")),  # an empty MSH-15 in enhanced mode means NE
    ("su", " ne ", ("SU", "NE")),  # case and blanks as senders send them
    ("XX", "AL", ("AL", "AL")),  # outside table 0155: read as AL (answering is never wrong)
])
def test_enhanced_mode_defaults(accept, application, want):
    m = modes(accept, application)
    assert m.enhanced and (m.accept, m.application) == want


# the contract's table, written out: (mode, answer) -> sent?
COMMIT = {("AL", "CA"): True, ("AL", "CE"): True, ("AL", "CR"): True,
          ("ER", "CA"): False, ("ER", "CE"): True, ("ER", "CR"): True,
          ("SU", "CA"): True, ("SU", "CE"): False, ("SU", "CR"): False,
          ("NE", "CA"): False, ("NE", "CE"): False, ("NE", "CR"): False}
APPLICATION = {("AL", "AA"): True, ("AL", "AE"): True, ("AL", "AR"): True,
               ("ER", "AA"): False, ("ER", "AE"): True, ("ER", "AR"): True,
               ("SU", "AA"): True, ("SU", "AE"): False, ("SU", "AR"): False,
               ("NE", "AA"): False, ("NE", "AE"): False, ("NE", "AR"): False}


@pytest.mark.parametrize(("mode", "code"), list(COMMIT))
def test_commit_ack_sent_as_msh15_asks(mode, code):
    assert modes(mode, "NE").commit_wanted(code) is COMMIT[(mode, code)]


@pytest.mark.parametrize(("mode", "code"), list(APPLICATION))
def test_application_response_sent_as_msh16_asks(mode, code):
    assert modes("NE", mode).application_wanted(code) is APPLICATION[(mode, code)]


def test_commit_refusal_only_for_msh9_and_msh12():
    def refusal(text: str):
        return commit_refusal(read_header(raw_of(text), UTC))

    assert refusal(adult_order_set("A1")) is None
    version = refusal(adult_order_set("A1", version="2.9"))
    assert (version.rule, version.code, version.field) == ("hl7.version", "203", 12)
    kind = refusal(adult_order_set("A1").replace("RDE^O11^RDE_O11", "ADT^A01^ADT_A01"))
    assert (kind.rule, kind.code, kind.field) == ("hl7.message_type", "200", 9)
    event = refusal(adult_order_set("A1").replace("RDE^O11^RDE_O11", "RDE^O99"))
    assert (event.rule, event.field) == ("hl7.trigger_event", 9)
    # a missing control id is the judge's (committed, then answered AR), not a commit reject
    assert refusal(with_msh(adult_order_set("A1"), f10="")) is None


def test_peer_commit_acks_are_recognised():
    ack = "MSH|^~\\&|ENGINE|GENHOSP|RXGATE|GENHOSP|20261201||ACK^O12^ACK|X1|P|2.5.1\rMSA|{}|RX123\r"
    assert [peer_commit_ack(raw_of(ack.format(c))) for c in ("CA", "CE", "CR")] == ["CA", "CE", "CR"]
    assert peer_commit_ack(raw_of(ack.format("AA"))) is None  # an application ACK is not a commit ACK
    assert peer_commit_ack(raw_of(adult_order_set("A1"))) is None
    assert peer_commit_ack(raw_of(ack.format("CA").replace("ACK^O12^ACK", "RRE^O12"))) is None


def test_sender_namespaces_read_with_the_messages_own_delimiters():
    text = "MSH#*~\\&#PHARM*1.2.3*ISO#GEN\\S\\HOSP#RXGATE#GENHOSP#20261201##RDE*O11#C1#P#2.5.1\r"
    assert sender_namespaces(raw_of(text)) == ("PHARM", "GEN*HOSP")
    assert sender_namespaces(raw_of(adult_order_set("A1"))) == ("PHARMSYS", "GENHOSP")


def test_commit_accept_is_msh_and_msa_only_and_parses():
    header = read_header(raw_of(adult_order_set("CTRL-7")), UTC)
    text = build_commit_ack(header, "CA", NOW)
    lines = text.split("\r")
    assert text.endswith("\r") and [x[:3] for x in lines if x] == ["MSH", "MSA"]
    assert lines[1] == "MSA|CA|CTRL-7"
    msh = lines[0].split("|")
    assert msh[8] == "ACK^O11^ACK" and msh[2:6] == ["RXGATE", "GENHOSP", "PHARMSYS", "GENHOSP"]
    assert len(msh) <= 12  # MSH-15/16 stay empty: an acknowledgment asks for none
    assert str(hl7.parse(text).segment("MSA")[1]) == "CA"
    parsed = parse_message(text, validation_level=VALIDATION_LEVEL.TOLERANT, find_groups=False)
    assert parsed.msa.msa_1.to_er7() == "CA" and parsed.msa.msa_2.to_er7() == "CTRL-7"


def test_commit_reject_carries_the_reason():
    header = read_header(raw_of(adult_order_set("CTRL-8", version="2.9")), UTC)
    refusal = commit_refusal(header)
    finding = error(refusal.rule, refusal.message, Location(segment="MSH", occurrence=1, field=refusal.field))
    text = build_commit_ack(header, "CR", NOW, finding, refusal.code)
    check_response(text, "CR", "CTRL-8")
    err = next(x for x in text.split("\r") if x.startswith("ERR|")).split("|")
    assert err[2] == "MSH^1^12" and err[3].startswith("203^") and err[5] == "hl7.version"


@pytest.mark.skipif(not hasattr(reader, "PROCESSING_IDS"),
                    reason="the judge's MSH-11 check (hl7.processing_id, issue 13 core) is not merged yet")
def test_commit_refusal_for_an_unsupported_processing_id():
    refusal = commit_refusal(read_header(raw_of(with_msh(adult_order_set("A1"), f11="Q")), UTC))
    assert (refusal.rule, refusal.code, refusal.field) == ("hl7.processing_id", "202", 11)
    assert commit_refusal(read_header(raw_of(with_msh(adult_order_set("A1"), f11="T")), UTC)) is None

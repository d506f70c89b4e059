"""Check a response the way an interface engine would: python-hl7 and hl7apy must both read it."""

from __future__ import annotations

import hl7
from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.parser import parse_message


def check_response(response: str, expected_ack: str, expected_control_id: str | None) -> None:
    assert response.endswith("\r"), "segments must end with \\r"
    assert response.isascii(), "responses are ASCII"
    assert response.startswith("MSH|^~\\&|")
    parsed = hl7.parse(response)
    msa = parsed.segment("MSA")
    assert str(msa[1]) == expected_ack
    if expected_control_id is not None:
        assert str(msa[2]) == expected_control_id
    msh10 = str(parsed.segment("MSH")[10])
    assert 0 < len(msh10) <= 20
    message = parse_message(response, validation_level=VALIDATION_LEVEL.TOLERANT, find_groups=False)
    assert message.msa.msa_1.to_er7() == expected_ack
    if expected_control_id is not None:
        # MSA-2 read back through hl7apy (escaped in ER7: compare unescaped where needed)
        assert message.msa.msa_2.to_er7().replace("\\F\\", "|").replace("\\S\\", "^") .replace("\\E\\", "\\") \
            .replace("\\T\\", "&").replace("\\R\\", "~") == expected_control_id
    version = str(parsed.segment("MSH")[12])
    errs = [s for s in message.children if s.name == "ERR"]
    for err in errs:
        if tuple(int(p) for p in version.split(".")) >= (2, 5):
            assert err.err_5.to_er7(), "ERR-5 carries the rule id"
            assert err.err_4.to_er7() in ("E", "W")
        else:
            assert err.err_1.to_er7(), "ERR-1 carries the location and code below 2.5"
    if expected_ack != "AA":
        assert errs, "a refusal carries at least one ERR"

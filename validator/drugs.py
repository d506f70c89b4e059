"""Recognising drugs by give code: RxNorm and NDC codes in those systems, else text."""

from __future__ import annotations

import re

from .model import Coded
from .protocol import DrugMatch, Premedication, Protocol

_DIGITS = re.compile(r"\D")


def ndc_forms(code: str) -> set[str]:
    """The 11-digit (5-4-2) forms an NDC may stand for, in any hyphenation."""
    code = code.strip()
    parts = code.split("-")
    if len(parts) == 3 and all(p.isdigit() for p in parts):
        return {parts[0].zfill(5) + parts[1].zfill(4) + parts[2].zfill(2)}
    digits = _DIGITS.sub("", code)
    if len(digits) == 11:
        return {digits}
    if len(digits) == 10:  # unhyphenated 10-digit: 4-4-2, 5-3-2 or 5-4-1
        return {"0" + digits, digits[:5] + "0" + digits[5:], digits[:9] + "0" + digits[9:]}
    return set()


def _system_is(system: str, aliases: list[str]) -> bool:
    return system.strip().upper() in {a.upper() for a in aliases}


def drug_matches(drug: Coded, match: DrugMatch, protocol: Protocol, *, empty_system_counts: bool = False) -> bool:
    """Codes count in their coding system (RxNorm / NDC aliases); any other system matches on text only.

    `empty_system_counts` lets a code with no coding system match: used to find GO
    orders, where a missed match would skip the protocol checks (the safe reading).
    """
    systems = protocol.code_systems
    code = drug.code.strip()
    if code:
        no_system = not drug.system.strip()
        if (no_system and empty_system_counts) or _system_is(drug.system, systems.rxnorm):
            if code in match.rxnorm:
                return True
        if (no_system and empty_system_counts) or _system_is(drug.system, systems.ndc):
            wanted = set().union(*(ndc_forms(n) for n in match.ndc)) if match.ndc else set()
            if ndc_forms(code) & wanted:
                return True
        if code.upper() in {c.upper() for c in match.local_codes}:
            return True
    text = f"{drug.text} {drug.more_text}".lower()
    if not drug.text and not drug.more_text and not _system_is(drug.system, systems.rxnorm + systems.ndc):
        text = code.lower()  # a bare name sent in the code component
    return any(t.lower() in text for t in match.text_contains)


def is_protocol_drug(drug: Coded, protocol: Protocol) -> bool:
    return drug_matches(drug, protocol.drug, protocol, empty_system_counts=True)


def premedication_for(drug: Coded, protocol: Protocol) -> tuple[Premedication, str, object | None] | None:
    """(premedication, name of the drug ordered, equivalent or None) when `drug` is a premed drug."""
    for premed in protocol.premedication.required:
        if drug_matches(drug, DrugMatch(rxnorm=premed.rxnorm, text_contains=premed.text_contains), protocol):
            return premed, premed.name, None
        for eq in premed.equivalents:
            if drug_matches(drug, DrugMatch(rxnorm=eq.rxnorm, text_contains=eq.text_contains), protocol):
                return premed, eq.name, eq
    return None


def is_hydroxyurea(drug: Coded, protocol: Protocol) -> bool:
    return drug_matches(drug, protocol.wbc.cytoreduction.hydroxyurea, protocol)

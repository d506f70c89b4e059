"""Recognising drugs by give code: RxNorm and NDC codes in those systems, else text."""

from __future__ import annotations

import re
from functools import lru_cache

from .model import Coded
from .protocol import DrugMatch, Premedication, Protocol

_DIGITS = re.compile(r"\D")


@lru_cache(maxsize=1024)
def ndc_forms(code: str) -> frozenset[str]:
    """The 11-digit (5-4-2) forms an NDC may stand for, in any hyphenation."""
    code = code.strip()
    parts = code.split("-")
    if len(parts) == 3 and all(p.isdigit() for p in parts):
        return frozenset({parts[0].zfill(5) + parts[1].zfill(4) + parts[2].zfill(2)})
    digits = _DIGITS.sub("", code)
    if len(digits) == 11:
        return frozenset({digits})
    if len(digits) == 10:  # unhyphenated 10-digit: 4-4-2, 5-3-2 or 5-4-1
        return frozenset({"0" + digits, digits[:5] + "0" + digits[5:], digits[:9] + "0" + digits[9:]})
    return frozenset()


# Upper-cased alias sets, cached by value (a protocol edited in place still gets fresh sets):
# rebuilding them on every call was a hot spot of the rules (BENCHMARKS.md).
@lru_cache(maxsize=512)
def _upper_set(values: tuple[str, ...]) -> frozenset[str]:
    return frozenset(v.upper() for v in values)


@lru_cache(maxsize=512)
def _ndc_set(ndcs: tuple[str, ...]) -> frozenset[str]:
    return frozenset().union(*(ndc_forms(n) for n in ndcs))


@lru_cache(maxsize=512)
def _lower_list(values: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(v.lower() for v in values)


@lru_cache(maxsize=256)
def _match_for(rxnorm: tuple[str, ...], text_contains: tuple[str, ...]) -> DrugMatch:
    """A premedication's DrugMatch, built once per distinct code/text lists (drug_matches never changes it)."""
    return DrugMatch(rxnorm=list(rxnorm), text_contains=list(text_contains))


def _system_is(system: str, aliases: list[str]) -> bool:
    return system.strip().upper() in _upper_set(tuple(aliases))


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
            if match.ndc and ndc_forms(code) & _ndc_set(tuple(match.ndc)):
                return True
        if match.local_codes and code.upper() in _upper_set(tuple(match.local_codes)):
            return True
    text = f"{drug.text} {drug.more_text}".lower()
    if not drug.text and not drug.more_text and not _system_is(drug.system, systems.rxnorm + systems.ndc):
        text = code.lower()  # a bare name sent in the code component
    return any(t in text for t in _lower_list(tuple(match.text_contains)))


def is_protocol_drug(drug: Coded, protocol: Protocol) -> bool:
    return drug_matches(drug, protocol.drug, protocol, empty_system_counts=True)


def premedication_for(drug: Coded, protocol: Protocol) -> tuple[Premedication, str, object | None] | None:
    """(premedication, name of the drug ordered, equivalent or None) when `drug` is a premed drug."""
    for premed in protocol.premedication.required:
        if drug_matches(drug, _match_for(tuple(premed.rxnorm), tuple(premed.text_contains)), protocol):
            return premed, premed.name, None
        for eq in premed.equivalents:
            if drug_matches(drug, _match_for(tuple(eq.rxnorm), tuple(eq.text_contains)), protocol):
                return premed, eq.name, eq
    return None


def is_hydroxyurea(drug: Coded, protocol: Protocol) -> bool:
    return drug_matches(drug, protocol.wbc.cytoreduction.hydroxyurea, protocol)

"""The rule catalogue documents itself: docs/rules.md is generated from the rule modules and kept current."""

from __future__ import annotations

from tests.paths import ROOT
from validator import load_protocol
from validator.rules import DOSE_RULES
from workers.cli.protocol import rules_markdown

DOCS = ROOT / "docs" / "rules.md"


def test_docs_rules_md_is_current():
    assert DOCS.read_text() == rules_markdown(load_protocol()), "regenerate: rxgate explain --markdown > docs/rules.md"


def test_every_rule_has_examples_and_parameters():
    for rule in DOSE_RULES:
        assert rule.id.startswith("go.")
        assert ("Refused" in rule.doc or "Flagged" in rule.doc) and "Accepted" in rule.doc, rule.id
        assert rule.parameters, rule.id
        protocol = load_protocol()
        for name in rule.parameters:  # every declared parameter exists in the protocol schema
            value = protocol
            for part in name.split("."):
                assert hasattr(value, part), (rule.id, name)
                value = getattr(value, part)

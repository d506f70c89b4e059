"""The repository's own specification stays honest: docs/protocol.md and docs/interfaces.md against the code.

- every rule id of the catalogue, and every rule id the code can put in a finding, is in docs/protocol.md
  (and in the catalogue);
- the parameter tables of docs/protocol.md show the values of both bundled protocol files;
- every RXGATE_* setting is in the README settings table or docs/interfaces.md;
- every docs/<file>.md the code cites exists, and so does every section (`§N`, "Title") it cites;
- the command table of docs/interfaces.md says which commands this build has;
- nothing cites the specification files that lived outside the repository.
"""

from __future__ import annotations

import ast
import re
from decimal import Decimal
from pathlib import Path

import pytest
from pydantic import BaseModel

from tests.paths import ROOT
from validator import load_protocol
from validator.rules import DOSE_RULES
from validator.rules.messages import MESSAGE_RULES
from workers.cli import build_parser
from workers.settings import Settings

PROTOCOL_MD = ROOT / "docs" / "protocol.md"
INTERFACES_MD = ROOT / "docs" / "interfaces.md"
SEED, LABEL = "go-rr-9mg-d1-d14", "go-rr-label-3mg-d1-d4-d7"
CODE_DIRS = ("validator", "workers", "tests", "bench", "fuzz", "protocols")
# Dotted names in the code that look like rule ids but are not: the Celery queue and task, a file name.
NOT_RULE_IDS = {"rxgate.orders", "rxgate.validate", "rxgate.aof"}
RULE_ID = re.compile(r"^(go|hl7|rxgate|service)\.[a-z][a-z0-9_]*$")


def _code_files() -> list[Path]:
    files: list[Path] = []
    for folder in CODE_DIRS:
        files += [p for p in (ROOT / folder).rglob("*") if p.suffix in (".py", ".yaml") and "__pycache__" not in p.parts]
    return sorted(files)


def _headings(path: Path) -> list[str]:
    """Heading titles with backticks removed; a title `A — B` also counts as `A`."""
    titles: list[str] = []
    for line in path.read_text().splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().replace("`", "")
            titles += [title, title.split(" — ")[0]]
    return titles


def _catalogue_ids() -> set[str]:
    ids = {rule.id for rule in DOSE_RULES}
    for rule in MESSAGE_RULES:
        ids |= set(rule.ids)
    return ids


def _emitted_ids() -> dict[str, str]:
    """Rule-id-shaped string constants of the product code (logger names excluded) -> where one was seen."""
    found: dict[str, str] = {}
    for folder in ("validator", "workers"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            tree = ast.parse(path.read_text(), str(path))
            loggers = {
                id(arg) for node in ast.walk(tree) if isinstance(node, ast.Call)
                and getattr(node.func, "attr", getattr(node.func, "id", "")) == "getLogger" for arg in node.args
            }
            for node in ast.walk(tree):
                if (isinstance(node, ast.Constant) and isinstance(node.value, str) and RULE_ID.match(node.value)
                        and id(node) not in loggers and node.value not in NOT_RULE_IDS):
                    found.setdefault(node.value, f"{path.relative_to(ROOT)}:{node.lineno}")
    return found


def test_every_catalogue_rule_is_in_protocol_md():
    text = PROTOCOL_MD.read_text()
    missing = sorted(rid for rid in _catalogue_ids() if f"`{rid}`" not in text)
    assert not missing, f"rule ids of the catalogue not described in docs/protocol.md: {missing}"


def test_every_rule_id_the_code_emits_is_documented_and_catalogued():
    emitted = _emitted_ids()
    assert {"go.dose", "hl7.version", "rxgate.internal_error"} <= set(emitted)  # the scan finds rule ids at all
    text = PROTOCOL_MD.read_text()
    undocumented = {rid: where for rid, where in emitted.items() if f"`{rid}`" not in text}
    assert not undocumented, f"rule ids in the code but not in docs/protocol.md: {undocumented}"
    uncatalogued = {rid: where for rid, where in emitted.items() if rid not in _catalogue_ids()}
    assert not uncatalogued, f"rule ids in the code but not in the catalogue (rxgate explain): {uncatalogued}"


# --- parameter tables ------------------------------------------------------------------------------------

RULE_SECTIONS = ("drug", "code_systems", "eligibility", "dose", "route", "infusion", "schedule", "premedication",
                 "cd33", "wbc", "liver", "hsct", "observations")


def _shown(value) -> str:
    """A protocol value as the tables of docs/protocol.md write it."""
    if value is None:
        return "not set"
    if isinstance(value, list):
        return ", ".join(str(v) for v in value) if value else "none"
    return str(value)


def _scalar_leaves(model: BaseModel, prefix: str):
    """(dotted name, value) of every number, text, unset value or list of them under `model`."""
    for name in type(model).model_fields:
        value, dotted = getattr(model, name), f"{prefix}.{name}"
        if isinstance(value, BaseModel):
            yield from _scalar_leaves(value, dotted)
        elif value is None or isinstance(value, str | int | Decimal):
            yield dotted, value
        elif isinstance(value, list) and all(isinstance(v, str | int | Decimal) for v in value):
            yield dotted, value


def _table_rows(text: str) -> dict[str, list[str]]:
    """First cell -> all cells, for every Markdown table row."""
    rows: dict[str, list[str]] = {}
    for line in text.splitlines():
        if line.startswith("|") and not line.startswith("|---"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            rows.setdefault(cells[0], cells)
    return rows


def test_parameter_tables_show_the_values_of_both_protocol_files():
    seed, label = load_protocol(SEED), load_protocol(LABEL)
    rows = _table_rows(PROTOCOL_MD.read_text())
    wrong: list[str] = []
    checked = 0
    for section in RULE_SECTIONS:
        labelled = dict(_scalar_leaves(getattr(label, section), section))
        for name, value in _scalar_leaves(getattr(seed, section), section):
            row = rows.get(f"`{name}`")
            expected = [_shown(value), _shown(labelled[name])]
            checked += 1
            if row is None or row[1:3] != expected:
                wrong.append(f"{name}: expected | {' | '.join(expected)} |, found {row[1:3] if row else 'no row'}")
    assert checked > 50
    assert not wrong, "docs/protocol.md parameter tables differ from protocols/*.yaml:\n" + "\n".join(wrong)


def test_premedication_and_liver_tables_match_the_protocol_files():
    rows = _table_rows(PROTOCOL_MD.read_text())
    for protocol in (load_protocol(SEED), load_protocol(LABEL)):
        for premed in protocol.premedication.required:
            row = rows.get(premed.name)
            assert row is not None, f"no row for premedication {premed.name}"
            line = " | ".join(row)
            assert ", ".join(premed.rxnorm) in row[1], premed.name
            assert ", ".join(premed.routes) == row[5], premed.name
            assert f"{premed.window.min_minutes_before}–{premed.window.max_minutes_before} min" in row[6], premed.name
            for eq in premed.equivalents:
                assert f"{eq.name} × {eq.potency_ratio}" in line, (premed.name, eq.name)
        for test in protocol.liver.tests:
            row = rows.get(test.name)
            assert row is not None, f"no row for liver test {test.name}"
            assert row[1] == ", ".join(test.match.codes) and row[3] == f"{test.max_uln_multiple} × ULN", test.name


# --- settings ----------------------------------------------------------------------------------------------


def _readme_settings_table() -> str:
    readme = (ROOT / "README.md").read_text()
    start = readme.index("## Configuration")
    end = readme.find("\n## ", start + 1)
    return readme[start:end if end > 0 else None]


def test_every_setting_is_documented():
    documented = _readme_settings_table() + INTERFACES_MD.read_text()
    missing = [
        var for var in (f"RXGATE_{name.upper()}" for name in Settings.model_fields)
        if not re.search(rf"`{var}`", documented)
    ]
    assert not missing, f"settings in workers/settings.py missing from the README table and docs/interfaces.md: {missing}"


# --- citations ---------------------------------------------------------------------------------------------

DOC_CITATION = re.compile(r"\bdocs/([a-z0-9_-]+)\.md")
# `docs/protocol.md, "Title", "Other title"` or `docs/protocol.md, Title)` (a bare title ends at ) : ; , or ")
PROTOCOL_SECTIONS = re.compile(r'docs/protocol\.md,\s*(?:((?:"[^"]+"(?:,\s*)?)+)|([^"):;,]+))')
INTERFACES_SECTIONS = re.compile(r"docs/interfaces\.md\s*§\s*(\d+)")


def _citing_files() -> list[Path]:
    return _code_files() + sorted(ROOT.glob("*.md")) + sorted((ROOT / "docs").glob("*.md"))


def test_every_cited_doc_exists():
    missing = {
        f"docs/{name}.md": str(path.relative_to(ROOT))
        for path in _citing_files() for name in DOC_CITATION.findall(path.read_text())
        if not (ROOT / "docs" / f"{name}.md").exists()
    }
    assert not missing, f"cited but missing: {missing}"


def test_every_cited_section_exists():
    protocol_titles = {t.lower() for t in _headings(PROTOCOL_MD)}
    interface_sections = {m.group(1) for t in _headings(INTERFACES_MD) if (m := re.match(r"§(\d+)\b", t))}
    bad: list[str] = []
    cited = 0
    for path in _code_files():
        if path.name == Path(__file__).name:
            continue  # its comments show the citation forms
        text = re.sub(r"\s+", " ", path.read_text())  # a title quoted across a line break
        where = str(path.relative_to(ROOT))
        for match in PROTOCOL_SECTIONS.finditer(text):
            quoted, bare = match.groups()
            for title in re.findall(r'"([^"]+)"', quoted) if quoted else [bare.strip()]:
                cited += 1
                if title.lower() not in protocol_titles:
                    bad.append(f"{where}: docs/protocol.md has no section {title!r}")
        for number in INTERFACES_SECTIONS.findall(text):
            cited += 1
            if number not in interface_sections:
                bad.append(f"{where}: docs/interfaces.md has no §{number}")
    assert cited > 20  # the scan finds the code's citations at all
    assert not bad, "\n".join(bad)


def test_interfaces_md_keeps_its_section_numbers():
    sections = list(dict.fromkeys(m.group(1) for t in _headings(INTERFACES_MD) if (m := re.match(r"§(\d+)\b", t))))
    assert sections[:5] == ["1", "2", "3", "4", "5"]


# --- the command table -------------------------------------------------------------------------------------


def _commands_in_build() -> dict[str, set[str]]:
    """Top-level command -> its second-level words (sub-commands or positional choices)."""
    parser = build_parser()
    top = next(a for a in parser._actions if getattr(a, "choices", None) and isinstance(a.choices, dict))
    commands: dict[str, set[str]] = {}
    for name, sub in top.choices.items():
        words: set[str] = set()
        for action in sub._actions:
            if action.option_strings or not action.choices:
                continue
            words |= set(action.choices)
        commands[name] = words
    return commands


def _command_table() -> dict[str, str]:
    text = INTERFACES_MD.read_text()
    table = text[text.index("## Commands"):text.index("## §1")]
    rows = {}
    for cells in _table_rows(table).values():
        m = re.fullmatch(r"`rxgate ([a-z]+(?: [a-z]+)?)`", cells[0])
        if m:
            rows[m.group(1)] = cells[1]
    return rows


def test_command_table_says_which_commands_exist():
    build = _commands_in_build()
    table = _command_table()
    rowless = sorted(c for c in build if not any(row.split(" ")[0] == c for row in table))
    assert not rowless, f"commands without a row in docs/interfaces.md: {rowless}"
    wrong = []
    for command, today in table.items():
        first, _, second = command.partition(" ")
        exists = first in build and (not second or second in build[first])
        if today != ("yes" if exists else "planned"):
            wrong.append(f"rxgate {command}: table says {today!r}, the build {'has' if exists else 'lacks'} it")
    assert not wrong, "\n".join(wrong)


# --- nothing outside the repository ------------------------------------------------------------------------

OUTSIDE_SPEC = re.compile(r"contract\.md|go-protocol\.md|label-notes|hl7-notes|queue-notes|shared/spec|shared/seeds"
                          r"|\bcontract §")


@pytest.mark.parametrize("path", [p for p in _citing_files() if p.name != Path(__file__).name],
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_no_citation_of_specification_files_outside_the_repository(path):
    hits = [line.strip() for line in path.read_text().splitlines() if OUTSIDE_SPEC.search(line)]
    assert not hits, f"{path.relative_to(ROOT)} cites the shared spec; cite docs/protocol.md or docs/interfaces.md: {hits}"


def test_every_alert_has_a_runbook_entry():
    """README "Runbook": what to do for each alert docs/metrics.md suggests."""
    alerts = re.findall(r"- alert: (\w+)", (ROOT / "docs" / "metrics.md").read_text())
    readme = (ROOT / "README.md").read_text()
    runbook = readme.split("## Runbook", 1)[1].split("\n## ", 1)[0]
    assert alerts and [a for a in alerts if f"### `{a}`" not in runbook] == []

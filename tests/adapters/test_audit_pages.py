"""The auditor page (workers/http/pages.py): which template answers, the chart, escaping, messages read with er7."""

from __future__ import annotations

import fnmatch
import re
import tomllib
from datetime import UTC, datetime

import pytest
from fastapi.testclient import TestClient

from tests.builders import AUDIT_AUTH as AUTH
from tests.builders import AUDIT_TOKEN_SHA as TOKEN_SHA
from tests.builders import NY, adult_order_set, fill_audit_store, finding, go_order, login
from tests.builders import audit_record as record
from tests.paths import ROOT
from validator import load_protocol, process_text
from workers.http.app import create_app
from workers.http.chart import outcome_chart
from workers.http.pages import STATIC_DIR, TEMPLATES_DIR, page_templates
from workers.store import open_sql_store

WHEN = datetime(2026, 12, 1, 8, 30, tzinfo=UTC)
HOSTILE = "<script>alert(1)</script>"
# field, component, repetition, escape, sub-component: none of them occurs in the builders' text
CUSTOM = str.maketrans("|^~\\&", "!$`?@")


@pytest.fixture
def client(sqlite_url):
    fill_audit_store(sqlite_url)
    app = create_app(sqlite_url, TOKEN_SHA, tz=NY)
    with TestClient(app, follow_redirects=False) as c:
        yield c
    app.state.store.dispose()


def processed_client(url: str, *texts: str) -> TestClient:
    """An app over a log holding `texts` as the validator answered them (raw message, response, findings)."""
    store = open_sql_store(url, create=True)
    for text in texts:
        process_text(text, store, load_protocol(), tz=UTC, received_at=WHEN)
    store.dispose()
    return TestClient(create_app(url, TOKEN_SHA, tz=UTC))


def field_text(html: str, location: str) -> str:
    """The text shown for field `location` (`RXR-1`) on the detail page, marked or not."""
    m = re.search(rf'<(?:mark|span) [^>]*data-(?:location|field)="{re.escape(location)}"[^>]*>([^<]*)<', html)
    assert m, f"no field {location} on the page"
    return m.group(1)


def test_each_page_answers_with_its_template(client):
    cases = [
        (client.get("/login"), 200, "login.html"),
        (client.get("/ui"), 401, "login.html"),  # a stranger gets the form
        (client.get("/ui/messages/1"), 401, "login.html"),
        (login(client, "nope"), 401, "login.html"),
        (client.get("/ui", headers=AUTH), 200, "list.html"),
        (client.get("/ui", params={"since": "2026-02-30"}, headers=AUTH), 422, "list.html"),
        (client.get("/ui/messages/3", headers=AUTH), 200, "detail.html"),
        (client.get("/ui/messages/99", headers=AUTH), 404, "list.html"),
        (client.get("/ui/messages/x1", headers=AUTH), 404, "list.html"),
    ]
    for response, status, template in cases:
        assert (response.status_code, response.template.name) == (status, template), response.request.url
        assert response.headers["content-security-policy"] == "default-src 'self'"
        assert response.headers["cache-control"] == "no-store"
    assert "since must be a date" in cases[5][0].text
    assert "no audit record 99" in cases[7][0].text


def test_pages_link_the_stylesheet_that_is_served(client):
    page = client.get("/ui", headers=AUTH)
    assert '<link rel="stylesheet" href="/static/style.css">' in page.text and "<style" not in page.text
    css = client.get("/static/style.css")
    assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")
    assert css.text == (STATIC_DIR / "style.css").read_text() and "mark.sev-error" in css.text


def test_chart_draws_one_stacked_bar_per_day(client):
    svg = page_templates().get_template("chart.svg").render(chart=outcome_chart([
        {"date": "2026-12-01", "messages": 3, "outcomes": {"AA": 1, "AE": 2, "AR": 0}},
        {"date": "2026-12-02", "messages": 1, "outcomes": {"AA": 0, "AE": 0, "AR": 1}},
    ]))
    assert svg.startswith("<svg") and svg.endswith("</svg>")
    assert svg.count('class="bar-AE"') == 1 and svg.count('class="bar-AR"') == 1 and svg.count('class="bar-AA"') == 1
    heights = dict(re.findall(r'class="bar-(A[AER])" x="\d+" y="\d+" width="28" height="(\d+)"', svg))
    assert heights == {"AA": "40", "AE": "80", "AR": "40"}  # 120 px for the busiest day's 3 messages
    assert ">12-01<" in svg and ">12-02<" in svg and "<title>2026-12-01: 2 AE</title>" in svg
    empty = page_templates().get_template("chart.svg").render(chart=outcome_chart([]))
    assert 'id="no-chart"' in empty and "<svg" not in empty
    page = client.get("/ui", headers=AUTH).text
    assert page.count('<svg id="outcome-chart"') == 1 and page.count('class="bar-AR"') == 1  # C4, Dec 2


def test_chart_escapes_a_hostile_day_label():
    svg = page_templates().get_template("chart.svg").render(chart=outcome_chart([
        {"date": f"2026-{HOSTILE}", "messages": 1, "outcomes": {"AE": 1}}]))
    assert "<script>" not in svg
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in svg


def test_list_page_escapes_a_hostile_rule_id(sqlite_url):
    store = open_sql_store(sqlite_url, create=True)
    store.save(record("H1", datetime(2026, 12, 1, 9, 0, tzinfo=NY), "AE", [finding(HOSTILE)]))
    store.dispose()
    app = create_app(sqlite_url, TOKEN_SHA, tz=NY)
    with TestClient(app) as c:
        stats = c.get("/audit/stats", headers=AUTH).json()
        assert HOSTILE in stats["rules"]  # the control: the value does reach the page
        for path in ("/ui", "/ui/messages/1"):
            page = c.get(path, headers=AUTH)
            assert page.status_code == 200 and "<script>" not in page.text, path
            assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page.text, path
    app.state.store.dispose()


def test_custom_encoding_characters_give_the_right_field_numbers(sqlite_url):
    """MSH-1/MSH-2 `!$`?@`: every segment, not only MSH, is split at `!`, and the finding lands on RXR-1."""
    text = adult_order_set("B0002", go=go_order(route="PO^Oral^HL70162")).translate(CUSTOM)
    with processed_client(sqlite_url, text) as c:
        detail = c.get("/audit/messages/1", headers=AUTH).json()
        assert detail["outcome"] == "AE" and detail["findings"][0]["location"] == "RXR-1"  # the validator agrees
        html = c.get("/ui/messages/1", headers=AUTH).text
    assert field_text(html, "MSH-2") == "$`?@" and field_text(html, "MSH-3") == "PHARMSYS"
    assert field_text(html, "MSH-9") == "RDE$O11$RDE_O11" and field_text(html, "MSH-10") == "B0002"
    assert field_text(html, "RXR-1") == "PO$Oral$HL70162"
    assert re.search(r'<mark class="sev-error" data-location="RXR-1" title="go\.route: [^"]*Oral', html)
    assert field_text(html, "ORC-2") == "ORD1001"
    assert '<span class="seg-name">RXR</span>!<mark' in html  # shown with the message's own separator
    assert "|" not in html[html.index('id="segments"'):html.index('id="response"')].split("</pre>")[0]


def test_shared_custom_separator_sample_is_shown_field_by_field(shared_dir, sqlite_url):
    path = shared_dir / "samples/public/dev/23_rsp-sli-v25-custom-separators-hl7apy.hl7"
    text = path.read_bytes().decode("utf-8")
    with processed_client(sqlite_url, text) as c:
        page = c.get("/ui/messages/1", headers=AUTH)
    assert page.status_code == 200 and page.template.name == "detail.html"
    html = page.text
    assert field_text(html, "MSH-2") == "$r?@" and field_text(html, "MSH-3") == "LIP"
    assert field_text(html, "MSH-7") == "20111207121030" and field_text(html, "MSH-12") == "2.5"
    assert field_text(html, "MSH-10") == "430102"


def test_templates_and_css_are_package_data():
    """An installed (non-editable) rxgate needs the page's files: each is matched by package-data."""
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["workers.http"]
    package = TEMPLATES_DIR.parent
    files = [p.relative_to(package).as_posix() for d in (TEMPLATES_DIR, STATIC_DIR) for p in d.iterdir()]
    assert {"templates/base.html", "templates/login.html", "templates/list.html", "templates/detail.html",
            "templates/chart.svg", "static/style.css"} <= set(files)
    for name in files:
        assert any(fnmatch.fnmatch(name, pattern) for pattern in data), f"{name} is not in package-data"

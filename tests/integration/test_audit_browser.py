"""The auditor page in a real browser: Debian's chromium, headless, driven by Playwright (no download).

Skipped, with the reason, when /usr/bin/chromium or the playwright package is missing; `.ci/run`
installs chromium so it always runs there.
"""

from __future__ import annotations

import hashlib
import os
import re
import socket
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.builders import adult_order_set, go_order
from validator import load_protocol, process_text
from workers.http.app import create_app
from workers.store import open_sql_store

pytestmark = pytest.mark.integration

CHROMIUM = os.environ.get("RXGATE_CHROMIUM", "/usr/bin/chromium")
TOKEN = "browser-audit-token"
WHEN = datetime(2026, 12, 1, 8, 30, tzinfo=UTC)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def server(tmp_path):
    if not Path(CHROMIUM).exists():
        pytest.skip(f"chromium not found at {CHROMIUM} (apt-get install -y chromium)")
    pytest.importorskip("playwright.sync_api", reason="playwright (Python package) is not installed")
    import uvicorn

    url = f"sqlite:///{tmp_path / 'audit.db'}"
    store = open_sql_store(url, create=True)
    protocol = load_protocol()
    for i, text in enumerate([
        adult_order_set("B0001"),
        adult_order_set("B0002", go=go_order(route="PO^Oral^HL70162"), mrn="MRN702"),  # not ORD1001 again
        adult_order_set("B0003", go=go_order(dose="30"), mrn="MRN777"),
    ]):
        process_text(text, store, protocol, tz=UTC, received_at=WHEN + timedelta(minutes=i))
    store.dispose()
    app = create_app(url, hashlib.sha256(TOKEN.encode()).hexdigest(), tz=UTC)
    port = _free_port()
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not srv.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert srv.started, "uvicorn did not start"
    yield f"http://127.0.0.1:{port}"
    srv.should_exit = True
    thread.join(timeout=10)
    app.state.store.dispose()


@pytest.fixture
def page(server):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--headless", "--no-sandbox", "--disable-gpu"])
        try:
            context = browser.new_context()
            p = context.new_page()
            p.set_default_timeout(15_000)
            yield p
        finally:
            browser.close()


def test_login_filter_detail_and_logout(server, page):
    from playwright.sync_api import expect

    # closed until logged in
    response = page.goto(f"{server}/ui")
    assert response.status == 401
    expect(page.locator("h1")).to_have_text("Log in")
    page.fill("#token", "not-the-token")
    page.click("#login")
    expect(page.get_by_role("alert")).to_contain_text("Wrong token")

    page.fill("#token", TOKEN)
    page.click("#login")
    page.wait_for_url(f"{server}/ui")
    expect(page.locator("#total")).to_have_text("3 messages")
    expect(page.locator("#results tbody tr")).to_have_count(3)
    expect(page.locator("#outcome-chart rect.bar-AE")).to_have_count(1)  # one day, one AE segment
    expect(page.locator("#top-rules")).to_contain_text("go.orderset")

    # filter form: refused messages only
    page.select_option("select[name=outcome]", "AE")
    page.click("#apply")
    expect(page.locator("#results tbody tr")).to_have_count(2)
    expect(page.locator("#results")).to_contain_text("B0002")
    expect(page.locator("#results")).not_to_contain_text("B0001")
    page.fill("input[name=patient]", "MRN777")
    page.click("#apply")
    expect(page.locator("#results tbody tr")).to_have_count(1)
    expect(page.locator("#results")).to_contain_text("go.dose")

    # a bad filter is explained, not a crash
    page.goto(f"{server}/ui?since=2026-02-30")
    expect(page.get_by_role("alert")).to_contain_text("since must be a date")

    # detail: findings highlighted on the segments they refer to, and the response
    page.goto(f"{server}/ui?control_id=B0002")
    page.click("#results tbody tr a")
    expect(page.locator("h1")).to_contain_text("Record 2")
    expect(page.locator("#findings")).to_contain_text("go.route")
    mark = page.locator('#segments mark[data-location="RXR-1"]')
    expect(mark).to_have_count(1)
    expect(mark).to_have_class("sev-error")
    expect(mark).to_have_attribute("title", re.compile(r"^go\.route: .*Oral"))
    expect(page.locator('#segments div[data-segment="RXR"][data-occurrence="1"]')).to_have_class(
        "segment seg-flagged")
    expect(page.locator("#response")).to_contain_text("MSA|AE|B0002")
    if os.environ.get("RXGATE_SCREENSHOTS"):
        page.screenshot(path=os.path.join(os.environ["RXGATE_SCREENSHOTS"], "detail.png"), full_page=True)
        page.goto(f"{server}/ui")
        page.screenshot(path=os.path.join(os.environ["RXGATE_SCREENSHOTS"], "list.png"), full_page=True)
        page.goto(f"{server}/ui/messages/2")

    # logout closes the page again
    page.click("#logout")
    page.wait_for_url(f"{server}/login")
    assert page.goto(f"{server}/ui").status == 401
    assert page.goto(f"{server}/audit/messages").status == 401

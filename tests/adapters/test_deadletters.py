"""Dead letters as an operator handles them (docs/interfaces.md §5 "Operators"): list, resend, drop, on fakeredis."""

from __future__ import annotations

import json
import secrets
from datetime import UTC, datetime

import fakeredis
import pytest

from tests.builders import adult_order_set
from tests.fakes import FakeClock, FlakyStore, OperationalError
from validator import InMemoryStore
from workers.bootstrap import bootstrap
from workers.queue.bridge import Bridge, Streams, ensure_group
from workers.queue.deadletters import DROP_RULE, DeadLetters
from workers.settings import Settings


def settings(**kw) -> Settings:
    base = dict(stream_prefix="d", retry_budget=0.05, retry_initial_delay=0.01, retry_max_delay=0.02,
                error_retries=0, claim_idle=0.05, stream_batch=10, stream_block_ms=10, outbound_maxlen=1000)
    base.update(kw)
    return Settings(**base)


@pytest.fixture
def client():
    return fakeredis.FakeRedis()


def fields_of(client, name):
    return [(i.decode(), {k.decode(): v.decode() for k, v in f.items()}) for i, f in client.xrange(name)]


def bridge_with(client, store) -> Bridge:
    s = settings()
    bridge = Bridge(bootstrap(s, store=store), client, s, consumer="c1", clock=FakeClock())
    ensure_group(client, bridge.streams)
    return bridge


def dead_lettered(client, *control_ids, extra_entries=()):
    """Entries dead-lettered by an outage (the store refuses every write), then the outage ends."""
    store = FlakyStore(10_000, OperationalError("connection refused"))
    bridge = bridge_with(client, store)
    for cid in control_ids:
        client.xadd("d:inbound", {"hl7": adult_order_set(cid, mrn=f"M{cid}")})
    for fields in extra_entries:
        client.xadd("d:inbound", fields)
    bridge.step()
    store.failures = 0
    return bridge, store


def letters(client, store=None, send_task=None) -> DeadLetters:
    return DeadLetters(client, Streams.from_settings(settings()), Settings().tz, send_task=send_task, store=store)


def test_list_gives_id_reason_time_and_control_id_never_the_message(client):
    dead_lettered(client, "DL001", extra_entries=[{"message": "MSH|x"}])
    summaries = [e.summary(Settings().tz) for e in letters(client).entries()]
    assert [s["control_id"] for s in summaries] == ["DL001", None]
    assert "OperationalError" in summaries[0]["reason"] and summaries[0]["resendable"] is True
    assert summaries[1]["resendable"] is False and "no hl7 field" in summaries[1]["note"]
    assert all(s["id"] and s["time"] for s in summaries)
    assert "MDL001" not in json.dumps(summaries)  # no message text, no patient id


def test_resend_is_judged_again_and_published_marked_replay_of(client):
    bridge, store = dead_lettered(client, "DL101")
    [(dead_id, dead)] = fields_of(client, "d:deadletter")
    handled = letters(client).resend([dead_id])
    assert handled.done == [dead_id] and handled.ok
    assert client.xlen("d:deadletter") == 0  # moved, in one MULTI/EXEC with the XADD
    before = client.xlen("d:outbound")
    bridge.step()
    out = fields_of(client, "d:outbound")[before:]
    assert len(out) == 1
    assert out[0][1]["replay_of"] == dead_id and out[0][1]["control_id"] == "DL101"
    assert out[0][1]["ack_code"] in {"AA", "AE"}
    assert len(store.audit) == 1
    # judged at its original received time (the dead letter's inbound id), not at the resend
    assert int(store.audit[0].received_at.timestamp() * 1000) == int(dead["inbound_id"].split("-")[0])


def test_resend_of_an_entry_whose_key_was_stored_meanwhile_publishes_nothing(client):
    bridge, store = dead_lettered(client, "DL201")
    [(dead_id, _)] = fields_of(client, "d:deadletter")
    client.xadd("d:inbound", {"hl7": adult_order_set("DL201", mrn="MDL201")})  # the sender resent it by hand
    bridge.step()
    published = client.xlen("d:outbound")
    letters(client).resend(None)  # --all
    bridge.step()
    assert client.xlen("d:outbound") == published  # nothing published: the sender has its answer
    assert client.xlen("d:inbound") == 0 and client.xpending("d:inbound", "rxgate")["pending"] == 0
    assert len(store.audit) == 1  # counted once


def test_entry_without_hl7_cannot_be_resent_only_dropped(client):
    _bridge, store = dead_lettered(client, extra_entries=[{"message": "MSH|x"}])
    [(dead_id, _)] = fields_of(client, "d:deadletter")
    handled = letters(client).resend([dead_id])
    assert handled.done == [] and "cannot be processed: no hl7 field" in handled.refused[dead_id]
    assert client.xlen("d:deadletter") == 1 and client.xlen("d:inbound") == 0
    handled = letters(client, store=store).drop([dead_id], reason="test feed misconfigured", by="opal")
    assert handled.done == [dead_id] and client.xlen("d:deadletter") == 0
    [record] = store.audit
    assert record.key is None and record.ack_code == "AR"
    drop = next(f for f in record.result["findings"] if f["rule"] == DROP_RULE)
    assert "opal" in drop["message"] and "test feed misconfigured" in drop["message"] and dead_id in drop["message"]


def test_drop_is_audited_then_removed_and_not_stored_under_the_key(client):
    bridge, store = dead_lettered(client, "DL301", "DL302")
    ids = [i for i, _ in fields_of(client, "d:deadletter")]
    handled = letters(client, store=store).drop([ids[0], "1-1"], reason="duplicate of a paper order", by="opal")
    assert handled.done == [ids[0]] and handled.refused == {"1-1": "no such dead letter"}
    assert [i for i, _ in fields_of(client, "d:deadletter")] == ids[1:]
    [record] = store.audit
    assert record.control_id == "DL301" and record.key is None and store.answers == {}
    # the message can still be sent afresh
    client.xadd("d:inbound", {"hl7": adult_order_set("DL301", mrn="MDL301")})
    bridge.step()
    assert fields_of(client, "d:outbound")[-1][1]["ack_code"] in {"AA", "AE"}


def test_drop_needs_a_reason(client):
    with pytest.raises(ValueError, match="reason"):
        letters(client, store=InMemoryStore()).drop(["1-1"], reason="  ")


def test_celery_dead_letter_goes_back_as_a_task(client):
    client.xadd("d:deadletter", {"hl7": adult_order_set("DL401"), "reason": "x", "source": "celery",
                                 "task_id": "t1", "attempts": "3"})
    sent = []
    [letter] = letters(client).entries()
    assert letter.summary(Settings().tz)["attempts"] == 3
    handled = letters(client, send_task=lambda text, replay_of: sent.append((text.split("|")[9], replay_of))).resend(
        None)
    assert sent == [("DL401", letter.id)] and handled.done == [letter.id]
    assert client.xlen("d:deadletter") == 0 and client.xlen("d:inbound") == 0
    # without a Celery app to send to, it stays
    client.xadd("d:deadletter", {"hl7": adult_order_set("DL402"), "reason": "x", "source": "celery"})
    handled = letters(client).resend(None)
    assert not handled.ok and client.xlen("d:deadletter") == 1


# --- the command (workers/cli/deadletter.py), on fakeredis and a SQLite audit log ------------------------------


@pytest.fixture
def cli(client, tmp_path, monkeypatch):
    """`rxgate deadletter ...` in-process: the stream broker is fakeredis, the audit log a temporary SQLite file."""
    from workers.cli import main
    from workers.store import open_sql_store

    monkeypatch.setenv("RXGATE_STREAM_PREFIX", "d")
    db = f"sqlite:///{tmp_path / 'a.db'}"
    open_sql_store(db, create=True).dispose()
    monkeypatch.setenv("RXGATE_DATABASE_URL", db)
    monkeypatch.setattr("workers.queue.sentinel.broker_client", lambda settings, **kw: client)

    def run(*argv):
        return main(["deadletter", *argv])

    run.db = db
    return run


def test_cli_list_resend_drop(cli, client, capsys):
    dead_lettered(client, "DL501", extra_entries=[{"message": "MSH|x"}])
    assert cli("list", "--json") == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["control_id"] for r in rows] == ["DL501", None]
    good, bad = rows[0]["id"], rows[1]["id"]
    assert cli("resend", good, bad) == 2  # named, and nothing is done
    assert "cannot be processed: no hl7 field" in capsys.readouterr().err
    assert client.xlen("d:deadletter") == 2
    assert cli("drop", "1-1", "--reason", "x") == 2
    assert "1-1: no such dead letter" in capsys.readouterr().err
    assert cli("resend", good) == 0
    assert capsys.readouterr().out == f"resent {good}\n"
    assert fields_of(client, "d:inbound")[-1][1]["replay_of"] == good
    assert cli("drop", bad, "--reason", "feed misconfigured") == 0
    assert capsys.readouterr().out == f"dropped {bad}\n"
    assert cli("list", "--json") == 0
    assert capsys.readouterr().out == ""  # nothing when empty
    from workers.store import open_sql_store, parse_filter, query_messages

    store = open_sql_store(cli.db, create=False)
    total, rows = query_messages(store, parse_filter(rule=DROP_RULE), Settings().tz)
    store.dispose()
    assert total == 1 and rows[0]["outcome"] == "AR"


def test_cli_usage_errors_exit_2(cli, capsys):
    assert cli("resend") == 2
    assert cli("resend", "1-1", "--all") == 2
    assert cli("drop", "1-1", "--reason", " ") == 2
    assert "--reason" in capsys.readouterr().err


# --- the same over HTTP (workers/http/operators.py) -------------------------------------------------------------


@pytest.fixture
def api(client, tmp_path):

    from fastapi.testclient import TestClient

    from tests.builders import AUDIT_TOKEN_SHA
    from workers.http.app import create_app
    from workers.store import open_sql_store
    from workers.store.access import AccessLedger

    db = f"sqlite:///{tmp_path / 'h.db'}"
    store = open_sql_store(db, create=True)
    AccessLedger(store).add_user("olga", ["operator"], OPERATOR_TOKEN, datetime.now(UTC))
    store.dispose()
    app = create_app(db, AUDIT_TOKEN_SHA, tz=Settings().tz,
                     dead_letters=lambda: letters(client, send_task=lambda *a: None))
    with TestClient(app) as c:
        yield c
    app.state.store.dispose()


OPERATOR_TOKEN = secrets.token_urlsafe(32)


def test_http_operator_routes_list_resend_drop(api, client):
    from tests.builders import AUDIT_AUTH as AUDITOR

    AUDIT_AUTH = {"Authorization": f"Bearer {OPERATOR_TOKEN}"}  # noqa: N806 - the operator's credential
    dead_lettered(client, "DL601", extra_entries=[{"message": "MSH|x"}])
    assert api.get("/operator/deadletters").status_code == 401  # guarded
    assert api.get("/operator/deadletters", headers=AUDITOR).status_code == 403  # the operator role only
    r = api.get("/operator/deadletters", headers=AUDIT_AUTH)
    entries = r.json()["entries"]
    assert [e["control_id"] for e in entries] == ["DL601", None]
    assert "MSH|" not in r.text and "MDL601" not in r.text  # never message text
    good, bad = entries[0]["id"], entries[1]["id"]
    r = api.post("/operator/deadletters/resend", json={"ids": [good, bad]}, headers=AUDIT_AUTH)
    assert r.json()["done"] == [good] and "no hl7 field" in r.json()["refused"][bad]
    assert api.post("/operator/deadletters/resend", json={}, headers=AUDIT_AUTH).status_code == 422
    assert api.post("/operator/deadletters/drop", json={"ids": [bad], "reason": " "},
                    headers=AUDIT_AUTH).status_code == 422
    r = api.post("/operator/deadletters/drop", json={"ids": [bad], "reason": "bad feed"}, headers=AUDIT_AUTH)
    assert r.json() == {"done": [bad], "refused": {}}
    assert api.get("/operator/deadletters", headers=AUDIT_AUTH).json() == {"entries": []}
    r = api.get("/audit/messages", params={"rule": DROP_RULE}, headers=AUDITOR)
    assert r.json()["total"] == 1
    detail = api.get(f"/audit/messages/{r.json()['items'][0]['id']}", headers=AUDITOR).json()
    assert any("olga" in f["message"] for f in detail["findings"] if f["rule"] == DROP_RULE)  # who dropped it


def test_an_id_redis_cannot_read_is_refused_not_an_error(client):
    handled = letters(client).resend(["0-20000000000000000000"])
    assert handled.refused == {"0-20000000000000000000": "not a dead-letter id"}


def test_cli_broker_down_exits_1(tmp_path, monkeypatch, capsys):
    from workers.cli import main

    monkeypatch.setenv("RXGATE_BROKER_URL", "redis://127.0.0.1:1/0")
    assert main(["deadletter", "list"]) == 1
    assert "does not answer" in capsys.readouterr().err


def test_a_task_rabbitmq_dead_lettered_becomes_a_resendable_celery_dead_letter(client):
    from workers.queue.amqp_deadletters import dead_letter_fields

    text = adult_order_set("DL701")
    fields = dead_letter_fields([[text], {}, {}], {"id": "task-1"}, limit=10)
    assert fields["hl7"] == text and fields["source"] == "celery" and "delivered more than 10 times" in fields["reason"]
    client.xadd("d:deadletter", fields)
    sent = []
    handled = letters(client, send_task=lambda t, replay_of: sent.append(t)).resend(None)
    assert handled.ok and sent == [text]
    assert "hl7" not in dead_letter_fields("not a task body", {}, limit=10)  # kept, for an operator to drop

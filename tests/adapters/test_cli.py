"""`rxgate check` as docs/interfaces.md §1 describes it, run as a real process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.builders import adult_order_set, go_order
from tests.hl7check import check_response
from tests.paths import ROOT

RXGATE = [sys.executable, "-m", "workers.cli"]


def rxgate(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess:
    # run where the session fixture put the working directory (a tmp dir), never in the repository
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run(RXGATE + list(args), input=stdin, capture_output=True, env=env, timeout=60)


@pytest.fixture
def accepted(tmp_path) -> Path:
    path = tmp_path / "accepted.hl7"
    path.write_bytes(adult_order_set("C0001").encode())
    return path


@pytest.fixture
def refused(tmp_path) -> Path:
    path = tmp_path / "refused.hl7"
    path.write_bytes(adult_order_set("C0002", go=go_order(route="PO^Oral^HL70162")).encode())
    return path


def test_accepted_exits_0_with_json_line(accepted):
    proc = rxgate("check", "--json", str(accepted))
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.decode().splitlines()
    assert len(lines) == 1
    result = json.loads(lines[0])
    assert result["control_id"] == "C0001"
    assert result["message_type"] == "RDE^O11^RDE_O11"
    assert result["ack_code"] == "AA"
    assert result["orders"][0]["protocol_order"] is True
    assert result["orders"][0]["order_control"] == "OK"
    assert result["orders"][0]["placer_order_number"] == "ORD1001"
    assert result["orders"][0]["drug"] == "gemtuzumab ozogamicin"
    check_response(result["response"], "AA", "C0001")


def test_refused_exits_1_and_names_rule(refused):
    proc = rxgate("check", "--json", str(refused))
    assert proc.returncode == 1
    result = json.loads(proc.stdout)
    assert result["ack_code"] == "AE"
    go = result["orders"][0]
    assert go["order_control"] == "UA"
    assert {f["rule"] for f in go["findings"]} >= {"go.route"}
    assert any(f["rule"] == "go.route" and f["location"] == "RXR-1" for f in result["findings"])


def test_hl7_output_is_responses_separated_by_newline(accepted, refused):
    proc = rxgate("check", "--hl7", str(accepted), str(refused))
    assert proc.returncode == 1
    out = proc.stdout.decode()
    assert out.endswith("\n")
    responses = out.rstrip("\n").split("\n")
    assert len(responses) == 2
    check_response(responses[0] + ("" if responses[0].endswith("\r") else "\r"), "AA", "C0001")
    assert "MSA|AE|C0002" in responses[1]


def test_default_output_is_human_readable(refused):
    proc = rxgate("check", str(refused))
    text = proc.stdout.decode()
    assert "C0002" in text and "AE" in text and "go.route" in text and "ORD1001" in text


def test_several_messages_in_one_file_with_lf_and_mllp(tmp_path):
    a = adult_order_set("M1", mrn="MRN1").replace("\r", "\n")
    b = adult_order_set("M2", mrn="MRN2")
    path = tmp_path / "two.hl7"
    path.write_bytes(b"\xef\xbb\xbf\x0b" + a.encode() + b"\x1c\x0d" + b"\x0b" + b.encode() + b"\x1c\x0d")
    proc = rxgate("check", "--json", str(path))
    ids = [json.loads(line)["control_id"] for line in proc.stdout.decode().splitlines()]
    assert ids == ["M1", "M2"]
    assert proc.returncode == 0


def test_stdin(accepted):
    proc = rxgate("check", "--json", "-", stdin=accepted.read_bytes())
    assert proc.returncode == 0
    assert json.loads(proc.stdout)["control_id"] == "C0001"


def test_unreadable_path_exits_2_and_processes_nothing(accepted, tmp_path):
    proc = rxgate("check", "--json", str(accepted), str(tmp_path / "missing.hl7"))
    assert proc.returncode == 2
    assert proc.stdout == b""
    assert b"missing.hl7" in proc.stderr
    assert b"Traceback" not in proc.stderr


def test_whitespace_only_file_exits_2(tmp_path):
    path = tmp_path / "blank.hl7"
    path.write_bytes(b" \r\n\t\n")
    proc = rxgate("check", str(path))
    assert proc.returncode == 2
    assert b"blank.hl7" in proc.stderr


def test_bad_option_exits_2():
    proc = rxgate("check", "--frobnicate", "x")
    assert proc.returncode == 2
    assert b"Traceback" not in proc.stderr


def test_bad_protocol_exits_2(accepted, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("id: x\ndose: {mg_per_m2: nine}\n")
    proc = rxgate("check", "--protocol", str(bad), str(accepted))
    assert proc.returncode == 2
    assert b"bad.yaml" in proc.stderr


def test_garbage_before_msh_is_one_rejected_message(tmp_path):
    path = tmp_path / "junk.hl7"
    path.write_bytes(b"hello there\r" + adult_order_set("J1").encode())
    proc = rxgate("check", "--json", str(path))
    results = [json.loads(line) for line in proc.stdout.decode().splitlines()]
    assert results[0]["ack_code"] == "AR" and results[0]["control_id"] is None and results[0]["orders"] == []
    assert results[1]["control_id"] == "J1" and results[1]["ack_code"] == "AA"
    assert proc.returncode == 1


def test_file_without_msh_is_one_rejected_message(tmp_path):
    path = tmp_path / "nomsh.hl7"
    path.write_bytes(b"PID|1||X\rORC|NW|1\r")
    proc = rxgate("check", "--json", str(path))
    results = [json.loads(line) for line in proc.stdout.decode().splitlines()]
    assert len(results) == 1
    assert results[0]["ack_code"] == "AR" and results[0]["control_id"] is None
    check_response(results[0]["response"], "AR", None)
    assert proc.returncode == 1


def test_random_bytes_never_traceback(tmp_path):
    import random

    rng = random.Random(7)
    paths = []
    for i in range(20):
        path = tmp_path / f"r{i}.bin"
        path.write_bytes(b"MSH|^~\\&|" + bytes(rng.randrange(256) for _ in range(rng.randrange(1, 400))))
        paths.append(str(path))
    proc = rxgate("check", "--json", *paths)  # one process for the 20 files: each is answered on its own
    assert proc.returncode in (0, 1), proc.stderr
    assert b"Traceback" not in proc.stderr
    answers = [json.loads(line) for line in proc.stdout.decode().splitlines()]
    assert len(answers) >= len(paths)  # every file answered (at least one message each)
    assert all(a["ack_code"] in ("AA", "AE", "AR") for a in answers)


def test_redelivery_within_one_invocation_is_counted_once(tmp_path):
    text = adult_order_set("D1")
    path = tmp_path / "twice.hl7"
    path.write_bytes((text + text).encode())
    proc = rxgate("check", "--json", str(path))
    first, second = [json.loads(line) for line in proc.stdout.decode().splitlines()]
    assert first == second  # the stored answer, byte for byte (same response MSH-10)
    assert proc.returncode == 0


def test_timezone_option_rejects_unknown_zone(accepted):
    proc = rxgate("check", "--timezone", "Mars/Olympus", str(accepted))
    assert proc.returncode == 2

"""atheris target: any bytes as the input file of `rxgate check --json` (decode, every message, JSON lines).

    .venv/bin/python fuzz/atheris_cli.py -max_total_time=120 var/fuzz/corpus
"""

import sys
from pathlib import Path

import atheris

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

with atheris.instrument_imports(include=["validator", "workers.cli.check"]):
    from fuzz.properties import check_cli


def test_one_input(data: bytes) -> None:
    assert check_cli(data) in (0, 1, 2)


if __name__ == "__main__":
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()

"""atheris target: any bytes -> decode -> split -> read -> judge -> respond (the service's reader path).

    .venv/bin/python fuzz/atheris_reader.py -max_total_time=120 var/fuzz/corpus   (what `make fuzz` runs)

A crash is any exception or a broken property of fuzz/properties.py (no answer, internal error, a response
that does not parse). The corpus starts from examples/*.hl7.
"""

import sys
from pathlib import Path

import atheris

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

with atheris.instrument_imports(include=["validator"]):
    from fuzz.properties import answer_bytes


def test_one_input(data: bytes) -> None:
    answer_bytes(data)


if __name__ == "__main__":
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()

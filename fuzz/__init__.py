"""Fuzzing: the properties every input must satisfy (fuzz/properties.py), the hypothesis harness
(tests/unit/test_fuzz.py, bounded in `make test`, longer under `make fuzz`) and atheris targets."""

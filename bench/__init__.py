"""rxgate benchmarks (`make bench` = `python -m bench.run`): core per message, queue path, scaling, memory.

Everything is measured in one run on one machine and written to `bench/results.json` and
`BENCHMARKS.md`. Timings are never asserted by tests; `tests/adapters/test_bench_smoke.py` runs the
harness with tiny counts (`--quick`) and checks only the shape of the results.
"""

# Two commands set everything up on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: install run test bench lint fuzz soak audit clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# The audit chain's HMAC key (docs/interfaces.md §4) lives outside the database: made once here, never by rxgate.
run: install
	@if [ -z "$$RXGATE_AUDIT_KEY" ] && [ -z "$$RXGATE_AUDIT_KEY_FILE" ] && [ ! -s var/audit.key ]; then \
		mkdir -p var && (umask 077 && $(PY) -c "import secrets; print(secrets.token_hex(32))" > var/audit.key) && \
		echo "made var/audit.key: the audit chain's HMAC key; back it up apart from the database"; fi
	@if [ -z "$$RXGATE_AUDIT_KEY" ] && [ -z "$$RXGATE_AUDIT_KEY_FILE" ]; then \
		RXGATE_AUDIT_KEY_FILE=var/audit.key $(VENV)/bin/rxgate serve; else $(VENV)/bin/rxgate serve; fi

# The whole suite in two pytest processes (pytest-xdist; a test file stays in one process, so its module
# fixtures are made once): ~6 CPU-minutes, ~4 min on an idle 2-core machine, timings in README (Tests). Hypothesis at RXGATE_FUZZ_SCALE=1, the fault tests with
# 10 kills and 10 s outages. Tests write under tmp dirs only (tests/conftest.py): no .pytest_cache here either.
test: install
	$(PY) -m pytest -q -p no:cacheprovider -n 2 --dist loadfile

bench: install
	$(PY) -m bench.run

lint: install
	$(VENV)/bin/ruff check validator workers tests

# Fuzzing: atheris targets (fuzz/atheris_*.py, FUZZ_SECONDS each, default 120) then the hypothesis properties
# (tests/unit/test_fuzz.py, test_properties.py, the batching properties of tests/adapters/test_batched_writes.py)
# at RXGATE_FUZZ_SCALE=20 (20 x the examples of make test, tests/budget.py); without atheris, scale 40.
fuzz: install
	PY=$(PY) sh fuzz/run.sh

# Soak: the fault tests with 200 random kills and 2-minute database outages (make test runs 10 kills, 10 s),
# their numbers appended to var/fault-report.jsonl (RELIABILITY.md); then the structured fuzzing at scale 50.
soak: install
	RXGATE_SOAK_KILLS=$${RXGATE_SOAK_KILLS:-200} RXGATE_TEST_OUTAGE_S=$${RXGATE_TEST_OUTAGE_S:-120} \
		RXGATE_FAULT_REPORT=$${RXGATE_FAULT_REPORT:-$(CURDIR)/var/fault-report.jsonl} \
		$(PY) -m pytest -q -p no:cacheprovider tests/integration/test_faults.py
	RXGATE_SOAK_ORDER_MESSAGES=$${RXGATE_SOAK_ORDER_MESSAGES:-3000} \
		RXGATE_FAULT_REPORT=$${RXGATE_FAULT_REPORT:-$(CURDIR)/var/fault-report.jsonl} \
		$(PY) -m pytest -q -p no:cacheprovider -p no:logging tests/adapters/test_crash_order.py
	RXGATE_FUZZ_SCALE=$${RXGATE_FUZZ_SCALE:-50} $(PY) -m pytest -q -p no:cacheprovider tests/unit/test_fuzz.py

# Known vulnerabilities in the pinned dependencies (requirements.lock) with pip-audit. It needs PyPI's
# advisory data: when that cannot be reached the target says so plainly (NOT AUDITED) and exits 0, so an
# offline machine is not mistaken for a clean one and `make test` never depends on the network.
# AUDIT_STRICT=1 makes "not audited" fail too (for CI with network).
audit: install
	@$(PY) -m pip_audit --version >/dev/null 2>&1 || $(PY) -m pip install -q pip-audit >/dev/null 2>&1 || true
	@if ! $(PY) -m pip_audit --version >/dev/null 2>&1; then \
		echo "make audit: pip-audit is not installed and could not be installed (no network?): NOT AUDITED"; \
		exit $${AUDIT_STRICT:-0}; fi
	@out=$$($(PY) -m pip_audit -r requirements.lock --no-deps --disable-pip --progress-spinner off 2>&1); rc=$$?; \
	echo "$$out" | grep -v "could not be audited" ; \
	total=$$(grep -c "==" requirements.lock); skipped=$$(echo "$$out" | grep -c "could not be audited"); \
	if [ $$rc -ne 0 ] && echo "$$out" | grep -q "Found [0-9]* known vulnerabilit"; then \
		echo "make audit: VULNERABLE dependencies (above)"; exit 1; fi; \
	if [ $$rc -ne 0 ] || [ $$skipped -gt 0 ]; then \
		echo "make audit: the advisory database could not be reached for $$skipped of $$total pinned packages" \
		     "(exit $$rc): NOT AUDITED. Run it where https://pypi.org is reachable."; \
		if [ "$${AUDIT_STRICT:-0}" = "1" ]; then exit 1; fi; exit 0; fi; \
	echo "make audit: $$total pinned packages audited, no known vulnerabilities"

clean:
	rm -rf $(VENV) var .pytest_cache

#!/bin/sh
# `make fuzz`: the atheris targets for FUZZ_SECONDS each (when atheris installs), then the hypothesis
# harness with RXGATE_FUZZ_SCALE (default 20: ~25 000 examples). Corpus and crashes under var/fuzz/ (not versioned).
set -u
PY=${PY:-.venv/bin/python}
SECONDS_EACH=${FUZZ_SECONDS:-120}
SCALE=${RXGATE_FUZZ_SCALE:-20}
status=0
mkdir -p var/fuzz/corpus var/fuzz/crashes
cp examples/*.hl7 var/fuzz/corpus/ 2>/dev/null || true
if ! $PY -c "import atheris" 2>/dev/null; then
    $PY -m pip install -q atheris >/dev/null 2>&1 || true
fi
if $PY -c "import atheris" 2>/dev/null; then
    for target in fuzz/atheris_reader.py fuzz/atheris_cli.py; do
        echo "== atheris $target for ${SECONDS_EACH}s"
        $PY "$target" -max_total_time="$SECONDS_EACH" -rss_limit_mb=2048 -artifact_prefix=var/fuzz/crashes/ \
            var/fuzz/corpus || status=1
    done
else
    echo "== atheris is not installable here (it needs a wheel for this Python or clang): skipped;"
    echo "   the hypothesis harness runs longer instead"
    SCALE=$((SCALE * 2))
fi
echo "== hypothesis harness, RXGATE_FUZZ_SCALE=$SCALE"
RXGATE_FUZZ_SCALE=$SCALE $PY -m pytest -q -p no:cacheprovider tests/unit/test_fuzz.py tests/unit/test_properties.py \
    || status=1
RXGATE_FUZZ_SCALE=$SCALE $PY -m pytest -q -p no:cacheprovider tests/adapters/test_batched_writes.py \
    -k "batched_verdicts_equal_one_by_one" || status=1
exit $status

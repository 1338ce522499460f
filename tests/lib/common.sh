# Shared helpers for the test scripts (source it; run from the repo root).
#
#   dsv4_model PRESET   prints the path of a generated model for PRESET,
#                       generating it once per test run under $DSV4_TEST_TMP
#   check COND MSG      counts a pass or prints FAIL MSG
#   report NAME         prints "NAME: P passed, F failed" and exits with status
set -u
: "${DSV4_TEST_TMP:=$(mktemp -d /tmp/dsv4-test.XXXXXX)}"
export DSV4_TEST_TMP
PY=/usr/bin/python3
T_PASS=0
T_FAIL=0

dsv4_model() {
    local dir="$DSV4_TEST_TMP/models/$1"
    if [ ! -f "$dir/.complete" ]; then
        rm -rf "$dir"
        mkdir -p "$(dirname "$dir")"
        "$PY" tests/fixtures/gen_model.py --preset "$1" --out "$dir" --quiet >&2 || return 1
        touch "$dir/.complete"
    fi
    echo "$dir"
}

check() {
    if eval "$1"; then
        T_PASS=$((T_PASS + 1))
    else
        T_FAIL=$((T_FAIL + 1))
        echo "FAIL: $2"
    fi
}

pass() { T_PASS=$((T_PASS + 1)); }
fail() { T_FAIL=$((T_FAIL + 1)); echo "FAIL: $*"; }

report() {
    echo "$1: $T_PASS passed, $T_FAIL failed"
    [ "$T_FAIL" -eq 0 ]
    exit $?
}

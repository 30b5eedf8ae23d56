#!/usr/bin/env bash
# `make test` after its set-up: the compose check (scripts/compose-check.sh) in the background from the
# start, beside lint and types (side by side: `make -j2 lint typecheck`) and then pytest.
#
# Why beside: the compose check is mostly waiting (image build, containers' healthchecks, a scenario
# over HTTP) and shares nothing with pytest (its own podman project, image tags, free loopback ports;
# .dockerignore keeps the tests' .run/ and __pycache__ out of its build context). In sequence it added
# its whole time to the suite's (docs/design.md, "The test suite: faster, stricter").
#
# Both always run to the end; the exit status is non-zero when either failed. The compose check's
# output comes after pytest's (in one piece, so the two never interleave). Ctrl-C or a TERM stops both
# (the compose check then cleans up after itself: its EXIT trap).
#
#   PYTEST_WORKERS  pytest-xdist workers (0: one process); a test file per worker (--dist loadfile)
#   PYTEST_ARGS     more pytest arguments
#   COMPOSE_CHECK   0: skip the compose check (says so); default 1
set -uo pipefail
cd "$(dirname "$0")/.."
VENV=.venv
workers=${PYTEST_WORKERS:-0}
START=$SECONDS

cc_pid=
cc_log=$(mktemp "${TMPDIR:-/tmp}/kotc-compose-check-log.XXXXXX")
stop_check() {
  if [ -n "$cc_pid" ] && kill -0 "$cc_pid" 2>/dev/null; then
    kill -TERM -- "-$cc_pid" 2>/dev/null  # its process group: the step it waits on (a build) too
    wait "$cc_pid" 2>/dev/null
    cat "$cc_log"
  fi
  rm -f "$cc_log"
}
trap 'stop_check; exit 130' INT
trap 'stop_check; exit 143' TERM

if [ "${COMPOSE_CHECK:-1}" = 1 ]; then
  # In a session of its own (a terminal's Ctrl-C does not reach it): the traps above stop it, with
  # whatever step it waits on, by a TERM to its process group.
  setsid bash scripts/compose-check.sh >"$cc_log" 2>&1 &
  cc_pid=$!
  echo "test: compose check started in the background (pid $cc_pid); its output follows pytest's"
else
  echo "test: SKIP the compose check (COMPOSE_CHECK=$COMPOSE_CHECK)"
fi

checks_rc=0
make --no-print-directory -j2 --output-sync=target lint typecheck || checks_rc=$?
lint_s=$((SECONDS - START))

pytest_rc=0
pytest_start=$SECONDS
if [ "$checks_rc" = 0 ]; then
  # --no-loadscope-reorder: files in collection order, the e2e ones (a stack each, the longest) first;
  # xdist's default starts with the files of most tests and left the e2e files to the end, one worker
  # still running them when the other had nothing left.
  # shellcheck disable=SC2086  # PYTEST_ARGS is a list of arguments
  "$VENV/bin/pytest" -q -p no:cacheprovider -n "$workers" --dist loadfile --no-loadscope-reorder ${PYTEST_ARGS:-} \
    || pytest_rc=$?
else
  echo "test: lint or types failed (exit $checks_rc): pytest not run"
fi
pytest_s=$((SECONDS - pytest_start))

cc_rc=0
if [ -n "$cc_pid" ]; then
  [ "$(jobs -rp)" ] && echo "test: waiting for the compose check"
  wait "$cc_pid" || cc_rc=$?
  cc_pid=
  cat "$cc_log"
fi
rm -f "$cc_log"

echo "test: lint+types ${lint_s}s (exit $checks_rc), pytest ${pytest_s}s (exit $pytest_rc)," \
  "compose check exit $cc_rc; total $((SECONDS - START))s"
[ "$checks_rc" = 0 ] && [ "$pytest_rc" = 0 ] && [ "$cc_rc" = 0 ]

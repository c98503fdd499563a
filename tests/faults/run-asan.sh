#!/usr/bin/env bash
# The fault scenarios against the AddressSanitizer + UndefinedBehaviorSanitizer
# gateway (make -C gateway asan): the reconnect and retry paths under faults,
# with any sanitizer report failing the run (run.sh greps the logs).
set -uo pipefail
top=$(cd "$(dirname "$0")/../.." && pwd)
cd "$top"

make -s -C gateway asan || { echo "faults (asan): make -C gateway asan failed" >&2; exit 1; }

export GATEWAY_BIN=gateway/chat-gateway-asan
export GW_LOG_DIR=test-artifacts/faults-asan
export ASAN_OPTIONS=${ASAN_OPTIONS:-halt_on_error=1:abort_on_error=0:detect_leaks=1:exitcode=86:strict_string_checks=1:detect_stack_use_after_return=1:check_initialization_order=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1:exitcode=87}
export LSAN_OPTIONS=${LSAN_OPTIONS:-exitcode=88}
exec tests/faults/run.sh "$@"

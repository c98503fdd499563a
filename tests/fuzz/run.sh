#!/usr/bin/env bash
# libFuzzer stage: builds every tests/fuzz/NAME_fuzz.c (make -C gateway fuzz:
# clang, -fsanitize=fuzzer,address,undefined) and runs each for a bounded
# time from its committed seed corpus tests/fuzz/corpus/NAME/.  Any crash,
# sanitizer report, leak, timeout or out-of-memory fails the stage; the
# reproducer is kept in test-artifacts/fuzz/ (replay it with
# gateway/fuzz/NAME_fuzz test-artifacts/fuzz/NAME-crash-...).
# Env: FUZZ_SECONDS (per harness, default 30), FUZZ_RSS_MB (default 2048),
#      FUZZ_ONLY (space-separated names to run, default all).
set -uo pipefail
top=$(cd "$(dirname "$0")/../.." && pwd)
cd "$top"

secs=${FUZZ_SECONDS:-30}
rss=${FUZZ_RSS_MB:-2048}
out=test-artifacts/fuzz
mkdir -p "$out"

command -v "${FUZZ_CC:-clang}" >/dev/null || { echo "fuzz: clang is not installed" >&2; exit 1; }
make -s -C gateway fuzz || { echo "fuzz: make -C gateway fuzz failed" >&2; exit 1; }

shopt -s nullglob
harnesses=(tests/fuzz/*_fuzz.c)
[ ${#harnesses[@]} -gt 0 ] || { echo "fuzz: no harness in tests/fuzz" >&2; exit 1; }

rc=0
for src in "${harnesses[@]}"; do
  name=$(basename "$src" _fuzz.c)
  if [ -n "${FUZZ_ONLY:-}" ] && [[ " $FUZZ_ONLY " != *" $name "* ]]; then continue; fi
  bin=gateway/fuzz/${name}_fuzz
  seeds=tests/fuzz/corpus/$name
  if [ ! -x "$bin" ]; then echo "fuzz: $bin was not built" >&2; rc=1; continue; fi
  if [ -z "$(ls -A "$seeds" 2>/dev/null)" ]; then echo "fuzz: no seed corpus in $seeds" >&2; rc=1; continue; fi
  # New inputs go to a scratch directory (first), the committed seeds stay as they are.
  work=$(mktemp -d /tmp/chat-fuzz-"$name".XXXXXX)
  log=$out/$name.log
  ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:halt_on_error=1:abort_on_error=0} \
  UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1} \
    "$bin" -max_total_time="$secs" -rss_limit_mb="$rss" -timeout=10 -max_len=8192 \
      -print_final_stats=1 -artifact_prefix="$out/$name-" "$work" "$seeds" >"$log" 2>&1
  r=$?
  execs=$(grep -oE 'stat::number_of_executed_units: *[0-9]+' "$log" | grep -oE '[0-9]+$')
  if [ $r -ne 0 ] || grep -qE 'ERROR: (AddressSanitizer|LeakSanitizer|libFuzzer)|runtime error:|SUMMARY: ' "$log"; then
    echo "fuzz $name: FAILED (exit $r) after ${execs:-?} runs; log $log" >&2
    grep -E -A25 'ERROR: |runtime error:' "$log" | head -60 >&2
    rc=1
  else
    echo "fuzz $name: ok, ${execs:-?} runs in ${secs}s, corpus $(ls "$work" | wc -l) new + $(ls "$seeds" | wc -l) seeds"
  fi
  rm -rf "$work"
done
exit $rc

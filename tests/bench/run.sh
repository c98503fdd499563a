#!/usr/bin/env bash
# Unit tests of the benchmark's reporting (bench/goals.cjs: the goals table of
# issue 11) with Node's test runner on made-up runs; no cluster needed.
set -euo pipefail
cd "$(dirname "$0")/../.."
exec node --test --test-reporter=spec tests/bench/

#!/usr/bin/env bash
# Unit tests of web/chat-client.js with Node's test runner against a fake socket.
set -euo pipefail
cd "$(dirname "$0")/../.."
exec node --test --test-reporter=spec tests/web/

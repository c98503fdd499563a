#!/bin/sh
# The gateway of scenario 3 (network-partition), run inside the network
# namespace tests/faults/run.sh made; exec keeps the pid the test kills.
exec ip netns exec "$FAULTS_NETNS" "$FAULTS_REAL_GATEWAY" "$@"

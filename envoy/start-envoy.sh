#!/bin/sh
# Starts Envoy in a container: CONFIG is the bootstrap `crosslogic envoy-config --boot-id
# 0000000000000000` rendered once; every process started from it gets a boot id of its own,
# since billing tells the usage journal of a dead Envoy apart by it (crosslogic/journal/).
# Usage: start-envoy.sh CONFIG [envoy options...]
set -eu
config=$1
shift
boot=$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')
run="${TMPDIR:-/tmp}/envoy.yaml"
sed "s/0000000000000000/$boot/g" "$config" > "$run"
exec envoy -c "$run" "$@"

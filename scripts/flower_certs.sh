#!/usr/bin/env bash
# Make every key a closed semcon deployment on Flower needs (`semcon flower certs`, README "Multi-machine"):
# a CA, the SuperLink/gateway certificate for HOST and 127.0.0.1, the coordinator's app-signing key, and per
# node a key pair plus a folder nodeN/ holding only what organisation N gets.
# usage: scripts/flower_certs.sh OUT_DIR [HOST] [NUM_NODES]      e.g. scripts/flower_certs.sh certs 10.0.0.5 3
set -euo pipefail
out=${1:?usage: $0 OUT_DIR [HOST] [NUM_NODES]}
semcon="$(dirname "$0")/../.venv/bin/semcon"
[[ -x $semcon ]] || semcon=semcon
exec "$semcon" flower certs "$out" --host "${2:-127.0.0.1}" --nodes "${3:-2}"

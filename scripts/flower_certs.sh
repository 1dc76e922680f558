#!/usr/bin/env bash
# Make what a TLS-secured, node-authenticated semcon deployment on Flower needs:
#   a CA, a SuperLink certificate for HOST (SAN: IP or DNS), and one ECDSA key pair per SuperNode.
# usage: scripts/flower_certs.sh OUT_DIR [HOST] [NUM_NODES]      e.g. scripts/flower_certs.sh certs 10.0.0.5 3
set -euo pipefail
out=${1:?usage: $0 OUT_DIR [HOST] [NUM_NODES]}
host=${2:-127.0.0.1}
nodes=${3:-2}
mkdir -p "$out"
cd "$out"
if [[ $host =~ ^[0-9.]+$ ]]; then san="IP:$host"; else san="DNS:$host"; fi

openssl req -x509 -newkey rsa:4096 -sha256 -days 365 -nodes -keyout ca.key -out ca.crt -subj "/CN=semcon-ca" 2>/dev/null
openssl req -newkey rsa:4096 -nodes -keyout server.key -out server.csr -subj "/CN=$host" 2>/dev/null
printf "subjectAltName=%s\n" "$san" > server.ext
openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out server.crt -days 365 -sha256 \
  -extfile server.ext 2>/dev/null
rm -f server.csr server.ext

for ((i = 0; i < nodes; i++)); do
  rm -f "node${i}_key" "node${i}_key.pub"
  ssh-keygen -q -t ecdsa -b 384 -N "" -f "node${i}_key" -C "semcon-node$i"
done
echo "in $out: ca.crt, server.crt/server.key (SAN $san), node0_key[.pub] .. node$((nodes - 1))_key[.pub]"

#!/bin/sh
# The deployment CA and the certificates of deploy/container/compose.yaml, in ./pki,
# made with the rserpool image itself. Keep pki/ca-key.pem away from the hosts.
set -eu
mkdir -p pki
cert() { ${RUNTIME:-podman} run --rm -v "$PWD/pki:/pki" rserpool cert "$@"; }
cert ca --dir /pki
for n in 1 2 3; do
    cert issue --dir /pki --name "registrar-$n" --registrar-id "$n"
done
cert issue --dir /pki --name counter-pe --pe CounterPool
cert issue --dir /pki --name gateway --pu CounterPool
# The image runs as a non-root user: let it read the keys of this demo deployment.
chmod a+r pki/*.pem

#!/usr/bin/env bash
# Regenerates the checked-in protobuf/gRPC modules of the Python package from proto/.
# Needs grpcio-tools (tests/requirements.txt pins the version the checked-in code came from).
#   clients/python/generate.sh [python]
set -euo pipefail
cd "$(dirname "$0")"
PY=${1:-python3}
for proto in fjord/gateway/v1/gateway.proto; do
    "$PY" -m grpc_tools.protoc -I ../../proto --python_out=. --pyi_out=. --grpc_python_out=. \
        "../../proto/$proto"
done

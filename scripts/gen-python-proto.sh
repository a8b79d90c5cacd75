#!/usr/bin/env bash
# Regenerates the Python protobuf/gRPC stubs of proto/loom/v1/loom.proto into the SDK package
# (loom-sdk-py/python/loom/v1/). The generated modules import `loom.v1.loom_pb2`, which is
# exactly where they live inside the `loom` package. Run after editing the .proto; a test
# checks the committed stubs are current.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
out=${1:-loom-sdk-py/python}
"$PY" -m grpc_tools.protoc -I proto --python_out="$out" --pyi_out="$out" --grpc_python_out="$out" loom/v1/loom.proto
touch "$out/loom/v1/__init__.py"

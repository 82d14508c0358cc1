"""Converts an OTLP/JSON request body to its protobuf form with the Python
protobuf library and the opentelemetry-proto classes (an implementation
independent of tern's), and prints it as hex.

protobuf's JSON reader follows proto3 rules, where bytes are base64; OTLP/JSON
writes trace and span ids in hex, so those are converted first, as the OTLP
specification describes.

Used by tests/receiver.rs:
    python json_to_protobuf.py <traces|metrics|logs> <file.json>
"""

import base64
import json
import sys

from google.protobuf import json_format
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

IDS = {"traceId", "spanId", "parentSpanId", "trace_id", "span_id", "parent_span_id"}


def hex_ids_to_base64(value):
    if isinstance(value, dict):
        return {
            k: (
                base64.b64encode(bytes.fromhex(v)).decode()
                if k in IDS and isinstance(v, str)
                else hex_ids_to_base64(v)
            )
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [hex_ids_to_base64(v) for v in value]
    return value


signal, path = sys.argv[1], sys.argv[2]
message = {
    "traces": ExportTraceServiceRequest,
    "metrics": ExportMetricsServiceRequest,
    "logs": ExportLogsServiceRequest,
}[signal]()
with open(path) as f:
    body = hex_ids_to_base64(json.load(f))
json_format.ParseDict(body, message)
print(message.SerializeToString(deterministic=True).hex())

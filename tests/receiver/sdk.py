"""Sends spans, a log record and metrics to tern's OTLP receiver with the
official OpenTelemetry Python SDK and its OTLP/HTTP (protobuf) exporters, and
prints what it sent, as the SDK holds it, as JSON on stdout.

Used by tests/receiver.rs:
    python sdk.py <base URL, like http://127.0.0.1:4318>
"""

import json
import sys

from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import InMemoryLogExporter, SimpleLogRecordProcessor
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry._logs import SeverityNumber
from opentelemetry.trace import SpanKind, Status, StatusCode

base = sys.argv[1].rstrip("/")
resource = Resource.create(
    {"service.name": "py-app", "deployment.environment": "staging"}
)

# Traces: gzip, as many deployments set OTEL_EXPORTER_OTLP_COMPRESSION=gzip.
spans = InMemorySpanExporter()
tracer_provider = TracerProvider(resource=resource)
tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
tracer_provider.add_span_processor(
    SimpleSpanProcessor(
        OTLPSpanExporter(endpoint=base + "/v1/traces", compression=Compression.Gzip)
    )
)
tracer = tracer_provider.get_tracer("sdk-test", "1.2.3")

# Logs: uncompressed.
logs = InMemoryLogExporter()
logger_provider = LoggerProvider(resource=resource)
logger_provider.add_log_record_processor(SimpleLogRecordProcessor(logs))
logger_provider.add_log_record_processor(
    SimpleLogRecordProcessor(OTLPLogExporter(endpoint=base + "/v1/logs"))
)
logger = logger_provider.get_logger("sdk-test")

with tracer.start_as_current_span("parent", kind=SpanKind.SERVER) as parent:
    parent.set_attribute("http.route", "/orders")
    with tracer.start_as_current_span("child", kind=SpanKind.CLIENT) as child:
        child.set_attribute("retries", 3)
        child.set_attribute("ok", False)
        child.set_attribute("ratio", 0.5)
        child.set_attribute("tags", ["a", "b"])
        child.add_event("retrying", {"attempt": 2})
        child.set_status(Status(StatusCode.ERROR, "upstream timed out"))
        logger.emit(
            timestamp=1_700_000_000_123_456_789,
            severity_number=SeverityNumber.WARN,
            severity_text="WARN",
            body="hello from python",
            attributes={"user.id": 42},
        )

# Metrics: one export on shutdown.
metric_reader = PeriodicExportingMetricReader(
    OTLPMetricExporter(endpoint=base + "/v1/metrics"), export_interval_millis=3_600_000
)
meter_provider = MeterProvider(resource=resource, metric_readers=[metric_reader])
meter = meter_provider.get_meter("sdk-test")
counter = meter.create_counter("orders", unit="1", description="orders taken")
counter.add(5, {"route": "/orders"})
histogram = meter.create_histogram("latency", unit="ms")
histogram.record(2.0, {"route": "/orders"})
histogram.record(40.0, {"route": "/orders"})

ok = {
    "traces": tracer_provider.force_flush(),
    "logs": logger_provider.force_flush(),
    "metrics": meter_provider.force_flush(),
}
meter_provider.shutdown()
tracer_provider.shutdown()
logger_provider.shutdown()

record = logs.get_finished_logs()[0].log_record
print(
    json.dumps(
        {
            "flushed": ok,
            "spans": [
                {
                    "name": s.name,
                    "trace_id": format(s.context.trace_id, "032x"),
                    "span_id": format(s.context.span_id, "016x"),
                    "parent_span_id": format(s.parent.span_id, "016x") if s.parent else "",
                    "start": s.start_time,
                    "end": s.end_time,
                    "event_time": s.events[0].timestamp if s.events else 0,
                }
                for s in spans.get_finished_spans()
            ],
            "log": {
                "trace_id": format(record.trace_id, "032x"),
                "span_id": format(record.span_id, "016x"),
                "timestamp": record.timestamp,
                "observed_timestamp": record.observed_timestamp,
            },
        }
    )
)

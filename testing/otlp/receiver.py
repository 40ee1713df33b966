#!/usr/bin/env python3
"""An OTLP trace receiver on loopback, for the trace tests (host/tests/util/otlp.rs drives it).

    receiver.py --out FILE [--delay SECONDS] [--refuse]

It serves both OTLP transports on 127.0.0.1, each on a free port:

- OTLP/gRPC: `opentelemetry.proto.collector.trace.v1.TraceService/Export` with grpcio;
- OTLP/HTTP: `POST /v1/traces` with an `application/x-protobuf` body.

Both decode the request with the official generated protobufs of the `opentelemetry-proto`
package (no hand-written decoding) and append every span to FILE as one JSON line: transport, the
export's `x-*` headers (gRPC metadata or HTTP headers),
resource and span attributes, scope, trace and span ids, parent span id, name, kind, status,
start and end times. When both servers listen it prints one JSON line `{"grpc": PORT, "http":
PORT}` to stdout, then serves until it is killed.

`--delay` holds every answer that long (a slow collector; the spans are still written);
`--refuse` answers every export with gRPC `UNAVAILABLE` or HTTP 503 and writes nothing.
`--accept-only` answers every gRPC export at once without decoding it (the benchmark's sink).

On first use it installs grpcio, protobuf and opentelemetry-proto (pinned with their hashes in
requirements.txt) into the venv target/tools/otlp-venv and re-executes itself there.
"""

import argparse
import contextlib
import json
import sys
import threading
import time
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
import pyvenv  # noqa: E402  (testing/pyvenv.py)

WORKSPACE = HERE.parent.parent
TOOLS = WORKSPACE / "target" / "tools"
VENV = TOOLS / "otlp-venv"
REQUIREMENTS = HERE / "requirements.txt"


def log(message: str) -> None:
    print(f"[otlp receiver] {message}", file=sys.stderr, flush=True)


def any_value(value):
    """An OTLP `AnyValue` as plain JSON."""
    kind = value.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [any_value(v) for v in value.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: any_value(kv.value) for kv in value.kvlist_value.values}
    if kind == "bytes_value":
        return value.bytes_value.hex()
    return getattr(value, kind)


def attributes(pairs) -> dict:
    return {kv.key: any_value(kv.value) for kv in pairs}


class Sink:
    """The JSON-lines file every decoded span is appended to."""

    def __init__(self, path: str):
        self.file = open(path, "a", encoding="utf-8")
        self.lock = threading.Lock()

    def write(self, transport: str, request, headers: dict) -> None:
        """`headers`: the export's `x-*` headers (gRPC metadata or HTTP), lowercase names."""
        from opentelemetry.proto.trace.v1 import trace_pb2

        lines = []
        for resource_spans in request.resource_spans:
            resource = attributes(resource_spans.resource.attributes)
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    lines.append(json.dumps({
                        "transport": transport,
                        "headers": headers,
                        "resource": resource,
                        "scope": scope_spans.scope.name,
                        "trace_id": span.trace_id.hex(),
                        "span_id": span.span_id.hex(),
                        "parent_span_id": span.parent_span_id.hex(),
                        "name": span.name,
                        "kind": trace_pb2.Span.SpanKind.Name(span.kind),
                        "attributes": attributes(span.attributes),
                        "status_code": trace_pb2.Status.StatusCode.Name(span.status.code),
                        "status_message": span.status.message,
                        "start_ns": span.start_time_unix_nano,
                        "end_ns": span.end_time_unix_nano,
                    }, sort_keys=True))
        with self.lock:
            for line in lines:
                self.file.write(line + "\n")
            self.file.flush()


def grpc_server(sink: Sink, delay: float, refuse: bool, accept_only: bool = False):
    import grpc
    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

    if accept_only:
        # The bytes are taken and answered with an empty ExportTraceServiceResponse, not decoded.
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        export = grpc.unary_unary_rpc_method_handler(lambda request, context: b"")
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
            "opentelemetry.proto.collector.trace.v1.TraceService", {"Export": export}),))
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        return server, port

    class TraceService(trace_service_pb2_grpc.TraceServiceServicer):
        def Export(self, request, context):
            time.sleep(delay)
            if refuse:
                context.abort(grpc.StatusCode.UNAVAILABLE, "refusing, as asked (--refuse)")
            metadata = {k.lower(): v for k, v in context.invocation_metadata() if k.lower().startswith("x-")}
            sink.write("grpc", request, metadata)
            return trace_service_pb2.ExportTraceServiceResponse()

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(TraceService(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, port


def http_server(sink: Sink, delay: float, refuse: bool):
    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("content-length", "0")))
            time.sleep(delay)
            if self.path != "/v1/traces":
                return self.answer(404, b"not found", "text/plain")
            if refuse:
                return self.answer(503, b"refusing, as asked (--refuse)", "text/plain")
            if self.headers.get("content-type") != "application/x-protobuf":
                return self.answer(415, b"OTLP/HTTP protobuf only", "text/plain")
            request = trace_service_pb2.ExportTraceServiceRequest()
            request.ParseFromString(body)
            sink.write("http", request,
                       {k.lower(): v for k, v in self.headers.items() if k.lower().startswith("x-")})
            self.answer(200, trace_service_pb2.ExportTraceServiceResponse().SerializeToString(),
                        "application/x-protobuf")

        def answer(self, status: int, body: bytes, content_type: str):
            self.send_response(status)
            self.send_header("content-type", content_type)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, server.server_address[1]


def main() -> None:
    pyvenv.run_inside(VENV, REQUIREMENTS, "grpcio and opentelemetry-proto", log, __file__)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="the JSON-lines file the spans are appended to")
    parser.add_argument("--delay", type=float, default=0.0, help="seconds to hold every answer")
    parser.add_argument("--refuse", action="store_true", help="refuse every export")
    parser.add_argument("--accept-only", action="store_true",
                        help="gRPC: answer every export without decoding it or writing a span (a sink for "
                             "measuring the sender's cost without the decoding's on the same machine)")
    args = parser.parse_args()
    sink = Sink(args.out)
    _grpc, grpc_port = grpc_server(sink, args.delay, args.refuse, args.accept_only)
    _http, http_port = http_server(sink, args.delay, args.refuse)
    print(json.dumps({"grpc": grpc_port, "http": http_port}), flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        threading.Event().wait()


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""An OTLP/HTTP trace receiver for the tracing tests.

It decodes each `POST /v1/traces` body with the generated code of the
official OpenTelemetry protos (the `opentelemetry-proto` package), the way a
collector does, and prints every span as one JSON line on stdout: ids in
hex, attributes as a plain object, the resource's attributes beside them.
The first line is `listening PORT`. `--status N` answers every export with N
instead of 200, to test a collector that refuses.
"""

import argparse
import json
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer

from opentelemetry.proto.collector.trace.v1 import trace_service_pb2


def value_of(any_value):
    kind = any_value.WhichOneof("value")
    return getattr(any_value, kind) if kind else None


def attributes(pairs):
    return {kv.key: value_of(kv.value) for kv in pairs}


def spans_of(request):
    for resource_spans in request.resource_spans:
        resource = attributes(resource_spans.resource.attributes)
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                yield {
                    "trace_id": span.trace_id.hex(),
                    "span_id": span.span_id.hex(),
                    "parent_span_id": span.parent_span_id.hex(),
                    "trace_state": span.trace_state,
                    "name": span.name,
                    "kind": span.kind,
                    "start": span.start_time_unix_nano,
                    "end": span.end_time_unix_nano,
                    "attributes": attributes(span.attributes),
                    "events": [
                        {"name": e.name, "time": e.time_unix_nano} for e in span.events
                    ],
                    "status": {"code": span.status.code, "message": span.status.message},
                    "scope": scope_spans.scope.name,
                    "resource": resource,
                }


class Receiver(BaseHTTPRequestHandler):
    status = 200

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        if self.path != "/v1/traces":
            self.answer(404)
            return
        if self.headers.get("Content-Type") != "application/x-protobuf":
            self.answer(415)
            return
        try:
            request = trace_service_pb2.ExportTraceServiceRequest.FromString(body)
        except Exception as e:  # a body a collector could not decode
            print(json.dumps({"decode_error": str(e)}), flush=True)
            self.answer(400)
            return
        for span in spans_of(request):
            print(json.dumps(span), flush=True)
        self.answer(self.status)

    def answer(self, status):
        reply = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
        self.send_response(status)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, *args):
        pass


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--status", type=int, default=200)
    args = parser.parse_args()
    Receiver.status = args.status
    server = HTTPServer(("127.0.0.1", args.port), Receiver)
    print(f"listening {server.server_address[1]}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    sys.exit(0)


if __name__ == "__main__":
    main()

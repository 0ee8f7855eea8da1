"""A byte-for-byte TCP relay between obleth and the mock upstream that
records what the upstream itself answered to each request, so the budget
harness can compare committed spend with the upstream's own account rather
than with what clients saw.

Usage: usage_relay.py LISTEN_PORT UPSTREAM_PORT

Each upstream request carries the client's `x-bench-id` header (obleth
forwards it). Per request the relay records either the usage the upstream
reported (the last non-null `usage` object of the JSON body or SSE stream,
its `total_tokens`), or, for a response that ended without one (its client
left mid-stream and obleth cut the upstream off), how many token events the
upstream had sent by then. Requests on one kept-alive upstream connection
are told apart by their heads: obleth sends the next request only after the
previous response has passed through; the last request of a connection
is recorded when the connection closes, or as it stands when the records
are asked for. `GET /__usage` on the relay port answers them as JSON:
{id: {"usage": n} | {"generated": n}}; ask once the load is over.
"""
import asyncio
import json
import re
import sys

listen_port, upstream_port = int(sys.argv[1]), int(sys.argv[2])
records = {}
# Connections still open: their current request's id and response so far.
live = {}
BENCH_ID = re.compile(rb"\r\nx-bench-id: *([^\r\n]+)", re.I)
USAGE = re.compile(rb'"usage":\{[^{}]*?"total_tokens":(\d+)[^{}]*\}')
TOKEN = re.compile(rb'"(?:content|text)":"tok\d')


def account(body):
    reported = USAGE.findall(body)
    if reported:
        return {"usage": int(reported[-1])}
    return {"generated": len(TOKEN.findall(body))}


def finish(request_id, body):
    if request_id is not None:
        records[request_id] = account(body)


async def pump(reader, writer, on_data):
    try:
        while True:
            data = await reader.read(65536)
            if not data:
                break
            on_data(data)
            writer.write(data)
            await writer.drain()
    except (ConnectionError, asyncio.IncompleteReadError):
        pass
    finally:
        try:
            writer.close()
        except Exception:
            pass


async def handle(reader, writer):
    first = await reader.read(65536)
    if first.startswith(b"GET /__usage"):
        answered = dict(records)
        for state in live.values():
            if state["id"] is not None:
                answered[state["id"]] = account(bytes(state["body"]))
        body = json.dumps(answered).encode()
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nconnection: close\r\n"
            + b"content-length: %d\r\n\r\n" % len(body)
            + body
        )
        await writer.drain()
        writer.close()
        return
    try:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", upstream_port)
    except OSError:
        writer.close()
        return
    state = {"id": None, "body": bytearray()}
    key = id(state)
    live[key] = state

    def request_bytes(data):
        for m in BENCH_ID.finditer(data):
            finish(state["id"], bytes(state["body"]))
            state["id"], state["body"] = m.group(1).decode().strip(), bytearray()

    def response_bytes(data):
        state["body"].extend(data)

    request_bytes(first)
    up_writer.write(first)
    await up_writer.drain()
    try:
        await asyncio.gather(
            pump(reader, up_writer, request_bytes),
            pump(up_reader, writer, response_bytes),
        )
    finally:
        del live[key]
        finish(state["id"], bytes(state["body"]))


async def main():
    server = await asyncio.start_server(handle, "127.0.0.1", listen_port)
    async with server:
        await server.serve_forever()


asyncio.run(main())

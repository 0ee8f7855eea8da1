"""An MCP client on the official Python SDK, for obleth's MCP tests.

Usage: client.py URL API_KEY MODE

Connects to URL (streamable HTTP) with `Authorization: Bearer API_KEY`,
in MODE (`legacy`: the initialize handshake and a session, answers as SSE;
`auto`: the SDK's default negotiation), lists the tools, calls `echo` and
`whoami`, tries `delete_everything`, and prints what happened as JSON.
A connection that fails prints {"connect_error": ...}.
"""

import asyncio
import json
import sys

from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client


def text_of(result):
    if result.is_error:
        return {"error": " ".join(getattr(c, "text", "") for c in result.content)}
    return {"text": " ".join(getattr(c, "text", "") for c in result.content)}


async def attempt(call):
    try:
        return text_of(await call)
    except Exception as e:  # the JSON-RPC error of a refused call
        return {"refused": str(e), "code": getattr(getattr(e, "error", None), "code", None)}


async def main(url, key, mode):
    http = create_mcp_http_client(headers={"Authorization": f"Bearer {key}"})
    out = {}
    try:
        async with Client(streamable_http_client(url, http_client=http), mode=mode, cache=None) as client:
            tools = await client.list_tools()
            out["tools"] = sorted(t.name for t in tools.tools)
            out["echo"] = await attempt(client.call_tool("echo", {"text": "hello"}))
            out["whoami"] = await attempt(client.call_tool("whoami", {}))
            out["delete_everything"] = await attempt(client.call_tool("delete_everything", {}))
    except BaseException as e:  # noqa: BLE001 - reported to the test
        out["connect_error"] = repr(e)
    print(json.dumps(out))


asyncio.run(main(*sys.argv[1:4]))

"""A small MCP server on the official Python SDK, for obleth's MCP tests.

Usage: tool_server.py PORT TOKEN HEADER_LOG

Streamable HTTP on 127.0.0.1:PORT/mcp. Tools: `echo`; `slow`, which answers after the seconds it is given;
`whoami`, which
answers only when the request carries `X-Tool-Token: TOKEN` (the credential
obleth injects) and reports the credentials it saw; `delete_everything`,
which the tests never allow. Every HTTP request's headers are appended to
HEADER_LOG as one JSON line, so a test can show what reached the server.
"""

import json
import sys

import anyio
import uvicorn
from mcp.server import MCPServer
from mcp.server.mcpserver import Context

port, token, header_log = int(sys.argv[1]), sys.argv[2], sys.argv[3]
mcp = MCPServer("obleth-test-tools")


def request_headers(ctx: Context) -> dict:
    request = getattr(ctx.request_context, "request", None)
    headers = getattr(request, "headers", None)
    if headers is None:
        transport = getattr(ctx.request_context, "transport", None)
        headers = getattr(transport, "headers", None) or {}
    return {k.lower(): v for k, v in dict(headers).items()}


@mcp.tool()
def echo(text: str) -> str:
    """Returns the text it is given."""
    return text


@mcp.tool()
def whoami(ctx: Context) -> str:
    """Reports the credentials of the request; needs the injected token."""
    headers = request_headers(ctx)
    if headers.get("x-tool-token") != token:
        raise ValueError("this tool needs the X-Tool-Token header")
    return json.dumps(
        {
            "x-tool-token": headers.get("x-tool-token"),
            "authorization": headers.get("authorization"),
            "x-api-key": headers.get("x-api-key"),
        }
    )


@mcp.tool()
async def slow(seconds: float) -> str:
    """Answers after `seconds`."""
    await anyio.sleep(seconds)
    return "done"


@mcp.tool()
def delete_everything() -> str:
    """A tool no tenant may call."""
    return "everything deleted"


app = mcp.streamable_http_app()


async def logged(scope, receive, send):
    if scope["type"] == "http":
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        with open(header_log, "a", encoding="utf-8") as log:
            log.write(json.dumps({"method": scope["method"], "path": scope["path"], "headers": headers}) + "\n")
    await app(scope, receive, send)


uvicorn.run(logged, host="127.0.0.1", port=port, log_level="warning")

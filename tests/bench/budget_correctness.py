"""Load for the budget correctness harness: CLIENTS concurrent clients send
chat completions with random max_tokens to the given obleth URLs in turn
for SECONDS, a third each of them

- plain (JSON) completions and full streams (half of them asking for
  usage), with the official OpenAI client (async), and
- streams the client leaves after 1 to 5 tokens (a raw socket closed
  mid-stream; the mock streams these at 40 tokens per second so they are
  still going).

Every request carries `x-bench-id`, which the usage relay in front of the
upstream files the upstream's own answer under. Prints one JSON line:
status counts, the usage clients saw, and per left stream its id, the
tokens the client saw and obleth's documented prompt estimate for a
request without reported usage (its body's bytes / 4, rounded up)."""
import asyncio
import itertools
import json
import random
import re
import sys
import urllib.parse

import openai

urls, key = sys.argv[1].split(","), sys.argv[2]
clients, seconds = int(sys.argv[3]), float(sys.argv[4])
TOKEN = re.compile(rb'"content":"tok\d')
ids = itertools.count()


async def leave_mid_stream(url, request_id, tokens):
    """Sends a streamed request and closes the connection after `tokens`
    token events; returns (status, tokens seen, prompt estimate)."""
    body = json.dumps(
        {
            "model": "m",
            "messages": [{"role": "user", "content": "count to ten please"}],
            "max_tokens": random.randint(50, 200),
            "stream": True,
        }
    ).encode()
    target = urllib.parse.urlsplit(url)
    reader, writer = await asyncio.open_connection(target.hostname, target.port)
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nhost: {target.netloc}\r\n"
        f"authorization: Bearer {key}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nx-bench-id: {request_id}\r\n"
        "x-mock-tps: 40\r\nconnection: close\r\n\r\n"
    ).encode()
    writer.write(head + body)
    await writer.drain()
    seen, status, buf = 0, 0, b""
    try:
        while True:
            data = await asyncio.wait_for(reader.read(65536), 60)
            if not data:
                break
            buf += data
            if not status and b"\r\n" in buf:
                status = int(buf.split(b" ", 2)[1])
            seen = len(TOKEN.findall(buf))
            if status == 200 and seen >= tokens:
                break
    finally:
        writer.close()
    return status, seen, -(-len(body) // 4)


async def main():
    statuses, client_reported, left = {}, 0, {}
    deadline = asyncio.get_running_loop().time() + seconds
    apis = [
        openai.AsyncOpenAI(base_url=u + "/v1", api_key=key, max_retries=0, timeout=60)
        for u in urls
    ]

    async def client(n):
        nonlocal client_reported
        i = n
        while asyncio.get_running_loop().time() < deadline:
            which = i % len(urls)
            i += 1
            request_id = f"c{n}-{next(ids)}"
            kind = random.choice(("json", "stream", "leave"))
            headers = {"x-bench-id": request_id}
            messages = [{"role": "user", "content": "count to ten please"}]
            max_tokens = random.randint(20, 200)
            try:
                if kind == "leave":
                    status, seen, estimate = await leave_mid_stream(
                        urls[which], request_id, random.randint(1, 5)
                    )
                    if status == 200:
                        left[request_id] = {"seen": seen, "prompt_estimate": estimate}
                elif kind == "json":
                    reply = await apis[which].chat.completions.create(
                        model="m", messages=messages, max_tokens=max_tokens, extra_headers=headers
                    )
                    status = 200
                    client_reported += reply.usage.total_tokens
                else:
                    with_usage = random.random() < 0.5
                    stream = await apis[which].chat.completions.create(
                        model="m",
                        messages=messages,
                        max_tokens=max_tokens,
                        stream=True,
                        stream_options={"include_usage": True} if with_usage else openai.NOT_GIVEN,
                        extra_headers=headers,
                    )
                    async for chunk in stream:
                        if chunk.usage is not None:
                            client_reported += chunk.usage.total_tokens
                    status = 200
            except openai.APIStatusError as e:
                status = e.status_code
            except (openai.APIConnectionError, OSError, asyncio.TimeoutError):
                status = "error"
            statuses[status] = statuses.get(status, 0) + 1

    await asyncio.gather(*(client(n) for n in range(clients)))
    print(json.dumps({"statuses": statuses, "client_reported": client_reported, "left": left}))


asyncio.run(main())

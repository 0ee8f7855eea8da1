"""Load for the budget correctness harness: CLIENTS concurrent clients (the
official OpenAI client, async) send chat completions with random max_tokens
to the given obleth URLs in turn for SECONDS, and print one JSON line: status
counts and the sum of the usage the upstream reported for admitted
requests."""
import asyncio
import json
import random
import sys

import openai

urls, key = sys.argv[1].split(","), sys.argv[2]
clients, seconds = int(sys.argv[3]), float(sys.argv[4])


async def main():
    statuses, reported = {}, 0
    deadline = asyncio.get_running_loop().time() + seconds
    apis = [openai.AsyncOpenAI(base_url=u + "/v1", api_key=key, max_retries=0, timeout=60) for u in urls]

    async def client(n):
        nonlocal reported
        i = n
        while asyncio.get_running_loop().time() < deadline:
            api = apis[i % len(apis)]
            i += 1
            try:
                reply = await api.chat.completions.create(
                    model="m",
                    messages=[{"role": "user", "content": "count to ten please"}],
                    max_tokens=random.randint(20, 200),
                )
                status = 200
                reported += reply.usage.total_tokens
            except openai.APIStatusError as e:
                status = e.status_code
            statuses[status] = statuses.get(status, 0) + 1

    await asyncio.gather(*(client(n) for n in range(clients)))
    print(json.dumps({"statuses": statuses, "reported": reported}))


asyncio.run(main())

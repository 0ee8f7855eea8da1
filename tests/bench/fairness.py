"""Load for the fairness harness. Tenants A and B (weights 3:1) flood one
model with CLIENTS concurrent clients each; after JOIN seconds a light
tenant C sends one request every C_GAP seconds. The upstream serves at a
fixed token rate: each request asks the mock for a latency of its
completion tokens / RATE. Prints one JSON object with, per tenant, the
completed requests and tokens after WARMUP; the weight-normalised service
difference D = served(A)/3 - served(B) traced at every completion, reported
as the final imbalance |D(end)| (which grows with run length whenever the
ratio is not exactly 3), the largest difference over any window
(max D - min D: for a window [t1, t2] both tenants were backlogged in, the
difference is D(t2) - D(t1)), and the largest over windows of at most one
second, which is the quantity the scheduler's 2*C/w_min bound is about;
and C's queue waits
(time to the response minus the upstream's service time), all after WARMUP
so that first-request costs (cold caches) do not count.

    fairness.py URL KEY_A,KEY_B,KEY_C SECONDS [solo]
"""
import asyncio
import json
import random
import sys
import time

import openai

url, keys, seconds = sys.argv[1], sys.argv[2].split(","), float(sys.argv[3])
solo = len(sys.argv) > 4 and sys.argv[4] == "solo"
CLIENTS, RATE, JOIN, C_GAP, WARMUP = 12, 2000.0, 5.0, 0.3, 3.0
WEIGHTS = {"A": 3, "B": 1, "C": 1}


async def main():
    start = time.monotonic()
    done = {t: [0, 0] for t in "ABC"}  # requests, tokens after warm-up
    served = {"A": 0, "B": 0}
    trace = []  # (time, D) after warm-up
    waits = []
    errors = {}

    async def one(api, tenant, max_tokens):
        service = max_tokens / RATE
        sent = time.monotonic()
        try:
            reply = await api.chat.completions.create(
                model="m",
                messages=[{"role": "user", "content": "hi"}],
                max_tokens=max_tokens,
                extra_headers={"x-mock-latency-ms": str(int(service * 1000))},
            )
        except openai.APIStatusError as e:
            errors[e.status_code] = errors.get(e.status_code, 0) + 1
            return
        now = time.monotonic()
        tokens = reply.usage.total_tokens
        if now - start >= WARMUP:
            done[tenant][0] += 1
            done[tenant][1] += tokens
            if tenant in served:
                served[tenant] += tokens
                trace.append((now, served["A"] / WEIGHTS["A"] - served["B"] / WEIGHTS["B"]))
        if tenant == "C" and sent - start >= WARMUP:
            waits.append(max(0.0, now - sent - service))

    def client(tenant):
        return openai.AsyncOpenAI(base_url=url + "/v1", api_key=keys["ABC".index(tenant)], max_retries=0, timeout=120)

    async def flood(tenant):
        api = client(tenant)
        while time.monotonic() - start < seconds:
            await one(api, tenant, random.randint(50, 150))

    async def light():
        api = client("C")
        if not solo:
            await asyncio.sleep(JOIN)
        while time.monotonic() - start < seconds:
            await one(api, "C", 100)
            await asyncio.sleep(C_GAP)

    tasks = [light()]
    if not solo:
        tasks += [flood(t) for t in "AB" for _ in range(CLIENTS)]
    await asyncio.gather(*tasks)
    values = [d for _, d in trace] or [0.0]
    window_1s = 0.0
    first = 0
    for t, d in trace:
        while trace[first][0] < t - 1.0:
            first += 1
        for _, earlier in trace[first:]:
            window_1s = max(window_1s, abs(d - earlier))
    gaps = {"final": abs(values[-1]), "any_window": max(values) - min(values), "window_1s": window_1s}
    waits.sort()
    pct = lambda p: waits[min(len(waits) - 1, int(p * len(waits)))] * 1000 if waits else 0.0
    print(json.dumps({"done": done, "gap": gaps, "c_p50_ms": pct(0.5), "c_p99_ms": pct(0.99),
                      "c_n": len(waits), "errors": errors}))


asyncio.run(main())

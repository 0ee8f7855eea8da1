#!/usr/bin/env python3
"""The chaos harness: two obleth replicas under closed-loop load while their
dependencies fail in sequence, then one table of what the ledger holds
against what the clients saw.

Locally (the default) it starts everything itself in a work directory: its
own ClickHouse, Redis and PostgreSQL instances (so it may kill them), the
mock upstream, and two obleth replicas sharing Redis and PostgreSQL, each
with its own usage log. Faults, in order: SIGKILL a replica and restart it;
SIGSTOP ClickHouse, later stop and restart it; kill Redis and restart it
empty; stop PostgreSQL for a few seconds (an admin write meanwhile must
fail cleanly, and work again once it is back). Against a running deployment (--target) it drives
load and checks the ledger; each fault is then a shell command given in the
environment (CHAOS_KILL_REPLICA, CHAOS_FREEZE_CLICKHOUSE, CHAOS_THAW_CLICKHOUSE,
CHAOS_STOP_CLICKHOUSE, CHAOS_START_CLICKHOUSE, CHAOS_STOP_REDIS,
CHAOS_START_REDIS, CHAOS_STOP_POSTGRES, CHAOS_START_POSTGRES), skipped when
unset.

Exit status 1 when any completed 2xx request has no row (missing), any
request has two rows (duplicates), or a tenant's committed spend exceeds its
budget (overshoot).
"""

import argparse
import collections
import http.client
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

ADMIN_TOKEN = os.environ.get("CHAOS_ADMIN_TOKEN", "chaos-admin-token-0123456789abcdef0123")
OPEN_KEY = "obk_chaos_open_000000000000000000"


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_port(port, limit=30.0):
    deadline = time.time() + limit
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"port {port} never opened")


def log(message):
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


class Local:
    """The processes a local run starts, and the faults done to them."""

    def __init__(self, work, binaries):
        self.work = work
        self.bin = binaries
        self.procs = {}
        self.ch_http = free_port()
        self.redis_port = free_port()
        self.pg_port = free_port()
        self.upstream_port = free_port()
        self.replicas = {}

    def spawn(self, name, argv, env=None, **kw):
        out = open(os.path.join(self.work, f"{name}.log"), "ab")
        proc = subprocess.Popen(argv, stdout=out, stderr=out, env=env, **kw)
        self.procs[name] = proc
        return proc

    # ClickHouse: Debian's server with a configuration of its own.
    def start_clickhouse(self):
        root = os.path.join(self.work, "clickhouse")
        os.makedirs(root, exist_ok=True)
        with open(os.path.join(root, "config.xml"), "w") as f:
            f.write(
                f"""<?xml version="1.0"?><yandex>
<logger><level>warning</level><console>1</console></logger>
<http_port>{self.ch_http}</http_port><tcp_port>{free_port()}</tcp_port><listen_host>127.0.0.1</listen_host>
<path>{root}/data/</path><tmp_path>{root}/tmp/</tmp_path>
<user_files_path>{root}/user_files/</user_files_path><format_schema_path>{root}/schemas/</format_schema_path>
<users_config>{root}/users.xml</users_config>
<default_profile>default</default_profile><default_database>default</default_database>
<mark_cache_size>104857600</mark_cache_size><uncompressed_cache_size>104857600</uncompressed_cache_size>
</yandex>
"""
            )
        with open(os.path.join(root, "users.xml"), "w") as f:
            f.write(
                """<?xml version="1.0"?><yandex><profiles><default></default></profiles>
<users><default><password></password><networks><ip>127.0.0.1</ip></networks>
<profile>default</profile><quota>default</quota></default></users>
<quotas><default></default></quotas></yandex>
"""
            )
        self.spawn(
            "clickhouse",
            ["/usr/sbin/clickhouse-server", f"--config-file={root}/config.xml"],
            cwd=root,
        )
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                if clickhouse(self.ch_url(), "SELECT 1").strip() == "1":
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError("ClickHouse did not come up")

    def ch_url(self):
        return f"http://127.0.0.1:{self.ch_http}"

    def start_redis(self):
        self.spawn(
            "redis",
            ["redis-server", "--port", str(self.redis_port), "--bind", "127.0.0.1",
             "--save", "", "--appendonly", "no"],
        )
        wait_port(self.redis_port)

    # PostgreSQL: a cluster of its own, run as the postgres user.
    def pg(self, *args):
        return subprocess.run(
            ["runuser", "-u", "postgres", "--", *args],
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )

    def start_postgres(self):
        bindir = sorted(
            d for d in os.listdir("/usr/lib/postgresql") if d.isdigit()
        )[-1]
        self.pg_bin = f"/usr/lib/postgresql/{bindir}/bin"
        self.pg_data = os.path.join(self.work, "pg")
        os.makedirs(self.pg_data)
        shutil.chown(self.pg_data, "postgres", "postgres")
        self.pg(f"{self.pg_bin}/initdb", "-D", self.pg_data, "-A", "trust", "-U", "postgres")
        self.pg_ctl("start")

    def pg_ctl(self, action):
        self.pg(
            f"{self.pg_bin}/pg_ctl", "-D", self.pg_data, "-w", "-m", "fast",
            "-l", os.path.join(self.pg_data, "server.log"),
            "-o", f"-p {self.pg_port} -k {self.pg_data} -c listen_addresses=127.0.0.1",
            action,
        )

    def start_upstream(self):
        self.spawn(
            "upstream",
            [self.bin["mock"], "--listen", f"127.0.0.1:{self.upstream_port}",
             "--name", "vllm", "--threads", "1", "--tokens-per-second", "2000"],
        )
        wait_port(self.upstream_port)

    def replica_config(self, name):
        r = self.replicas[name]
        return f"""server: {{ threads: 1, grace: 2s }}
listeners: [{{ address: "127.0.0.1:{r['port']}" }}]
admin: {{ address: "127.0.0.1:{r['admin']}" }}
metrics: {{ address: "127.0.0.1:{r['metrics']}" }}
access_log: {{ format: "off" }}
store: {{ database_url: "postgres://postgres@127.0.0.1:{self.pg_port}/postgres" }}
redis: {{ url: "redis://127.0.0.1:{self.redis_port}", prefix: "chaos:" }}
budgets: {{ fail_open: true }}
telemetry:
  wal_path: {r['wal']}
  replica: {name}
  clickhouse: {{ url: "{self.ch_url()}", batch_interval: 200ms, timeout: 2s }}
pools:
  - name: p
    servers: [{{ address: "127.0.0.1:{self.upstream_port}" }}]
seed:
  tenants: [{{ name: open }}]
  models: [{{ name: m, pool: p, upstream_model: mock-model, max_in_flight: 64 }}]
  keys: [{{ tenant: open, name: k, secret: {OPEN_KEY} }}]
routes:
  - name: llm
    match: {{ path: {{ prefix: /v1/ }} }}
    llm: {{}}
"""

    def add_replica(self, name):
        self.replicas[name] = {
            "port": free_port(), "admin": free_port(), "metrics": free_port(),
            "wal": os.path.join(self.work, f"wal-{name}"),
        }
        path = os.path.join(self.work, f"{name}.yaml")
        with open(path, "w") as f:
            f.write(self.replica_config(name))
        self.replicas[name]["config"] = path

    def start_replica(self, name):
        r = self.replicas[name]
        env = dict(os.environ, OBLETH_ADMIN_TOKEN=ADMIN_TOKEN, RUST_LOG="warn")
        self.spawn(name, [self.bin["obleth"], "run", "-c", r["config"]], env=env)
        wait_port(r["port"])
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{r['admin']}/readyz", timeout=1):
                    return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"{name} never became ready")

    def send(self, name, sig):
        self.procs[name].send_signal(sig)

    def stop(self, name, sig=signal.SIGTERM):
        proc = self.procs[name]
        proc.send_signal(sig)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def close(self):
        for name, proc in self.procs.items():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        if getattr(self, "pg_data", None):
            try:
                self.pg_ctl("stop")
            except subprocess.CalledProcessError:
                pass


def clickhouse(url, sql):
    req = urllib.request.Request(url, data=sql.encode(), method="POST")
    with urllib.request.urlopen(req, timeout=10) as resp:
        return resp.read().decode()


def admin(base, path, method="GET", body=None):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(base + path, data=data, method=method)
    req.add_header("Authorization", f"Bearer {ADMIN_TOKEN}")
    if data:
        req.add_header("Content-Type", "application/json")
    # Longer than the store's 5 s wait for a connection, so a write while
    # PostgreSQL is down shows its answer (503), not a client timeout.
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read() or b"null")


def admin_status(base, path, body):
    """The status of an admin PATCH, 0 when it got no answer."""
    try:
        admin(base, path, "PATCH", body)
        return 200
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return 0


def metric(base, name):
    try:
        with urllib.request.urlopen(base + "/metrics", timeout=2) as resp:
            text = resp.read().decode()
    except OSError:
        return None
    total = None
    for line in text.splitlines():
        if line.startswith(name) and (len(line) == len(name) or line[len(name)] in " {"):
            total = (total or 0.0) + float(line.rsplit(" ", 1)[1])
    return total


class Load:
    """Closed-loop clients; every request's id, status and completeness."""

    def __init__(self, targets, workers, keys):
        self.targets = targets  # [(replica name, host, port)]
        self.keys = keys  # {"open": secret, "metered": secret}
        self.workers = workers
        self.stop = threading.Event()
        self.records = []
        self.lock = threading.Lock()
        self.threads = []

    def run_worker(self, n):
        rng = random.Random(n)
        conns = {}
        i = 0
        while not self.stop.is_set():
            i += 1
            replica, host, port = self.targets[i % len(self.targets)]
            metered = rng.random() < 0.3
            stream = rng.random() < 0.5
            rid = f"w{n}-{i}"
            body = json.dumps({
                "model": "m", "stream": stream, "max_tokens": 8,
                "messages": [{"role": "user", "content": "one two three"}],
            })
            headers = {
                "Authorization": f"Bearer {self.keys['metered' if metered else 'open']}",
                "Content-Type": "application/json", "X-Request-Id": rid,
            }
            started = time.time()
            status, complete = 0, False
            try:
                conn = conns.get(replica) or http.client.HTTPConnection(host, port, timeout=10)
                conns[replica] = conn
                conn.request("POST", "/v1/chat/completions", body, headers)
                resp = conn.getresponse()
                status = resp.status
                data = resp.read()
                if status != 200:
                    complete = True
                elif stream:
                    complete = data.endswith(b"data: [DONE]\n\n")
                else:
                    complete = "usage" in json.loads(data)
            except (OSError, http.client.HTTPException, ValueError):
                conns.pop(replica, None)
                time.sleep(0.05)
            with self.lock:
                self.records.append({
                    "id": rid, "replica": replica, "status": status, "complete": complete,
                    "tenant": "metered" if metered else "open",
                    "started": started, "ended": time.time(),
                })

    def start(self):
        for n in range(self.workers):
            t = threading.Thread(target=self.run_worker, args=(n,), daemon=True)
            t.start()
            self.threads.append(t)

    def finish(self):
        self.stop.set()
        for t in self.threads:
            t.join(timeout=15)


def hook(name):
    """Runs the environment's command for a fault against a deployment."""
    command = os.environ.get(name)
    if not command:
        log(f"skipped {name} (not set)")
        return
    subprocess.run(command, shell=True, check=False)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=int(os.environ.get("CHAOS_SECONDS", 180)),
                        help="length of the load phase (faults are spread over it)")
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--target", action="append",
                        help="a replica's data-plane URL (repeatable); with it nothing is started")
    parser.add_argument("--admin", help="the admin API URL of the deployment (with --target)")
    parser.add_argument("--clickhouse", help="ClickHouse's HTTP URL (with --target)")
    parser.add_argument("--obleth", default="target/debug/obleth")
    parser.add_argument("--mock", default="target/debug/obleth-mock-upstream")
    args = parser.parse_args()

    # Stopped from outside, it still stops everything it started.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    work = tempfile.mkdtemp(prefix="obleth-chaos-")
    os.chmod(work, 0o755)
    local = None
    outage = [None, None]
    try:
        if args.target:
            targets = []
            for i, url in enumerate(args.target):
                u = urllib.parse.urlparse(url)
                targets.append((f"r{i}", u.hostname, u.port or 80))
            admin_url = args.admin
            ch_url = args.clickhouse
            metric_urls = []
        else:
            local = Local(work, {"obleth": args.obleth, "mock": args.mock})
            log(f"work directory {work}")
            local.start_clickhouse()
            local.start_redis()
            local.start_postgres()
            local.start_upstream()
            for name in ("a", "b"):
                local.add_replica(name)
                local.start_replica(name)
            targets = [(n, "127.0.0.1", r["port"]) for n, r in local.replicas.items()]
            admin_url = f"http://127.0.0.1:{local.replicas['a']['admin']}"
            ch_url = local.ch_url()
            metric_urls = [f"http://127.0.0.1:{r['metrics']}" for r in local.replicas.values()]
        # Through the admin API, not the seed: a replica restarted by a fault
        # applies its seed again, which would reset the budget set below.
        metered = admin(admin_url, "/api/v1/tenants", "POST",
                        {"name": f"metered-{os.getpid()}", "budget_tokens": 10**9})
        made = admin(admin_url, f"/api/v1/tenants/{metered['id']}/keys", "POST", {"name": "chaos"})
        keys = {"open": os.environ.get("CHAOS_OPEN_KEY", OPEN_KEY), "metered": made["secret"]}
        load = Load(targets, args.workers, keys)
        load.start()
        start = time.time()
        at = lambda fraction: start + args.seconds * fraction  # noqa: E731

        def until(t):
            time.sleep(max(0.0, t - time.time()))

        # Size the metered tenant's budget from its first seconds of spend so
        # it runs out late in the run, after Redis came back: enforcement
        # then depends on the budget rebuilt from the ledger.
        until(at(0.1))
        spent = admin(admin_url, f"/api/v1/tenants/{metered['id']}/budget")["standing"]["committed_tokens"]
        rate = spent / max(time.time() - start, 1)
        budget = int(spent + rate * args.seconds * 0.75)
        admin(admin_url, f"/api/v1/tenants/{metered['id']}", "PATCH", {"budget_tokens": budget})
        log(f"metered tenant: {rate:.0f} tokens/s, budget set to {budget}")

        until(at(0.15))
        log("fault: SIGKILL replica a")
        if local:
            local.send("a", signal.SIGKILL)
            local.procs["a"].wait()
            time.sleep(2)
            local.start_replica("a")
            log("replica a restarted")
        else:
            hook("CHAOS_KILL_REPLICA")

        until(at(0.3))
        log("fault: SIGSTOP ClickHouse")
        local.send("clickhouse", signal.SIGSTOP) if local else hook("CHAOS_FREEZE_CLICKHOUSE")
        until(at(0.38))
        local.send("clickhouse", signal.SIGCONT) if local else hook("CHAOS_THAW_CLICKHOUSE")
        log("ClickHouse thawed")

        until(at(0.45))
        log("fault: stop ClickHouse")
        if local:
            local.stop("clickhouse")
        else:
            hook("CHAOS_STOP_CLICKHOUSE")
        until(at(0.52))
        local.start_clickhouse() if local else hook("CHAOS_START_CLICKHOUSE")
        log("ClickHouse started again")

        until(at(0.55))
        log("fault: kill Redis for 30 s")
        outage[0] = time.time()
        if local:
            local.stop("redis", signal.SIGKILL)
        else:
            hook("CHAOS_STOP_REDIS")
        until(outage[0] + min(30, args.seconds * 0.2))
        local.start_redis() if local else hook("CHAOS_START_REDIS")
        outage[1] = time.time()
        log("Redis started again, empty")
        # With the spend rebuilt from the ledger, lower the budget so that
        # it runs out in the last part of the run: enforcement after the
        # outage is what the overshoot line checks.
        time.sleep(2)
        view = admin(admin_url, f"/api/v1/tenants/{metered['id']}/budget")
        spent = view["standing"]["committed_tokens"]
        rate = spent / max(time.time() - start, 1)
        budget = int(spent + rate * max(at(1.0) - time.time(), 1) * 0.5)
        admin(admin_url, f"/api/v1/tenants/{metered['id']}", "PATCH", {"budget_tokens": budget})
        log(f"metered tenant: {spent} tokens spent, budget lowered to {budget}")

        until(at(0.85))
        log("fault: stop PostgreSQL for 5 s, then start it")
        pg = {"down": [time.time(), None]}
        local.pg_ctl("stop") if local else hook("CHAOS_STOP_POSTGRES")
        time.sleep(1)
        pg["write_while_down"] = admin_status(admin_url, f"/api/v1/tenants/{metered['id']}",
                                              {"weight": 2})
        until(pg["down"][0] + 5)
        local.pg_ctl("start") if local else hook("CHAOS_START_POSTGRES")
        pg["down"][1] = time.time()
        while time.time() < pg["down"][1] + 30:
            if admin_status(admin_url, f"/api/v1/tenants/{metered['id']}", {"weight": 1}) == 200:
                break
            time.sleep(0.2)
        pg["writes_back_after"] = time.time() - pg["down"][1]
        log(f"PostgreSQL back; admin writes work again after {pg['writes_back_after']:.1f} s")

        until(at(1.0))
        load.finish()
        log("load stopped; waiting for the usage logs to drain")
        deadline = time.time() + 120
        while metric_urls and time.time() < deadline:
            backlogs = [metric(u, "obleth_telemetry_backlog_bytes") for u in metric_urls]
            if all(b == 0 for b in backlogs):
                break
            time.sleep(0.5)
        time.sleep(1)

        report = verify(load.records, ch_url, admin_url, outage, budget, metered["id"], pg)
        print(report["table"])
        return 1 if report["failed"] else 0
    finally:
        if local:
            local.close()
        shutil.rmtree(work, ignore_errors=True)


def verify(records, ch_url, admin_url, outage, budget, tenant_id, pg):
    rows = clickhouse(
        ch_url,
        "SELECT request_id, outcome, status, input_tokens + output_tokens, tenant "
        "FROM obleth.usage FORMAT TSV",
    )
    by_id = collections.defaultdict(list)
    for line in rows.splitlines():
        rid, outcome, status, tokens, tenant = line.split("\t")
        by_id[rid].append((outcome, int(status), int(tokens), tenant))
    sent = len(records)
    completed = [r for r in records if r["complete"]]
    ok = [r for r in completed if 200 <= r["status"] < 300]
    statuses = collections.Counter(r["status"] for r in completed if r["status"] >= 300)
    missing = [r["id"] for r in ok if len(by_id.get(r["id"], [])) == 0]
    duplicates = [rid for rid, found in by_id.items() if len(found) > 1]
    client_ids = {r["id"] for r in records}
    orphans = [rid for rid in by_id if rid not in client_ids]
    crashed = sum(1 for found in by_id.values() for f in found if f[0] == "crashed")
    during_outage = sum(
        1 for r in ok if outage[0] and outage[1] and outage[0] <= r["started"] <= outage[1]
    )
    pg_down = pg["down"]
    during_pg = sum(1 for r in ok if pg_down[1] and pg_down[0] <= r["started"] <= pg_down[1])
    committed = admin(admin_url, f"/api/v1/tenants/{tenant_id}/budget")["standing"]["committed_tokens"]
    metered_rows = sum(
        f[2] for found in by_id.values() for f in found if f[3] == tenant_id and f[0] == "completed"
    )
    metered_crashed = sum(
        f[2] for found in by_id.values() for f in found if f[3] == tenant_id and f[0] == "crashed"
    )
    # Spend over the limit: the committed spend the budget store enforces.
    # The ledger's tokens are shown beside it; they can pass the budget by
    # what another replica had not shipped when Redis came back empty (the
    # documented bound of the ledger check).
    overshoot = max(0, committed - budget)
    ledger_over = max(0, metered_rows - budget)
    lines = [
        ("sent", sent),
        ("completed (client saw the whole response)", len(completed)),
        ("completed 2xx", len(ok)),
        ("non-2xx by status", dict(sorted(statuses.items())) or "none"),
        ("rows in ClickHouse", sum(len(v) for v in by_id.values())),
        ("crashed rows (requests cut off by a kill)", crashed),
        ("missing (completed 2xx without a row)", len(missing)),
        ("duplicates (requests with two rows)", len(duplicates)),
        ("rows without a client record", len(orphans)),
        ("2xx served during the Redis outage (fail-open)", during_outage),
        ("2xx served while PostgreSQL was down (keys from caches)", during_pg),
        ("admin write while PostgreSQL was down: status", pg["write_while_down"]),
        ("admin writes work again after PostgreSQL is back (s)", f"{pg['writes_back_after']:.1f}"),
        ("metered: committed budget spend (tokens)", committed),
        ("metered: tokens in its completed rows", metered_rows),
        ("metered: tokens reserved by its crashed rows", metered_crashed),
        ("metered: budget (tokens)", budget),
        ("budget overshoot (committed spend over the budget)", overshoot),
        ("tokens in completed rows over the budget", ledger_over),
    ]
    table = "\n".join(["| measure | value |", "| --- | ---: |"] + [f"| {k} | {v} |" for k, v in lines])
    if missing:
        table += f"\nmissing: {missing[:20]}"
    if duplicates:
        table += f"\nduplicates: {duplicates[:20]}"
    return {"table": table, "failed": bool(missing or duplicates or overshoot)}


if __name__ == "__main__":
    sys.exit(main())

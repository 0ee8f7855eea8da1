#!/usr/bin/env bash
# Checks deploy/docker without a Docker engine:
# - haproxy.cfg passes `haproxy -c`, and HAProxy run on it in a network
#   namespace finds stand-in replicas through a stand-in for Docker's DNS;
# - the compose file passes `docker compose config` (where Compose v2 is
#   installed) and, with PyYAML, a structural check: what it mounts exists,
#   host ports are distinct, secrets are marked in .env.example, and
#   obleth.yaml, haproxy.cfg, prometheus.yml and the Dockerfile agree;
# - wal-slot.sh gives each replica a usage log of its own;
# - `obleth check` accepts deploy/docker/obleth.yaml in the compose
#   environment, and (as root) the image's runtime holds: uid 10001, a
#   read-only root, writes only under /var/lib/obleth, the HEALTHCHECK
#   passes, when given a binary (obleth-mock-upstream is taken from beside it):
#     OBLETH_BIN=target/debug/obleth tests/deploy/compose.sh
# One line per check; exits 1 if any failed.
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 1

dir=deploy/docker
# shellcheck source=tests/deploy/lib.sh
source tests/deploy/lib.sh
skip() { echo "skip  $1 ($2)"; }

# Compose v1 (`docker-compose` 1.x) does not read the Compose specification.
compose=()
if docker compose version >/dev/null 2>&1; then
  compose=(docker compose)
elif [[ "$(docker-compose version --short 2>/dev/null)" =~ ^v?[2-9] ]]; then
  compose=(docker-compose)
fi

# What the checks below read, in Python with PyYAML:
#   structure  the compose file against its neighbours (exit 1 with reasons)
#   env        obleth's environment under compose, KEY=VALUE per line
#   hosts      the compose service names, one per line
inspect() {
  python3 - "$1" "$dir" <<'EOF'
import os, re, sys, fnmatch
import yaml

mode, base = sys.argv[1], sys.argv[2]
compose_path = os.path.join(base, "docker-compose.yml")
compose_text = open(compose_path).read()
compose = yaml.safe_load(compose_text)
services = compose.get("services", {})

def dotenv(path):
    values, marked, pending = {}, set(), False
    for line in open(path):
        line = line.strip()
        if not line:
            pending = False
        elif line.startswith("#"):
            pending = pending or "CHANGE IN PRODUCTION" in line
        elif "=" in line:
            key, value = line.split("=", 1)
            values[key] = value
            if pending:
                marked.add(key)
            pending = False
    return values, marked

env_values, env_marked = dotenv(os.path.join(base, ".env.example"))
VAR = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?)([-?])([^}]*))?\}|\$([A-Za-z_][A-Za-z0-9_]*)")

def interpolate(text):
    def one(m):
        if m.group(0) == "$$":
            return "$"
        name = m.group(1) or m.group(5)
        value = env_values.get(name)
        empty_counts = m.group(2) == ":"
        missing = value is None or (empty_counts and value == "")
        if m.group(3) == "-" and missing:
            return m.group(4)
        if m.group(3) == "?" and missing:
            raise SystemExit(f"{name} is required but has no value in .env.example")
        return value or ""
    return VAR.sub(one, text)

# COMPOSE_OVERRIDE names a file layered on the main one (-f a -f b): its
# services are added and obleth's environment is extended.
override = os.environ.get("COMPOSE_OVERRIDE")
if override and mode in ("hosts", "env"):
    layered = yaml.safe_load(open(override)).get("services", {})
    for name, service in layered.items():
        if name == "obleth":
            services["obleth"].setdefault("environment", {}).update(service.get("environment", {}))
        else:
            services.setdefault(name, service)
if mode == "hosts":
    print("\n".join(services))
    sys.exit(0)
if mode == "env":
    for key, value in services["obleth"].get("environment", {}).items():
        # A key without a value passes on what .env has, if anything.
        value = env_values.get(key) if value is None else interpolate(str(value))
        if value is not None:
            print(f"{key}={value}")
    sys.exit(0)

problems = []
def problem(text):
    problems.append(text)

def port(address):
    return int(str(address).rsplit(":", 1)[1])

if "version" in compose:
    problem("the Compose specification has no top-level version:")
expected = {"haproxy", "obleth", "postgres", "redis", "clickhouse", "mock", "prometheus", "grafana"}
if set(services) != expected:
    problem(f"services are {sorted(services)}, expected {sorted(expected)}")

# Variables: each one used is listed in .env.example; each required one
# (a secret) has a value there, under a CHANGE IN PRODUCTION mark.
for m in VAR.finditer(compose_text):
    name = m.group(1) or m.group(5)
    if name is None:
        continue
    if name not in env_values:
        problem(f"${{{name}}} is not listed in .env.example")
    if m.group(3) == "?" or (m.group(1) and m.group(3) is None):
        if not env_values.get(name):
            problem(f"{name} is required but empty in .env.example")
        if name not in env_marked:
            problem(f"{name} is not marked CHANGE IN PRODUCTION in .env.example")

# Scaling: replicas can be neither named nor given host ports.
obleth = services.get("obleth", {})
for key in ("container_name", "ports", "hostname"):
    if key in obleth:
        problem(f"obleth has {key}:, which --scale cannot replicate")
if not obleth.get("read_only"):
    problem("obleth does not run with a read-only root filesystem")

# Files: the build and every bind mount name something that exists.
mounts = {}
for name, svc in services.items():
    build = svc.get("build")
    if build:
        context = os.path.normpath(os.path.join(base, build.get("context", ".")))
        dockerfile = os.path.join(context, build.get("dockerfile", "Dockerfile"))
        if not os.path.isfile(dockerfile):
            problem(f"{name}: build file {dockerfile} is missing")
    for volume in svc.get("volumes", []):
        source, target = (volume.get("source"), volume.get("target")) if isinstance(volume, dict) \
            else volume.split(":")[:2]
        if source.startswith((".", "/")):
            path = os.path.normpath(os.path.join(base, source))
            if not os.path.exists(path):
                problem(f"{name}: mounts {source}, which does not exist")
            mounts[(name, target)] = path
        elif source not in compose.get("volumes", {}):
            problem(f"{name}: volume {source} is not declared")
    for net in svc.get("networks", []):
        if net not in compose.get("networks", {}):
            problem(f"{name}: network {net} is not declared")

# Host ports: each taken once.
taken = {}
for name, svc in services.items():
    for published in svc.get("ports", []):
        parts = interpolate(str(published)).split(":")
        host = parts[-2] if len(parts) >= 2 else parts[-1]
        if host in taken:
            problem(f"host port {host} is published by {taken[host]} and {name}")
        taken[host] = name

# Ports: obleth.yaml's listeners are what HAProxy, Prometheus and the
# image's health check ask.
conf = yaml.safe_load(open(os.path.join(base, "obleth.yaml")))
data_port = port(conf["listeners"][0]["address"])
admin_port = port(conf["admin"]["address"])
metrics_port = port(conf["metrics"]["address"])
haproxy = open(os.path.join(base, "haproxy.cfg")).read()
if f"obleth:{data_port}" not in haproxy or not re.search(rf"check port {admin_port}\b", haproxy):
    problem(f"haproxy.cfg does not send to obleth:{data_port} with readiness checks on port {admin_port}")
if not re.search(r"^\s*resolvers docker\s*$", haproxy, re.M) or "server-template" not in haproxy:
    problem("haproxy.cfg does not find the replicas with server-template through resolvers")

prometheus = yaml.safe_load(open(os.path.join(base, "prometheus.yml")))
sd = [c for job in prometheus.get("scrape_configs", []) for c in job.get("dns_sd_configs", [])]
if not any(c.get("names") == ["obleth"] and c.get("type") == "A" and c.get("port") == metrics_port for c in sd):
    problem(f"prometheus.yml does not discover every replica by DNS (obleth, A, port {metrics_port})")
for rule_file in prometheus.get("rule_files", []):
    if ("prometheus", rule_file) not in mounts:
        problem(f"prometheus.yml loads {rule_file}, which compose does not mount")

dockerfile = open(os.path.join(base, "Dockerfile")).read()
exposed = set(map(int, re.search(r"^EXPOSE (.+)$", dockerfile, re.M).group(1).split()))
if exposed != {data_port, admin_port, metrics_port}:
    problem(f"the Dockerfile exposes {sorted(exposed)}, obleth.yaml listens on {data_port}, {admin_port}, {metrics_port}")
if f"/dev/tcp/127.0.0.1/{admin_port}" not in dockerfile:
    problem(f"the image's health check does not ask the admin port {admin_port}")
for package in re.findall(r"-p ([\w-]+)", dockerfile):
    manifests = ["Cargo.toml", "filters/Cargo.toml", "tests/mock-upstream/Cargo.toml"]
    if not any(re.search(rf'^name = "{package}"$', open(m).read(), re.M) for m in manifests):
        problem(f"the Dockerfile builds package {package}, which the workspace does not have")

# What the Dockerfile copies from the context must not be ignored.
ignore = [l.strip() for l in open(".dockerignore") if l.strip() and not l.startswith("#")]
def ignored(path):
    verdict = False
    for pattern in ignore:
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/")
        parts = path.split("/")
        if any(fnmatch.fnmatch("/".join(parts[:i]), pattern) for i in range(1, len(parts) + 1)):
            verdict = not negate
    return verdict
for source in re.findall(r"^COPY (?!--from)(\S+) ", dockerfile, re.M):
    if source != "." and (not os.path.exists(source) or ignored(source)):
        problem(f"the Dockerfile copies {source}, which is missing or in .dockerignore")
members = re.search(r"^members = \[(.*)\]", open("Cargo.toml").read(), re.M).group(1)
for member in re.findall(r'"([^"]+)"', members):
    for needed in ("Cargo.toml", "src"):
        path = os.path.normpath(os.path.join(member, needed))
        if ignored(path):
            problem(f".dockerignore leaves out {path}, which the build needs")
for needed in ("Cargo.lock", "migrations"):
    if ignored(needed):
        problem(f".dockerignore leaves out {needed}, which the build needs")

# Grafana: the provisioned dashboard folder holds the mounted dashboard, and
# the data source is the compose Prometheus.
provisioning = mounts.get(("grafana", "/etc/grafana/provisioning"))
if provisioning is None:
    problem("grafana's provisioning folder is not mounted")
else:
    for kind in ("datasources", "dashboards"):
        for f in sorted(os.listdir(os.path.join(provisioning, kind))):
            doc = yaml.safe_load(open(os.path.join(provisioning, kind, f)))
            for ds in doc.get("datasources", []):
                host = re.match(r"https?://([^:/]+)", ds.get("url", ""))
                if not host or host.group(1) not in services:
                    problem(f"data source {ds.get('name')} is not a compose service")
            for provider in doc.get("providers", []):
                path = provider.get("options", {}).get("path", "")
                if not any(s == "grafana" and t.startswith(path + "/") for s, t in mounts):
                    problem(f"dashboard provider {provider.get('name')} reads {path}, where nothing is mounted")

if problems:
    print("\n".join(dict.fromkeys(problems)))
    sys.exit(1)
EOF
}

# Starts a replica that keeps the slot it claimed and writes its path to $1.
hold_slot() {
  sh "$dir/wal-slot.sh" sh -c 'echo "$OBLETH_WAL_PATH" >"$0"; exec sleep 30' "$1" 2>/dev/null &
  holders+=($!)
  for _ in $(seq 50); do [ -s "$1" ] && return; sleep 0.1; done
}

# Two replicas take slot-1 and slot-2; with every slot held a third refuses
# to start; the slot a stopped replica held is taken by the next one.
wal_slots() {
  local root out holders=()
  root="$(mktemp -d)"
  trap 'kill "${holders[@]}" 2>/dev/null; rm -rf "$root"' RETURN
  export OBLETH_WAL_ROOT="$root" OBLETH_WAL_SLOTS=2
  hold_slot "$root/a"
  hold_slot "$root/b"
  [ "$(cat "$root/a") $(cat "$root/b")" = "$root/slot-1 $root/slot-2" ] \
    || { echo "the replicas took $(cat "$root/a") and $(cat "$root/b")"; return 1; }
  if sh "$dir/wal-slot.sh" true 2>/dev/null; then
    echo "a third replica started with both slots held"; return 1
  fi
  kill "${holders[0]}"
  wait "${holders[0]}" 2>/dev/null
  out="$(sh "$dir/wal-slot.sh" sh -c 'echo "$OBLETH_WAL_PATH"' 2>/dev/null)"
  [ "$out" = "$root/slot-1" ] || { echo "the freed slot-1 was not taken again: $out"; return 1; }
}

# HAProxy as configured, in a network namespace of its own, in front of a
# stand-in for Docker's DNS (127.0.0.11) that answers `obleth` with three
# stand-in replicas, one of them not ready: the two ready ones share the
# traffic round-robin, the third gets none, a client's X-Forwarded-For is
# replaced by its address, and a request id is set or kept. Only the
# frontends' bind addresses are moved, off the ports the stand-ins take.
haproxy_in_front() {
  unshare --map-root-user --net sh -c 'ip link set lo up && exec python3 - "$0"' "$dir/haproxy.cfg" <<'EOF'
import http.server, json, re, socket, struct, subprocess, sys, tempfile, threading, time, urllib.request

READY = {"127.0.0.2": True, "127.0.0.3": True, "127.0.0.4": False}

def dns():
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.11", 53))
    while True:
        query, peer = sock.recvfrom(4096)
        i, labels = 12, []
        while query[i]:
            labels.append(query[i + 1:i + 1 + query[i]].decode())
            i += 1 + query[i]
        qtype = struct.unpack(">H", query[i + 1:i + 3])[0]
        known = ".".join(labels) == "obleth"
        answers = [socket.inet_aton(ip) for ip in READY] if known and qtype == 1 else []
        head = struct.pack(">HHHHHH", struct.unpack(">H", query[:2])[0],
                           0x8180 if known else 0x8183, 1, len(answers), 0, 0)
        records = b"".join(b"\xc0\x0c" + struct.pack(">HHIH", 1, 1, 5, 4) + a for a in answers)
        sock.sendto(head + query[12:i + 5] + records, peer)

class Replica(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        ip, port = self.server.server_address
        if port == 9090 and self.path in ("/healthz", "/readyz"):
            status, body = (200 if self.path == "/healthz" or READY[ip] else 503), b""
        else:
            status, body = 200, json.dumps({
                "replica": ip, "port": port,
                "xff": self.headers.get_all("x-forwarded-for"),
                "proto": self.headers.get("x-forwarded-proto"),
                "request_id": self.headers.get("x-request-id")}).encode()
        self.send_response(status)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

class Server(http.server.ThreadingHTTPServer):
    def handle_error(self, request, address):
        pass  # HAProxy's checks close before the answer is read

threading.Thread(target=dns, daemon=True).start()
for ip in READY:
    for port in (8080, 9090):
        server = Server((ip, port), Replica)
        threading.Thread(target=server.serve_forever, daemon=True).start()

moved = {":8080": "127.0.0.1:18080", ":9090": "127.0.0.1:19090", ":8404": "127.0.0.1:18404"}
config = re.sub(r"^(\s*bind )(:\d+)", lambda m: m.group(1) + moved[m.group(2)],
                open(sys.argv[1]).read(), flags=re.M)
cfg = tempfile.NamedTemporaryFile("w", suffix=".cfg")
cfg.write(config)
cfg.flush()
haproxy = subprocess.Popen(["haproxy", "-db", "-f", cfg.name],
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

def get(url, headers={}):
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=5) as r:
        return r.read().decode()

def fail(text):
    haproxy.kill()
    sys.exit(f"{text}\n{haproxy.communicate()[1]}")

deadline, up = time.time() + 20, set()
while time.time() < deadline:
    try:
        rows = [r.split(",") for r in get("http://127.0.0.1:18404/;csv").splitlines()[1:]]
        # Columns: proxy, server, ..., status (17), ..., address (73).
        up = {r[73].split(":")[0] for r in rows if r[0] == "obleth" and r[1] != "BACKEND" and r[17] == "UP"}
    except OSError:
        pass
    if up == {"127.0.0.2", "127.0.0.3"}:
        break
    time.sleep(0.5)
else:
    fail(f"in rotation after 20 s: {sorted(up)}, expected the two ready replicas")

seen = [json.loads(get("http://127.0.0.1:18080/v1/models", {"X-Forwarded-For": "203.0.113.9"}))
        for _ in range(4)]
order = [s["replica"] for s in seen]
if sorted(order) != ["127.0.0.2", "127.0.0.2", "127.0.0.3", "127.0.0.3"] or order[0] == order[1]:
    fail(f"requests went to {order}, expected the two ready replicas in turn")
for s in seen:
    if s["xff"] != ["127.0.0.1"] or s["proto"] != "http" \
            or not re.fullmatch(r"[0-9a-f-]{36}", s["request_id"] or ""):
        fail(f"forwarding headers as received: {s}")
kept = json.loads(get("http://127.0.0.1:18080/", {"X-Request-Id": "client-id-1"}))["request_id"]
if kept != "client-id-1":
    fail(f"the client's request id became {kept!r}")
if json.loads(get("http://127.0.0.1:19090/api/v1/capacity"))["port"] != 9090:
    fail("the admin frontend does not reach the replicas' admin port")
haproxy.kill()
haproxy.wait()
EOF
}

# obleth resolves pool servers when it loads the file, so the compose service
# names are mapped to the loopback in a mount namespace of the check's own.
# With an argument, that compose file is layered on the main one.
obleth_check() {
  local hosts env=()
  export COMPOSE_OVERRIDE="${1:-}"
  hosts="$(mktemp)"
  trap 'rm -f "$hosts"; unset COMPOSE_OVERRIDE' RETURN
  { echo "127.0.0.1 localhost"; inspect hosts | sed 's/^/127.0.0.1 /'; } >"$hosts"
  mapfile -t env < <(inspect env)
  env "${env[@]}" unshare --map-root-user --mount sh -c \
    'mount --bind "$1" /etc/hosts && exec "$2" check -c "$3"' sh "$hosts" "$OBLETH_BIN" "$dir/obleth.yaml"
}

# The Dockerfile's HEALTHCHECK command, its argument list NUL-separated.
healthcheck() {
  python3 - "$dir/Dockerfile" <<'EOF'
import json, re, sys
text = open(sys.argv[1]).read().replace("\\\n", " ")
cmd = re.search(r"^HEALTHCHECK\b.*?\sCMD\s+(\[.*\])\s*$", text, re.M)
if cmd:
    sys.stdout.write("".join(arg + "\0" for arg in json.loads(cmd.group(1))))
EOF
}

# Runs "$@" as the image runs its processes: uid/gid 10001, in /var/lib/obleth,
# with the environment Docker gives (PATH, HOME), chrooted into $root.
in_image() {
  env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/var/lib/obleth \
    chroot --userspec=10001:10001 "$root" env -C /var/lib/obleth "$@"
}

# Inside namespaces of image_runtime's own (mount, network, PID): the root
# is the host's / with the image's files bound in where the image has them
# (/usr/local/bin, /etc/obleth, /var/lib/obleth; overlays on their parents
# give them mount points without writing to the host), every mount of it
# read-only but the volume. Arguments: scratch directory, obleth, the mock
# upstream, the configuration, then the health check's command.
image_runtime_inside() {
  local scratch="$1" root="$1/root" bin="$2" mock="$3" conf="$4" obleth code rw path
  shift 4
  fail() { echo "$*"; exit 1; }
  mount --make-rprivate / || fail "cannot make the mounts private"
  ip link set lo up || fail "no loopback in the network namespace"
  mount --rbind / "$root" || fail "cannot bind / at $root"
  for path in usr/local/bin etc/obleth var/lib/obleth; do
    mkdir -p "$scratch/upper/$path" "$scratch/work/$path"
    mount -t overlay overlay "$root/${path%/*}" \
      -o "lowerdir=/${path%/*},upperdir=$scratch/upper/$path,workdir=$scratch/work/$path" \
      || fail "no overlay on /${path%/*}"
    mkdir -p "$root/$path" || fail "cannot make /$path"
  done
  for path in "$scratch/bin:usr/local/bin" "$bin:usr/local/bin/obleth" \
    "$mock:usr/local/bin/obleth-mock-upstream" "$scratch/etc:etc/obleth" "$conf:etc/obleth/obleth.yaml"; do
    mount --bind "${path%:*}" "$root/${path##*:}" || fail "cannot bind ${path%:*} at /${path##*:}"
  done
  # mount(8) cannot make a tree read-only recursively: mount_setattr(2) does,
  # hidden mounts included, leaving each mount's other flags as they are.
  python3 - "$root" <<'EOF' || fail "cannot make $root read-only"
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
attr = (ctypes.c_uint64 * 4)(1, 0, 0, 0)  # attr_set = MOUNT_ATTR_RDONLY
# mount_setattr(AT_FDCWD, root, AT_RECURSIVE, &attr, sizeof attr)
if libc.syscall(442, -100, sys.argv[1].encode(), 0x8000, attr, ctypes.sizeof(attr)):
    sys.exit(f"mount_setattr: {os.strerror(ctypes.get_errno())}")
EOF
  mount --bind "$scratch/volume" "$root/var/lib/obleth" || fail "cannot bind the volume"
  rw="$(awk -v root="$root" '($5 == root || index($5, root "/") == 1) && $5 != root "/var/lib/obleth" \
    && ("," $6 ",") !~ /,ro,/ { print $5 }' /proc/self/mountinfo)"
  [ -z "$rw" ] || fail "writable mounts under the root: $rw"
  for path in / /tmp /var/tmp /etc/obleth /var/lib /usr/local/bin; do
    if (: >"$root$path/.obleth-probe") 2>/dev/null; then
      rm -f "$root$path/.obleth-probe"
      fail "$path is writable in the root"
    fi
  done

  in_image obleth-mock-upstream --listen 127.0.0.1:8000 --name mock-vllm >/dev/null 2>"$scratch/mock.err" &
  for _ in $(seq 50); do (exec 3<>/dev/tcp/127.0.0.1/8000) 2>/dev/null && break; sleep 0.1; done
  in_image obleth run -c /etc/obleth/obleth.yaml >"$scratch/obleth.out" 2>"$scratch/obleth.err" &
  obleth=$!
  for _ in $(seq 200); do
    kill -0 "$obleth" 2>/dev/null || fail "obleth exited during start-up"
    curl -fs --max-time 1 -o /dev/null http://127.0.0.1:9090/readyz && break
    sleep 0.1
  done
  curl -fs --max-time 1 -o /dev/null http://127.0.0.1:9090/readyz || fail "obleth was not ready within 20 s"
  in_image "$@" || fail "the Dockerfile's HEALTHCHECK failed: $*"
  code="$(curl -sS --max-time 10 -o "$scratch/reply" -w '%{http_code}' http://127.0.0.1:8080/v1/chat/completions \
    -H 'authorization: Bearer obk_demo_0000000000000000000000000000' -H 'content-type: application/json' \
    -d '{"model":"mock-model","messages":[{"role":"user","content":"Say hello"}],"max_tokens":5}')"
  [ "$code" = 200 ] || fail "a chat completion with the demo key got $code: $(cat "$scratch/reply")"
  for path in obleth.db obleth-wal; do
    [ "$(stat -c %u:%g "$scratch/volume/$path" 2>/dev/null)" = 10001:10001 ] \
      || fail "/var/lib/obleth/$path was not created by uid 10001; the volume holds:" \
        "$(cd "$scratch/volume" && find . -mindepth 1 -printf '%p %u:%g\n')"
  done
  [ -d "$scratch/volume/obleth-wal" ] || fail "/var/lib/obleth/obleth-wal is not a directory"
  ! grep -Eq ' ERROR |panicked|Read-only file system|Permission denied|os error (13|30)\b' "$scratch/obleth.err" \
    || fail "obleth reported errors on stderr"
  kill -0 "$obleth" 2>/dev/null || fail "obleth exited after serving"
  # Leaving ends the PID namespace, which kills obleth and the mock, and
  # with them the mount namespace and its mounts.
}

# The image's runtime without Docker (see image_runtime_inside), bounded to
# 30 s; a failure shows obleth's stderr.
image_runtime() {
  local scratch hc=() bin rc
  mapfile -d '' -t hc < <(healthcheck)
  [ ${#hc[@]} -gt 0 ] || { echo "no HEALTHCHECK CMD [...] in $dir/Dockerfile"; return 1; }
  bin="$(realpath "$OBLETH_BIN")"
  scratch="$(mktemp -d)"
  trap 'rm -rf "$scratch"' RETURN
  mkdir "$scratch/root" "$scratch/bin" "$scratch/etc" "$scratch/volume"
  touch "$scratch/bin/obleth" "$scratch/bin/obleth-mock-upstream" "$scratch/etc/obleth.yaml"
  chown 10001:10001 "$scratch/volume" && chmod 0750 "$scratch/volume"
  timeout -k 5 30 unshare --mount --net --pid --fork --kill-child --mount-proc \
    bash -c "$(declare -f in_image image_runtime_inside); image_runtime_inside \"\$@\"" image \
    "$scratch" "$bin" "${bin%/*}/obleth-mock-upstream" "$PWD/conf/obleth.yaml" "${hc[@]}"
  rc=$?
  [ "$rc" -eq 0 ] && return 0
  [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ] && echo "did not finish within 30 s"
  [ -e "$scratch/obleth.err" ] && { echo "obleth's stderr:"; sed 's/^/  /' "$scratch/obleth.err"; }
  [ -s "$scratch/mock.err" ] && { echo "the mock upstream's stderr:"; sed 's/^/  /' "$scratch/mock.err"; }
  return 1
}

if command -v haproxy >/dev/null; then
  check "haproxy -c -f $dir/haproxy.cfg" haproxy -c -q -f "$dir/haproxy.cfg"
else
  check "haproxy -c -f $dir/haproxy.cfg" sh -c 'echo "haproxy is not installed"; false'
fi

if ! command -v haproxy >/dev/null || ! command -v ip >/dev/null; then
  skip "haproxy in front of replicas" "needs haproxy and ip(8)"
elif ! unshare --map-root-user --net true 2>/dev/null; then
  skip "haproxy in front of replicas" "no network namespace"
else
  check "haproxy: replicas by DNS, readiness, round robin, forwarding headers" haproxy_in_front
fi

if [ ${#compose[@]} -gt 0 ]; then
  check "${compose[*]} config (with .env.example)" \
    "${compose[@]}" --env-file "$dir/.env.example" -f "$dir/docker-compose.yml" config -q
  check "${compose[*]} config with the Sentinel layer" \
    "${compose[@]}" --env-file "$dir/.env.example" -f "$dir/docker-compose.yml" \
    -f "$dir/docker-compose.sentinel.yml" config -q
else
  skip "docker compose config" "no Compose v2 on this machine"
fi

if python3 -c 'import yaml' 2>/dev/null; then
  check "compose file: mounts, ports, marked secrets, services agree" inspect structure
else
  check "compose file: mounts, ports, marked secrets, services agree" \
    sh -c 'echo "PyYAML is not installed (python3 -m pip install pyyaml)"; false'
fi

if command -v flock >/dev/null; then
  check "wal-slot.sh: one usage log per replica, slots reused" wal_slots
else
  skip "wal-slot.sh" "no flock(1) on this machine"
fi

if [ -z "${OBLETH_BIN:-}" ]; then
  skip "obleth check -c $dir/obleth.yaml" "set OBLETH_BIN to an obleth binary"
elif ! unshare --map-root-user --mount true 2>/dev/null; then
  skip "obleth check -c $dir/obleth.yaml" "no mount namespace to resolve the compose service names in"
else
  check "obleth check -c $dir/obleth.yaml (compose environment)" obleth_check
  check "obleth check -c $dir/obleth.yaml (with the Sentinel layer)" \
    obleth_check "$dir/docker-compose.sentinel.yml"
fi

name="image runtime: uid 10001, read-only root, writes only /var/lib/obleth"
if [ -z "${OBLETH_BIN:-}" ]; then
  skip "$name" "set OBLETH_BIN to an obleth binary"
elif [ ! -x "$(dirname "$OBLETH_BIN")/obleth-mock-upstream" ]; then
  skip "$name" "no obleth-mock-upstream beside $OBLETH_BIN"
elif [ "$(id -u)" != 0 ] || ! unshare --mount --net --pid --fork true 2>/dev/null; then
  skip "$name" "needs root and mount, network and PID namespaces"
else
  check "$name" image_runtime
fi

exit "$failed"

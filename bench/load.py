#!/usr/bin/env python3
"""Signpost's HTTP load benchmarks (BENCHMARKS.md), each figure with its ceiling from the same run.

    python3 bench/load.py ingest  [--seconds 15] [--db sqlite|postgres|both] [--connections 16,64]
    python3 bench/load.py poll    [--seconds 15] [--tasks 100000] [--charities 50]
    python3 bench/load.py burst   [--seconds 15]
    python3 bench/load.py multi   [--seconds 15]

It builds what it runs (`cargo build --release --bin signpost --example ceiling`), installs its
load generator when missing (Debian's `wrk`; `apt-get install -y wrk`), runs everything on
loopback in a temporary HOME, and prints one line per point plus a Markdown table.

ingest: POST the referral ServiceRequest with an explicit performer, one routed by condition,
    and the 6-entry transaction Bundle (each request its own UBRN, so nothing is a duplicate), at
    each connection count, on SQLite (WAL, synchronous=FULL) and PostgreSQL
    (127.0.0.1:5432, database `test`, a schema of its own); alternating with the ceiling
    (bench/ceiling.rs: parse and answer 201; parse and insert one row, same database).
    Throughput, p50 / p99 / p99.9, errors (non-2xx or socket), peak RSS of the server.
poll: seeds N Tasks over C charities into a SQLite database through Signpost's own store
    functions (bench/seed.rs, a thousand per transaction), then one charity polls
    `GET /fhir/Task?owner=...&status=requested&_count=50`, newest first, the change feed, and
    the first again with `If-None-Match` of its last answer (nothing changed: 304s).
burst: 256 connections against a server whose write limit is the default: how much is shed with
    503 + Retry-After, and the latency of what is accepted.
multi: one, two and four `signpost serve` processes on one PostgreSQL schema, each with its
    delivery worker, a local receiver for the charity's webhooks; referrals spread over the
    processes (one wrk per process, together); throughput, and every Task delivered exactly once
    (webhook-ids counted at the receiver after the load).
"""
import argparse, json, os, re, shutil, signal, sqlite3, subprocess, sys, tempfile, time, urllib.request, uuid

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target/release/signpost")
CEILING = os.path.join(ROOT, "target/release/examples/ceiling")
SEED = os.path.join(ROOT, "target/release/examples/seed")
PG = os.environ.get("SIGNPOST_BENCH_POSTGRES", "postgres://postgres@127.0.0.1:5432/test")
GP = "Bearer sp_sandbox_referrer_riverside"
OP = "Bearer sp_sandbox_operator"

LUA = r"""
local template = nil
local counter = 0
local threads = {}
local next_id = 1
function setup(thread)
  thread:set("tid", next_id)
  next_id = next_id + 1
  table.insert(threads, thread)
end
function init(args)
  local f = io.open(os.getenv("BENCH_BODY"), "r")
  template = f:read("*a")
  f:close()
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/fhir+json"
  wrk.headers["Authorization"] = os.getenv("BENCH_AUTH") or ""
end
function request()
  counter = counter + 1
  local unique = string.format("%s%d%09d", os.getenv("BENCH_RUN") or "", tid, counter)
  local body = string.gsub(template, "__UNIQUE__", unique)
  return wrk.format(nil, nil, nil, body)
end
"""

# One result line per run, read back by wrk().
DONE_LUA = r"""
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("RESULT {\"requests\": %d, \"seconds\": %.3f, \"non2xx\": %d, \"socket\": %d, \"p50\": %.3f, \"p99\": %.3f, \"p999\": %.3f}\n",
    summary.requests, summary.duration / 1e6, e.status, e.connect + e.read + e.write + e.timeout,
    latency:percentile(50) / 1000, latency:percentile(99) / 1000, latency:percentile(99.9) / 1000))
end
"""
LUA += DONE_LUA

GET_LUA = r"""
function init(args)
  wrk.headers["Authorization"] = os.getenv("BENCH_AUTH") or ""
  local tag = os.getenv("BENCH_IF_NONE_MATCH")
  if tag and tag ~= "" then wrk.headers["If-None-Match"] = tag end
end
""" + DONE_LUA


def sh(*cmd, **kw):
    return subprocess.run(cmd, check=True, **kw)


def ensure_tools():
    sh("cargo", "build", "--release", "--quiet", "--bin", "signpost", "--example", "ceiling", "--example", "seed", cwd=ROOT)
    if shutil.which("wrk") is None:
        print("installing wrk (apt-get install -y wrk)", file=sys.stderr)
        subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], check=False, stdout=subprocess.DEVNULL)
        if shutil.which("wrk") is None:
            subprocess.run(["apt-get", "update", "-qq"], check=False, stdout=subprocess.DEVNULL)
            sh("apt-get", "install", "-y", "-qq", "wrk", stdout=subprocess.DEVNULL)


def free_port():
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_up(port, path="/livez", proc=None):
    for _ in range(300):
        if proc is not None and proc.poll() is not None:
            raise SystemExit(f"the server on {port} exited")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=1)
            return
        except urllib.error.HTTPError:
            return
        except Exception:
            time.sleep(0.1)
    raise SystemExit(f"nothing listens on {port}")


def peak_rss_mb(pid):
    try:
        for line in open(f"/proc/{pid}/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def call(base, method, path, body=None, key=GP):
    req = urllib.request.Request(base + path, method=method, data=json.dumps(body).encode() if body is not None else None,
                                 headers={"Authorization": key, "Content-Type": "application/fhir+json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read() or b"null")


def wrk(url, seconds, connections, body_file=None, auth=GP, script=LUA):
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(script)
        lua = f.name
    env = dict(os.environ, BENCH_AUTH=auth, BENCH_RUN=str(time.time_ns() % 10**8))
    if body_file:
        env["BENCH_BODY"] = body_file
    out = subprocess.run(["wrk", "-t", "2", "-c", str(connections), "-d", f"{seconds}s", "--timeout", "10s", "-s", lua, url],
                         env=env, capture_output=True, text=True)
    os.unlink(lua)
    m = re.search(r"RESULT (\{.*\})", out.stdout)
    if not m:
        raise SystemExit(f"wrk gave no result: {out.stdout}\n{out.stderr}")
    r = json.loads(m.group(1))
    r["rps"] = r["requests"] / r["seconds"]
    return r


class Server:
    def __init__(self, argv, env=None, cwd=None):
        self.port = free_port()
        argv = [a.replace("PORT", str(self.port)) for a in argv]
        self.proc = subprocess.Popen(argv, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_up(self.port, "/livez" if argv[0] == BIN else "/", self.proc)

    def rss(self):
        return peak_rss_mb(self.proc.pid)

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def pg_schema():
    name = "bench_" + uuid.uuid4().hex[:12]
    sh("psql", PG, "-q", "-c", f"CREATE SCHEMA {name}", stdout=subprocess.DEVNULL)
    sep = "&" if "?" in PG else "?"
    return name, f"{PG}{sep}options=-csearch_path%3D{name}"


def drop_schema(name):
    subprocess.run(["psql", PG, "-q", "-c", f"DROP SCHEMA {name} CASCADE"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def signpost(home, db_url, extra_env=None):
    env = {"HOME": home, "PATH": os.environ["PATH"], "SIGNPOST__LOG__LEVEL": "warn", "SIGNPOST__DELIVERY__ENABLED": "false"}
    env.update(extra_env or {})
    return Server([BIN, "serve", "--port", "PORT", "--database", db_url], env=env, cwd=home)


def prepare_bodies(base, folder):
    """Bodies with a __UNIQUE__ placeholder in their business identifiers."""
    patient = call(base, "POST", "/Patient", {"resourceType": "Patient",
        "identifier": [{"system": "https://fhir.nhs.uk/Id/nhs-number", "value": "9000000009"}],
        "name": [{"family": "DOE", "given": ["Jane"]}], "birthDate": "1948-07-02",
        "telecom": [{"system": "phone", "value": "0113 496 0000"}], "address": [{"use": "home", "postalCode": "LS6 2AB"}]})
    pid = patient["id"]
    call(base, "POST", "/Consent", {"resourceType": "Consent", "status": "active",
        "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}]},
        "category": [{"coding": [{"system": "https://signpost.example/fhir/CodeSystem/consent-category", "code": "share-with-vcs"}]}],
        "patient": {"reference": f"Patient/{pid}"}, "policy": [{"uri": "https://signpost.example/fhir/consent-policy/share-with-vcs"}],
        "dateTime": "2024-03-14T10:10:00Z", "provision": {"type": "permit"}})
    sr = json.load(open(os.path.join(ROOT, "tests/fixtures/referrals/referral-servicerequest.json")))
    sr.pop("id", None)
    sr["subject"] = {"reference": f"Patient/{pid}"}
    sr["identifier"] = [{"system": "https://fhir.nhs.uk/Id/UBRN", "value": "__UNIQUE__"}]
    sr.pop("contained", None)
    sr.pop("supportingInfo", None)
    sr["performer"] = [{"reference": "HealthcareService/stroke-association-support"}]
    sr["requester"] = {"reference": "Organization/riverside-medical-practice"}
    sr["reasonCode"] = [{"coding": [{"system": "http://snomed.info/sct", "code": "230690007", "display": "Cerebrovascular accident"}]}]
    sr.pop("reasonReference", None)
    explicit = os.path.join(folder, "explicit.json")
    json.dump(sr, open(explicit, "w"))
    by_condition = dict(sr)
    by_condition.pop("performer")
    cond = os.path.join(folder, "condition.json")
    json.dump(by_condition, open(cond, "w"))
    bundle = open(os.path.join(ROOT, "examples/referral-bundle.json")).read()
    bundle = bundle.replace("000000070000", "__UNIQUE__").replace("TASK-2024-000123", "TASK-__UNIQUE__")
    tx = os.path.join(folder, "bundle.json")
    open(tx, "w").write(bundle)
    return {"ServiceRequest, explicit performer": ("/fhir/ServiceRequest", explicit),
            "ServiceRequest, routed by condition": ("/fhir/ServiceRequest", cond),
            "transaction Bundle (6 entries)": ("/fhir", tx)}


def line(label, r, ceiling=None, rss=None):
    ratio = f"{r['rps'] / ceiling:.2f}×" if ceiling else ""
    extra = f", peak RSS {rss:.0f} MB" if rss else ""
    print(f"| {label} | {r['rps']:.0f} | {ratio} | {r['p50']:.1f} | {r['p99']:.1f} | {r['p999']:.1f} | {r['non2xx'] + r['socket']}{extra} |", flush=True)


def ingest(args):
    dbs = ["sqlite", "postgres"] if args.db == "both" else [args.db]
    conns = [int(c) for c in args.connections.split(",")]
    print("| server | req/s | × ceiling | p50 ms | p99 ms | p99.9 ms | errors |\n|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        parse = Server([CEILING, "PORT", "parse"])
        for c in conns:
            body = os.path.join(tmp, "ceiling.json")
            open(body, "w").write(open(os.path.join(ROOT, "tests/fixtures/referrals/referral-servicerequest.json")).read())
            line(f"ceiling: parse, answer 201 ({c} conn)", wrk(f"http://127.0.0.1:{parse.port}/fhir/ServiceRequest", args.seconds, c, body))
        parse.stop()
        for db in dbs:
            for c in conns:
                # The ceiling of this database, then Signpost, back to back.
                if db == "sqlite":
                    ceiling = Server([CEILING, "PORT", "sqlite", os.path.join(tmp, f"ceiling-{c}.db")])
                else:
                    ceiling = Server([CEILING, "PORT", "postgres", PG])
                body = os.path.join(tmp, "ceiling.json")
                top = wrk(f"http://127.0.0.1:{ceiling.port}/fhir/ServiceRequest", args.seconds, c, body)
                line(f"ceiling: parse + one {db} insert ({c} conn)", top)
                ceiling.stop()
                home = tempfile.mkdtemp(dir=tmp)
                schema = None
                if db == "sqlite":
                    url = f"sqlite://{home}/signpost.db"
                else:
                    schema, url = pg_schema()
                server = signpost(home, url)
                base = f"http://127.0.0.1:{server.port}/fhir"
                bodies = prepare_bodies(base, home)
                for label, (path, body) in bodies.items():
                    r = wrk(f"http://127.0.0.1:{server.port}{path}", args.seconds, c, body)
                    line(f"Signpost {db}: {label} ({c} conn)", r, top["rps"])
                line(f"Signpost {db} after the run ({c} conn)", {"rps": 0, "p50": 0, "p99": 0, "p999": 0, "non2xx": 0, "socket": 0}, None, server.rss())
                server.stop()
                if schema:
                    drop_schema(schema)


def poll(args):
    print("| request | req/s | p50 ms | p99 ms | p99.9 ms | errors |\n|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as home:
        db = os.path.join(home, "signpost.db")
        t0 = time.time()
        sh(SEED, f"sqlite://{db}", str(args.tasks), str(args.charities), stdout=subprocess.DEVNULL)
        orgs = [f"bench-charity-{i:02d}" for i in range(args.charities)]
        print(f"seeded {args.tasks} Tasks over {args.charities} charities in {time.time() - t0:.1f} s", file=sys.stderr)
        # A client of the first charity (production mode with a config naming it).
        key = "sp_bench_" + uuid.uuid4().hex
        import hashlib
        config = os.path.join(home, "signpost.toml")
        open(config, "w").write(f"""mode = "production"
[database]
url = "sqlite://{db}"
[delivery]
enabled = false
[log]
level = "warn"
[[clients]]
name = "bench-charity"
role = "charity"
organization = "{orgs[0]}"
key_sha256 = "{hashlib.sha256(key.encode()).hexdigest()}"
""")
        server = Server([BIN, "serve", "--port", "PORT", "--config", config], env={"HOME": home, "PATH": os.environ["PATH"]}, cwd=home)
        for label, path in [("new Tasks: status=requested, _count=50", f"/fhir/Task?owner=Organization/{orgs[0]}&status=requested&_count=50"),
                            ("all own Tasks, newest first, _count=50", f"/fhir/Task?owner=Organization/{orgs[0]}&_sort=-_lastUpdated&_count=50"),
                            ("change feed from the start, _count=100", "/fhir/$changes?cursor=0&_count=100")]:
            r = wrk(f"http://127.0.0.1:{server.port}{path}", args.seconds, 16, None, auth=f"Bearer {key}", script=GET_LUA)
            print(f"| {label} | {r['rps']:.0f} | {r['p50']:.1f} | {r['p99']:.1f} | {r['p999']:.1f} | {r['non2xx'] + r['socket']} |", flush=True)
        # A poller that sends the ETag of its last answer, nothing having changed: 304s.
        path = f"/fhir/Task?owner=Organization/{orgs[0]}&status=requested&_count=50"
        req = urllib.request.Request(f"http://127.0.0.1:{server.port}{path}", headers={"Authorization": f"Bearer {key}"})
        with urllib.request.urlopen(req, timeout=30) as answer:
            os.environ["BENCH_IF_NONE_MATCH"] = answer.headers["ETag"]
        r = wrk(f"http://127.0.0.1:{server.port}{path}", args.seconds, 16, None, auth=f"Bearer {key}", script=GET_LUA)
        del os.environ["BENCH_IF_NONE_MATCH"]
        print(f"| new Tasks again, If-None-Match of the last answer (304) | {r['rps']:.0f} | {r['p50']:.1f} | {r['p99']:.1f} | {r['p999']:.1f} | {r['non2xx'] + r['socket']} |", flush=True)
        print(f"peak RSS {server.rss():.0f} MB", flush=True)
        server.stop()


def burst(args):
    print("| point | req/s accepted | p50 ms | p99 ms | shed (503) | socket errors |\n|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as home:
        server = signpost(home, f"sqlite://{home}/signpost.db")
        bodies = prepare_bodies(f"http://127.0.0.1:{server.port}/fhir", home)
        path, body = bodies["ServiceRequest, explicit performer"]
        for c in [16, 256]:
            r = wrk(f"http://127.0.0.1:{server.port}{path}", args.seconds, c, body)
            ok = r["requests"] - r["non2xx"]
            print(f"| {c} connections | {ok / r['seconds']:.0f} | {r['p50']:.1f} | {r['p99']:.1f} | {r['non2xx']} | {r['socket']} |", flush=True)
        print(f"peak RSS {server.rss():.0f} MB", flush=True)
        server.stop()


class Receiver:
    """A local webhook receiver counting webhook-ids (answers 200)."""

    def __init__(self):
        import http.server, threading
        ids = self.ids = []
        lock = self.lock = threading.Lock()

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                self.rfile.read(int(self.headers.get("content-length", 0)))
                with lock:
                    ids.append(self.headers.get("webhook-id"))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *a):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def multi(args):
    print("| processes | req/s (sum) | × one process | p99 ms (worst) | 201s counted by wrk | webhooks received | distinct | duplicates |\n|---|---|---|---|---|---|---|---|")
    one = None
    for n in [1, 2, 4]:
        with tempfile.TemporaryDirectory() as home:
            schema, url = pg_schema()
            receiver = Receiver()
            servers = [signpost(home, url, {"SIGNPOST__DELIVERY__ENABLED": "true"}) for _ in range(n)]
            base = f"http://127.0.0.1:{servers[0].port}/fhir"
            endpoint = {"resourceType": "Endpoint", "id": "stroke-association-webhook", "status": "active",
                        "connectionType": {"system": "http://terminology.hl7.org/CodeSystem/endpoint-connection-type", "code": "hl7-fhir-rest"},
                        "managingOrganization": {"reference": "Organization/stroke-association"},
                        "payloadType": [{"text": "referral events"}], "address": f"http://127.0.0.1:{receiver.port}/hook"}
            call(base, "PUT", "/Endpoint/stroke-association-webhook", endpoint, OP)
            call(base, "POST", "/Endpoint/stroke-association-webhook/$secret", {}, OP)
            path, body = prepare_bodies(base, home)["ServiceRequest, explicit performer"]
            import concurrent.futures
            with concurrent.futures.ThreadPoolExecutor(n) as pool:
                results = list(pool.map(lambda s: wrk(f"http://127.0.0.1:{s.port}{path}", args.seconds, max(4, 16 // n), body), servers))
            rps = sum(r["rps"] for r in results)
            accepted = sum(r["requests"] - r["non2xx"] for r in results)
            # Let the workers finish, then count.
            deadline = time.time() + 120
            while time.time() < deadline:
                with receiver.lock:
                    if len(set(receiver.ids)) >= accepted:
                        break
                time.sleep(0.5)
            time.sleep(2)
            with receiver.lock:
                got, distinct = len(receiver.ids), len(set(receiver.ids))
            one = one or rps
            print(f"| {n} | {rps:.0f} | {rps / one:.2f}× | {max(r['p99'] for r in results):.1f} | {accepted} | {got} | {distinct} | {got - distinct} |", flush=True)
            for s in servers:
                s.stop()
            receiver.server.shutdown()
            drop_schema(schema)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["ingest", "poll", "burst", "multi"])
    ap.add_argument("--seconds", type=int, default=15)
    ap.add_argument("--db", default="both", choices=["sqlite", "postgres", "both"])
    ap.add_argument("--connections", default="16,64")
    ap.add_argument("--tasks", type=int, default=100_000)
    ap.add_argument("--charities", type=int, default=50)
    args = ap.parse_args()
    ensure_tools()
    print(f"{time.strftime('%Y-%m-%d %H:%M')} · {os.cpu_count()} cores · git {subprocess.run(['git', 'rev-parse', '--short', 'HEAD'], cwd=ROOT, capture_output=True, text=True).stdout.strip()}")
    {"ingest": ingest, "poll": poll, "burst": burst, "multi": multi}[args.what](args)


if __name__ == "__main__":
    main()

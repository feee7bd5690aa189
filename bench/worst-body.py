#!/usr/bin/env python3
"""Worst-body memory check (issue: bounded work per request).

Starts `target/release/signpost serve` as a sandbox in a temporary HOME, sends N parallel POSTs of
a 0.98 MB Patient with 90,000 unknown properties, and reports the answer size, the time, the
peak RSS of the server (VmHWM) against its RSS when idle, and how fast /livez answered meanwhile.

    cargo build --release && python3 bench/worst-body.py [N]
"""
import json, os, socket, subprocess, sys, tempfile, threading, time, urllib.request

N = int(sys.argv[1]) if len(sys.argv) > 1 else 8
root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
home = tempfile.mkdtemp()
port = 18000 + os.getpid() % 1000
proc = subprocess.Popen([os.path.join(root, "target/release/signpost"), "serve", "--port", str(port)],
                        env={"HOME": home, "PATH": os.environ.get("PATH", "")}, cwd=home,
                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
base = f"http://127.0.0.1:{port}"
for _ in range(100):
    try:
        urllib.request.urlopen(base + "/livez", timeout=1); break
    except Exception:
        time.sleep(0.1)

def rss(field):
    for line in open(f"/proc/{proc.pid}/status"):
        if line.startswith(field):
            return int(line.split()[1]) // 1024
idle = rss("VmRSS:")
body = '{"resourceType":"Patient"' + "".join(f',"x{i}":1' for i in range(90_000)) + "}"
sizes, times = [], []
def post():
    t = time.time()
    req = urllib.request.Request(base + "/fhir/Patient", data=body.encode(), method="POST", headers={
        "Authorization": "Bearer sp_sandbox_referrer_riverside", "Content-Type": "application/fhir+json"})
    try:
        urllib.request.urlopen(req, timeout=60)
    except urllib.error.HTTPError as e:
        sizes.append((e.code, len(e.read())))
    times.append(time.time() - t)
livez = []
stop = False
def probe():
    while not stop:
        t = time.time(); urllib.request.urlopen(base + "/livez", timeout=10); livez.append(time.time() - t)
        time.sleep(0.05)
p = threading.Thread(target=probe); p.start()
threads = [threading.Thread(target=post) for _ in range(N)]
[t.start() for t in threads]; [t.join() for t in threads]
stop = True; p.join()
peak = rss("VmHWM:")
proc.terminate(); proc.wait()
print(f"body {len(body)} bytes x {N} in parallel: answers {sorted(set(sizes))}")
print(f"slowest answer {max(times):.2f} s; /livez max {max(livez)*1000:.0f} ms over {len(livez)} probes")
print(f"RSS idle {idle} MB, peak {peak} MB")

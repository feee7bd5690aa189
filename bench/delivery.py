#!/usr/bin/env python3
"""Webhook delivery figures (BENCHMARKS.md): deliveries per second to a local receiver, and the
time from a referral's 201 to its webhook arriving.

    python3 bench/delivery.py [N]

It builds what it runs first (`cargo build --release --bin signpost --example webhook_receiver`).

1. Backlog: `serve` with its worker off takes N referrals; then `signpost worker` starts and the
   time until the receiver has all N webhooks gives deliveries per second.
2. Latency: `serve` with its worker on; N/4 referrals sent one after another; per referral, the
   time from its 201 to the receiver printing its webhook.
Everything runs on loopback in a temporary HOME; the receiver is examples/webhook_receiver.rs
(signature verified, dedupe on webhook-id, no accepting).
"""
import json, os, statistics, subprocess, sys, tempfile, threading, time, urllib.request

N = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target/release/signpost")
RECEIVER = os.path.join(ROOT, "target/release/examples/webhook_receiver")
subprocess.run(["cargo", "build", "--release", "--quiet", "--bin", "signpost", "--example", "webhook_receiver"], cwd=ROOT, check=True)
GP = "Bearer sp_sandbox_referrer_riverside"
OP = "Bearer sp_sandbox_operator"


def call(base, method, path, body=None, key=GP):
    req = urllib.request.Request(base + path, method=method, data=json.dumps(body).encode() if body is not None else None,
                                 headers={"Authorization": key, "Content-Type": "application/fhir+json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return r.status, json.loads(r.read() or b"null")


def start(home, port, worker_on):
    env = {"HOME": home, "PATH": os.environ["PATH"], "SIGNPOST__DELIVERY__ENABLED": "true" if worker_on else "false"}
    p = subprocess.Popen([BIN, "serve", "--port", str(port)], env=env, cwd=home, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(100):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/livez", timeout=1)
            return p, env
        except Exception:
            time.sleep(0.1)
    raise SystemExit("serve did not start")


def prepare(base, receiver_port):
    endpoint = {"resourceType": "Endpoint", "id": "stroke-association-webhook", "status": "active",
                "connectionType": {"system": "http://terminology.hl7.org/CodeSystem/endpoint-connection-type", "code": "hl7-fhir-rest"},
                "managingOrganization": {"reference": "Organization/stroke-association"},
                "payloadType": [{"text": "referral events"}], "address": f"http://127.0.0.1:{receiver_port}/hook"}
    call(base, "PUT", "/Endpoint/stroke-association-webhook", endpoint, OP)
    _, secret = call(base, "POST", "/Endpoint/stroke-association-webhook/$secret", {}, OP)
    _, patient = call(base, "POST", "/Patient", {"resourceType": "Patient",
        "identifier": [{"system": "https://fhir.nhs.uk/Id/nhs-number", "value": "9000000009"}],
        "name": [{"family": "DOE"}], "birthDate": "1948-07-02", "telecom": [{"system": "phone", "value": "0113 496 0000"}],
        "address": [{"use": "home", "postalCode": "LS6 2AB"}]})
    call(base, "POST", "/Consent", {"resourceType": "Consent", "status": "active",
        "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}]},
        "category": [{"coding": [{"system": "https://signpost.example/fhir/CodeSystem/consent-category", "code": "share-with-vcs"}]}],
        "patient": {"reference": f"Patient/{patient['id']}"}, "policy": [{"uri": "https://signpost.example/fhir/consent-policy/share-with-vcs"}],
        "dateTime": "2024-03-14T10:10:00Z", "provision": {"type": "permit"}})
    return secret["parameter"][0]["valueString"], patient["id"]


def referral(pid):
    return {"resourceType": "ServiceRequest", "status": "active", "intent": "order", "subject": {"reference": f"Patient/{pid}"},
            "authoredOn": "2024-03-14T10:15:00Z", "requester": {"reference": "Organization/riverside-medical-practice"},
            "performer": [{"reference": "HealthcareService/stroke-association-support"}],
            "reasonCode": [{"coding": [{"system": "http://snomed.info/sct", "code": "230690007"}]}]}


class Arrivals:
    def __init__(self, proc):
        self.times = {}
        self.lock = threading.Lock()
        threading.Thread(target=self.read, args=(proc,), daemon=True).start()

    def read(self, proc):
        for line in proc.stdout:
            parts = line.split()
            if len(parts) >= 4 and parts[1] == "referral.created":
                with self.lock:
                    self.times[parts[3]] = time.time()

    def count(self):
        with self.lock:
            return len(self.times)


def run(worker_on, rport):
    home = tempfile.mkdtemp()
    port = 18100 + os.getpid() % 500 + (1 if worker_on else 0)
    serve, env = start(home, port, worker_on)
    base = f"http://127.0.0.1:{port}/fhir"
    secret, pid = prepare(base, rport)
    rx = subprocess.Popen([RECEIVER, "--port", str(rport), "--secret", secret, "--key", "x", "--no-accept"],
                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    time.sleep(0.3)
    arrivals = Arrivals(rx)
    try:
        if not worker_on:
            for _ in range(N):
                call(base, "POST", "/ServiceRequest", referral(pid))
            t0 = time.time()
            worker = subprocess.Popen([BIN, "worker"], env=env, cwd=home, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            while arrivals.count() < N and time.time() - t0 < 300:
                time.sleep(0.02)
            took = time.time() - t0
            worker.terminate()
            print(f"backlog: {arrivals.count()} of {N} webhooks delivered in {took:.2f} s = {arrivals.count() / took:.0f}/s")
        else:
            sent = {}
            for _ in range(N // 4):
                status, sr = call(base, "POST", "/ServiceRequest", referral(pid))
                sent[f"ServiceRequest/{sr['id']}"] = time.time()
                time.sleep(0.01)
            t0 = time.time()
            while arrivals.count() < len(sent) and time.time() - t0 < 60:
                time.sleep(0.02)
            lat = sorted((arrivals.times[k] - v) * 1000 for k, v in sent.items() if k in arrivals.times)
            print(f"latency: {len(lat)} of {len(sent)}: 201 -> received median {statistics.median(lat):.1f} ms, "
                  f"p99 {lat[int(len(lat) * 0.99) - 1]:.1f} ms, max {lat[-1]:.1f} ms")
    finally:
        rx.terminate()
        serve.terminate()


run(False, 19001)
run(True, 19002)

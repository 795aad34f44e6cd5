#!/usr/bin/env python3
"""Long fault runs against the real `hallmark` binary (docs/RELIABILITY.md).

  scripts/soak.py soak [--seconds 600] [--rate 20] [--postgres URL]
      A fixed rate of issuances (REST, name already proven), revocations
      (every third certificate), CRL and OCSP fetches; samples RSS, open
      file descriptors and (PostgreSQL) database connections every 10 s.
      Fails on any error or on growth.

  scripts/soak.py disk-full
      SQLite on a 24 MiB tmpfs (needs root): fills the disk under load,
      expects 503 problem+json and no corruption, frees the space and
      expects service to resume without a restart.

Only the standard library, `openssl`, `psql`/`sqlite3` for the checks and
the binary (target/release/hallmark, else target/debug/hallmark, or
$HALLMARK) are used. Traffic goes to
127.0.0.1 only, and every loop is bounded in time.
"""

import argparse
import http.server
import json
import os
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.environ.get("HALLMARK") or next(
    (b for b in (os.path.join(ROOT, "target", d, "hallmark") for d in ("release", "debug"))
     if os.path.exists(b)), os.path.join(ROOT, "target", "release", "hallmark"))
PASS = "soak passphrase, long enough"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fresh_postgres(url):
    """A new empty database on the server at `url` (compare.py,
    startup.py); its URL. The caller drops it."""
    name = f"hallmark_bench_{os.getpid()}_{int(time.time() * 1000) % 10**8}"
    admin = url.rsplit("/", 1)[0]
    subprocess.run(["psql", url, "-qc", f"CREATE DATABASE {name}"], check=True)
    return f"{admin}/{name}"


class Challenges(http.server.BaseHTTPRequestHandler):
    answers = {}

    def do_GET(self):
        body = self.answers.get(self.path.rsplit("/", 1)[-1])
        self.send_response(200 if body else 404)
        self.end_headers()
        if body:
            self.wfile.write(body.encode())

    def log_message(self, *args):
        pass


class Node:
    def __init__(self, data, database_url=None):
        self.data = data
        # The log lives off the data disk (the disk-full run fills that).
        self.log = os.path.join(tempfile.mkdtemp(prefix="hallmark-log-"), "serve.log")
        self.https_port, self.http_port = free_port(), free_port()
        self.challenges = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Challenges)
        threading.Thread(target=self.challenges.serve_forever, daemon=True).start()
        self.env = dict(os.environ)
        self.env.update({
            "HALLMARK_ROOT_PASSPHRASE": PASS,
            "HALLMARK_SERVER__HTTPS_LISTEN": f"127.0.0.1:{self.https_port}",
            "HALLMARK_SERVER__HTTP_LISTEN": f"127.0.0.1:{self.http_port}",
            "HALLMARK_VALIDATION__HTTP_PORT": str(self.challenges.server_address[1]),
            "HALLMARK_ORDERS__RATE_PER_MINUTE": "1000000",
            "HALLMARK_CRL__DEBOUNCE_SECS": "2",
            "RUST_LOG": "warn",
        })
        self.env.pop("DATABASE_URL", None)
        if database_url:
            self.env["DATABASE_URL"] = database_url
        self.base = f"https://localhost:{self.https_port}"
        self.plain = f"http://127.0.0.1:{self.http_port}"
        self.proc = None

    def cli(self, *args, check=True):
        out = subprocess.run([BIN, *args], cwd=self.data, env=self.env,
                             capture_output=True, text=True, timeout=120)
        if check and out.returncode != 0:
            sys.exit(f"hallmark {' '.join(args)} failed: {out.stderr}")
        return out

    def start(self):
        log = open(self.log, "a")
        self.proc = subprocess.Popen([BIN, "serve"], cwd=self.data, env=self.env,
                                     stdout=subprocess.DEVNULL, stderr=log)
        for _ in range(300):
            try:
                urllib.request.urlopen(f"{self.plain}/readyz", timeout=2)
                break
            except Exception:
                time.sleep(0.05)
        else:
            sys.exit("serve did not become ready")
        ctx = ssl.create_default_context(
            cafile=os.path.join(self.data, "hallmark-data/ca/root.crt.pem"))
        self.ctx = ctx

    def stop(self):
        if self.proc:
            self.proc.terminate()
            self.proc.wait(timeout=30)

    def call(self, method, path, key=None, body=None, base=None, ctype="application/json", raw=False):
        data = body if raw else (json.dumps(body).encode() if body is not None else None)
        req = urllib.request.Request((base or self.base) + path, data=data, method=method)
        if key:
            req.add_header("Authorization", f"Bearer {key}")
        if data is not None:
            req.add_header("Content-Type", ctype)
        try:
            with urllib.request.urlopen(req, timeout=30, context=None if base else self.ctx) as r:
                payload = r.read()
                return r.status, r.headers.get("Content-Type", ""), payload
        except urllib.error.HTTPError as e:
            return e.code, e.headers.get("Content-Type", ""), e.read()


def openssl(cwd, *args):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def setup(data, database_url=None):
    node = Node(data, database_url)
    node.cli("init")
    key = json.loads(node.cli("account", "create", "soak").stdout)["api_key"]
    openssl(data, "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", "k.pem")
    openssl(data, "req", "-new", "-key", "k.pem", "-subj", "/CN=127.0.0.1",
            "-addext", "subjectAltName=IP:127.0.0.1", "-out", "c.csr")
    csr = open(os.path.join(data, "c.csr")).read()
    node.start()
    # Prove 127.0.0.1 once (http-01 against this script's server).
    status, _, body = node.call("POST", "/api/v1/orders", key, {"csr": csr, "validation": "dv"})
    order = json.loads(body)
    assert status == 201, body
    ch = next(c for c in order["authorizations"][0]["challenges"] if c["type"] == "http-01")
    Challenges.answers[ch["token"]] = ch["http_body"]
    node.call("POST", f"/api/v1/orders/{order['id']}/challenges/{ch['id']}", key, {})
    for _ in range(100):
        _, _, body = node.call("GET", f"/api/v1/orders/{order['id']}", key)
        if json.loads(body)["status"] == "valid":
            break
        time.sleep(0.1)
    else:
        sys.exit("proving 127.0.0.1 failed")
    return node, key, csr


def ocsp_request(node, key, serial):
    """A DER OCSP request (no nonce) for `serial`, made by openssl."""
    _, _, body = node.call("GET", f"/api/v1/certificates/{serial}", key)
    issuer = json.loads(body)["issuer"]
    _, _, pem = node.call("GET", f"/ca/{issuer}.pem", base=node.plain)
    open(os.path.join(node.data, "issuer.pem"), "wb").write(pem)
    openssl(node.data, "ocsp", "-issuer", "issuer.pem", "-serial", "0x" + serial,
            "-no_nonce", "-reqout", "ocsp.der")
    return issuer, open(os.path.join(node.data, "ocsp.der"), "rb").read()


def sample(node, database_url):
    pid = node.proc.pid
    rss = 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) // 1024
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    conns = "-"
    if database_url:
        name = database_url.rsplit("/", 1)[1]
        out = subprocess.run(["psql", "-h", "127.0.0.1", "-U", "postgres", "-tAc",
                              f"SELECT count(*) FROM pg_stat_activity WHERE datname = '{name}'"],
                             capture_output=True, text=True)
        conns = out.stdout.strip()
    return rss, fds, conns


def soak(args):
    database_url = None
    if args.postgres:
        name = f"hallmark_soak_{os.getpid()}"
        subprocess.run(["psql", "-h", "127.0.0.1", "-U", "postgres", "-c", f"CREATE DATABASE {name}"],
                       check=True, capture_output=True)
        database_url = args.postgres.rsplit("/", 1)[0] + "/" + name
    with tempfile.TemporaryDirectory() as data:
        node, key, csr = setup(data, database_url)
        issuer = None
        counts = {"issued": 0, "revoked": 0, "crl": 0, "ocsp": 0, "errors": 0}
        samples = []
        started = time.monotonic()
        next_sample = started
        i = 0
        try:
            while time.monotonic() - started < args.seconds:
                tick = started + i / args.rate
                delay = tick - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                i += 1
                status, _, body = node.call("POST", "/api/v1/orders", key, {"csr": csr, "validation": "dv"})
                order = json.loads(body) if status == 201 else {}
                if order.get("status") != "valid":
                    counts["errors"] += 1
                    print("error", status, body[:200], file=sys.stderr)
                    continue
                counts["issued"] += 1
                serial = order["certificate_serial"]
                if i % 3 == 0:
                    status, _, body = node.call("POST", f"/api/v1/certificates/{serial}/revoke", key,
                                                {"reason": "superseded"})
                    counts["revoked" if status == 200 else "errors"] += 1
                if issuer is None:
                    issuer, ocsp = ocsp_request(node, key, serial)
                status, _, _ = node.call("GET", f"/crl/{issuer}.crl", base=node.plain)
                counts["crl" if status == 200 else "errors"] += 1
                status, _, _ = node.call("POST", "/ocsp", base=node.plain, body=ocsp,
                                         ctype="application/ocsp-request", raw=True)
                counts["ocsp" if status == 200 else "errors"] += 1
                if time.monotonic() >= next_sample:
                    samples.append((round(time.monotonic() - started), *sample(node, database_url)))
                    next_sample += 10
            samples.append((round(time.monotonic() - started), *sample(node, database_url)))
            audit = node.cli("audit", "verify", check=False)
        finally:
            node.stop()
            if database_url:
                subprocess.run(["psql", "-h", "127.0.0.1", "-U", "postgres", "-c",
                                f"DROP DATABASE IF EXISTS {database_url.rsplit('/', 1)[1]} WITH (FORCE)"],
                               capture_output=True)
    store = "PostgreSQL" if database_url else "SQLite"
    print(f"soak on {store}: {args.seconds} s at {args.rate} issuances/s: {json.dumps(counts)}")
    print("t (s) | RSS (MiB) | open fds | db connections")
    for s in samples:
        print(" | ".join(str(x) for x in s))
    first, last = samples[1] if len(samples) > 2 else samples[0], samples[-1]
    grew = last[1] > first[1] * 1.5 + 8 or last[2] > first[2] + 16
    print("audit verify:", "passed" if audit.returncode == 0 else audit.stderr.strip())
    if counts["errors"] or grew or audit.returncode != 0:
        sys.exit("soak FAILED")
    print("soak passed: 0 errors, flat RSS, flat file descriptors")


def disk_full(args):
    mnt = tempfile.mkdtemp(prefix="hallmark-diskfull-")
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", mnt], check=True)
    try:
        node, key, csr = setup(mnt)
        filler = os.path.join(mnt, "filler")
        subprocess.run(["dd", "if=/dev/zero", f"of={filler}", "bs=1M", "count=64"],
                       capture_output=True)
        results = {}
        for _ in range(100):
            status, ctype, body = node.call("POST", "/api/v1/orders", key, {"csr": csr, "validation": "dv"})
            if status == 201 and json.loads(body)["status"] != "valid":
                status = "201 but " + json.loads(body)["status"]
            results[status] = results.get(status, 0) + 1
            if status not in (201, 503):
                sys.exit(f"disk full gave {status} {ctype}: {body[:300]}")
            if status == 503:
                assert ctype.startswith("application/problem+json"), ctype
                problem = json.loads(body)
                detail = f"{problem['type']}: {problem['detail']}"
        os.remove(filler)
        print("disk full:", results, "detail:", detail if 503 in results else "-")
        ok = 0
        for _ in range(20):
            status, _, _ = node.call("POST", "/api/v1/orders", key, {"csr": csr, "validation": "dv"})
            ok += status == 201
        node.stop()
        db = os.path.join(mnt, "hallmark-data/hallmark.db")
        check = subprocess.run(["sqlite3", db, "PRAGMA integrity_check"],
                               capture_output=True, text=True)
        stored = int(subprocess.run(["sqlite3", db, "SELECT COUNT(*) FROM certificates"],
                                    capture_output=True, text=True).stdout.strip())
        # Besides the 201s: the proof's, the HTTPS listener's and the OCSP
        # responder's certificates.
        acknowledged = results.get(201, 0) + ok + 3
        print(f"certificates stored {stored}, acknowledged {acknowledged}")
        audit = node.cli("audit", "verify", check=False)
        print(f"after freeing space: {ok}/20 issued without a restart; integrity_check: "
              f"{check.stdout.strip() or check.stderr.strip()}; audit verify: "
              f"{'passed' if audit.returncode == 0 else audit.stderr.strip()}")
        if ok != 20 or audit.returncode != 0 or 503 not in results or stored != acknowledged:
            sys.exit("disk-full FAILED")
    except BaseException:
        log = node.log if "node" in locals() else ""
        if os.path.exists(log):
            lines = open(log).read().splitlines()
            print("serve.log:", "\n".join(l for l in lines if "panic" in l or "WARN" in l)[-3000:], "\n".join(lines[-4:]), file=sys.stderr)
        raise
    finally:
        subprocess.run(["umount", "-l", mnt])


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("soak")
    s.add_argument("--seconds", type=int, default=600)
    s.add_argument("--rate", type=float, default=20)
    s.add_argument("--postgres", nargs="?", const="postgres://postgres@127.0.0.1:5432/postgres")
    sub.add_parser("disk-full")
    args = p.parse_args()
    if not os.path.exists(BIN):
        sys.exit(f"{BIN} is missing: cargo build --release first")
    {"soak": soak, "disk-full": disk_full}[args.cmd](args)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""REST issuance beside cfssl, one run, one load client (docs/BENCHMARKS.md).

  scripts/compare.py [--count 2000] [--concurrency 16,64] [--runs 3]
                     [--systems cfssl-db,cfssl,hallmark-sqlite,hallmark-postgres]
                     [--postgres URL] [--probe]

Starts each system in turn on loopback HTTPS — cfssl 1.2 `serve` (Debian
golang-cfssl) with its SQLite certdb and without storage, hallmark (the
release binary) on SQLite and on PostgreSQL with its name proven once by
http-01 — and drives it with the same keep-alive client: asyncio, one
TLS connection per concurrent client, the same pre-made P-256 CSRs
(`127.0.0.1`), every answer checked (cfssl `"success":true`, hallmark
201 with a `valid` order). Prints certificates/s (median of the runs),
p50/p99 latency, and each hallmark figure as a ratio of cfssl without
storage; `openssl speed ecdsap256` on one core is printed beside them.

With --probe, each run also prints where its time went: CPU per
certificate of the server and of this client (from /proc), the
server's context switches per certificate (all its threads) and the
machine's idle share, and for hallmark the group-commit writer's
commits, mean batch, mean commit and the share of the run it was busy
(from /metrics), and the CPU of the store's threads per commit (the
writer and every sqlx worker thread: on SQLite the write connection's
and the read pool's, whose REST reads are mostly served from memory;
from /proc). For hallmark on PostgreSQL it adds the PostgreSQL server's
CPU per certificate (every `postgres` process). Each probe line ends
with the rate the run's CPU per certificate (server, database server
and client together) would allow if no core were ever idle, and the
table gets that bound as a ratio of cfssl without storage: a goal above
it cannot be met in that hour by waiting less, only by spending less.

Needs: golang-cfssl, openssl, python3-cryptography (or `pip install
cryptography`), and target/release/hallmark ($HALLMARK to override).
"""

import argparse
import asyncio
import itertools
import json
import os
import re
import shutil
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import soak  # noqa: E402  (its Node and setup start and prime a hallmark)

from cryptography import x509  # noqa: E402
from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402
from cryptography.x509.oid import NameOID  # noqa: E402
import ipaddress  # noqa: E402

NAME = "127.0.0.1"


def make_csrs(count):
    """`count` PEM CSRs, each with a fresh P-256 key, for NAME."""
    out = []
    for _ in range(count):
        key = ec.generate_private_key(ec.SECP256R1())
        csr = (x509.CertificateSigningRequestBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, NAME)]))
               .add_extension(x509.SubjectAlternativeName(
                   [x509.IPAddress(ipaddress.ip_address(NAME))]), critical=False)
               .sign(key, hashes.SHA256()))
        out.append(csr.public_bytes(serialization.Encoding.PEM).decode())
    return out


class Target:
    """Where the client sends its POSTs and how it checks an answer."""

    def __init__(self, port, path, ctx, headers, body_of, ok):
        self.port, self.path, self.ctx = port, path, ctx
        self.headers, self.body_of, self.ok = headers, body_of, ok


async def drive(target, csrs, concurrency):
    """Sends every CSR once over `concurrency` keep-alive connections;
    returns (certificates/s, latencies in seconds)."""
    bodies = [target.body_of(c).encode() for c in csrs]
    heads = [(f"POST {target.path} HTTP/1.1\r\nHost: {NAME}:{target.port}\r\n"
              f"{target.headers}Content-Type: application/json\r\n"
              f"Content-Length: {len(b)}\r\n\r\n").encode() + b for b in bodies]
    next_index = itertools.count()
    latencies = []

    async def client():
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", target.port, ssl=target.ctx, server_hostname=NAME)
        try:
            while (i := next(next_index)) < len(heads):
                started = time.perf_counter()
                writer.write(heads[i])
                status = await reader.readline()
                length = 0
                while (line := await reader.readline()) not in (b"\r\n", b""):
                    name, _, value = line.partition(b":")
                    if name.lower() == b"content-length":
                        length = int(value)
                body = await reader.readexactly(length)
                latencies.append(time.perf_counter() - started)
                if not target.ok(status, body):
                    raise SystemExit(f"bad answer: {status!r} {body[:300]!r}")
        finally:
            writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    return len(heads) / elapsed, latencies


class Probe:
    """Writer and CPU figures of one run (--probe): the CPU of any system,
    the group-commit writer's of hallmark."""

    QUEUE = 'queue="workflow"'

    def __init__(self, pid, metrics=None, database=False):
        self.pid, self.metrics, self.database = pid, metrics, database
        self.start = self.sample()

    def sample(self):
        figures = {}
        text = ""
        if self.metrics:
            text = urllib.request.urlopen(f"{self.metrics}/metrics", timeout=10).read().decode()
        # Zero where there is no writer to read (cfssl).
        for name in ("hallmark_store_commit_duration_seconds_sum", "hallmark_store_commits_total",
                     "hallmark_store_batched_writes_total"):
            m = re.search(rf"^{name}\{{{self.QUEUE}\}} (\S+)", text, re.M)
            figures[name] = float(m.group(1)) if m else 0.0
        tick = os.sysconf("SC_CLK_TCK")
        stat = open(f"/proc/{self.pid}/stat").read().rsplit(")", 1)[1].split()
        figures["server_cpu"] = (int(stat[11]) + int(stat[12])) / tick
        # The store's threads (the group-commit writer, sqlx's SQLite
        # workers, read pool's included) apart from the request workers:
        # what a commit costs in CPU.
        figures["store_cpu"] = 0.0
        # Context switches of every thread (hand-offs between threads cost
        # most where the machine is a VM).
        figures["switches"] = 0.0
        for task in os.listdir(f"/proc/{self.pid}/task"):
            try:
                text = open(f"/proc/{self.pid}/task/{task}/stat").read()
                status = open(f"/proc/{self.pid}/task/{task}/status").read()
            except OSError:
                continue
            figures["switches"] += sum(
                int(n) for n in re.findall(r"^(?:non)?voluntary_ctxt_switches:\s+(\d+)", status, re.M))
            comm = text[text.index("(") + 1:text.rindex(")")]
            if "writer" in comm or comm.startswith("sqlx-"):
                t = text.rsplit(")", 1)[1].split()
                figures["store_cpu"] += (int(t[11]) + int(t[12])) / tick
        # The PostgreSQL server's processes (`database`): their CPU is
        # spent on the same two cores for every certificate. A backend that
        # exits mid-run is counted in its parent's children's time.
        figures["database_cpu"] = 0.0
        if self.database:
            for pid in filter(str.isdigit, os.listdir("/proc")):
                try:
                    text = open(f"/proc/{pid}/stat").read()
                except OSError:
                    continue
                if text[text.index("(") + 1:text.rindex(")")] != "postgres":
                    continue
                t = text.rsplit(")", 1)[1].split()
                figures["database_cpu"] += sum(int(v) for v in t[11:15]) / tick
        usage = os.times()
        figures["client_cpu"] = usage.user + usage.system
        figures["idle"] = int(open("/proc/stat").readline().split()[4]) / tick
        figures["wall"] = time.perf_counter()
        return figures

    def report(self, certificates):
        """The probe's line, and the rate the run's CPU per certificate
        (server, database server, client) would allow with no core ever
        idle: what no change to how the server waits can go past."""
        end = self.sample()
        d = {k: end[k] - self.start[k] for k in end}
        commits = max(d["hallmark_store_commits_total"], 1)
        busy = d["hallmark_store_commit_duration_seconds_sum"]
        writer = ""
        if self.metrics:
            writer = (f"{d['hallmark_store_commits_total']:.0f} commits, mean batch "
                      f"{d['hallmark_store_batched_writes_total'] / commits:.1f}, mean commit "
                      f"{busy / commits * 1000:.2f} ms, writer busy {busy / d['wall'] * 100:.0f} %, "
                      f"store threads' CPU {d['store_cpu'] / commits * 1e6:.0f} µs a commit; ")
        database = ""
        if self.database:
            database = f", database server {d['database_cpu'] / certificates * 1e6:.0f} µs"
        cpu = d["server_cpu"] + d["database_cpu"] + d["client_cpu"]
        bound = os.cpu_count() * certificates / cpu if cpu > 0 else 0.0
        return (f"    probe: {writer}CPU per "
                f"certificate: server {d['server_cpu'] / certificates * 1e6:.0f} µs{database}, client "
                f"{d['client_cpu'] / certificates * 1e6:.0f} µs; server context switches "
                f"{d['switches'] / certificates:.1f} per certificate; idle "
                f"{d['idle'] / d['wall'] / os.cpu_count() * 100:.0f} %; with no idle "
                f"{bound:,.0f}/s"), bound


def client_context(cafile):
    ctx = ssl.create_default_context(cafile=cafile)
    return ctx


def openssl(cwd, *args):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def wait_port(port, proc, what):
    import socket
    for _ in range(400):
        if proc.poll() is not None:
            sys.exit(f"{what} exited: {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.025)
    sys.exit(f"{what} did not listen on {port}")


CFSSL_SCHEMA = """
CREATE TABLE certificates (
  serial_number blob NOT NULL, authority_key_identifier blob NOT NULL,
  ca_label blob, status blob NOT NULL, reason int, expiry timestamp,
  revoked_at timestamp, pem blob NOT NULL,
  PRIMARY KEY(serial_number, authority_key_identifier));
CREATE TABLE ocsp_responses (
  serial_number blob NOT NULL, authority_key_identifier blob NOT NULL,
  body blob NOT NULL, expiry timestamp,
  PRIMARY KEY(serial_number, authority_key_identifier));
"""


class Cfssl:
    """cfssl `serve` over TLS with a P-256 CA made by openssl; with
    `storage`, its SQLite certdb (cfssl 1.2's schema)."""

    def __init__(self, storage):
        self.storage = storage
        self.dir = tempfile.mkdtemp(prefix="cfssl-")
        d = self.dir
        openssl(d, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                "-nodes", "-keyout", "ca-key.pem", "-out", "ca.pem", "-days", "30",
                "-subj", "/CN=cfssl bench CA",
                "-addext", "basicConstraints=critical,CA:TRUE",
                "-addext", "keyUsage=critical,keyCertSign,cRLSign")
        openssl(d, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                "-nodes", "-keyout", "tls-key.pem", "-out", "tls.pem", "-days", "30",
                "-subj", f"/CN={NAME}", "-addext", f"subjectAltName=IP:{NAME}")
        with open(os.path.join(d, "config.json"), "w") as f:
            json.dump({"signing": {"default": {
                "expiry": "2160h", "usages": ["digital signature", "server auth"]}}}, f)
        args = []
        if storage:
            db = os.path.join(d, "certs.db")
            subprocess.run(["sqlite3", db], input=CFSSL_SCHEMA, text=True, check=True)
            with open(os.path.join(d, "db.json"), "w") as f:
                # cfssl's default is to fail at once on a locked database.
                json.dump({"driver": "sqlite3", "data_source": f"file:{db}?_busy_timeout=30000"}, f)
            args = ["-db-config", "db.json"]
        self.port = soak.free_port()
        self.proc = subprocess.Popen(
            ["cfssl", "serve", "-address", "127.0.0.1", "-port", str(self.port),
             "-ca", "ca.pem", "-ca-key", "ca-key.pem", "-config", "config.json",
             "-tls-cert", "tls.pem", "-tls-key", "tls-key.pem", "-loglevel", "5", *args],
            cwd=d, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.port, self.proc, "cfssl serve")
        self.target = Target(
            self.port, "/api/v1/cfssl/sign", client_context(os.path.join(d, "tls.pem")), "",
            lambda csr: json.dumps({"certificate_request": csr}),
            lambda status, body: b" 200 " in status and b'"success":true' in body)

    def probe(self):
        return Probe(self.proc.pid)

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=30)
        if self.storage:
            # Every certificate of the runs was stored.
            out = subprocess.run(["sqlite3", os.path.join(self.dir, "certs.db"),
                                  "SELECT count(*) FROM certificates"],
                                 capture_output=True, text=True)
            print(f"  cfssl certdb: {out.stdout.strip()} certificates stored")
        shutil.rmtree(self.dir, ignore_errors=True)


class Hallmark:
    """The release binary in a fresh data directory, NAME proven once."""

    def __init__(self, database_url, admin_url=None):
        self.database_url, self.admin_url = database_url, admin_url
        self.dir = tempfile.mkdtemp(prefix="hallmark-compare-")
        self.node, key, _ = soak.setup(self.dir, database_url)
        self.target = Target(
            self.node.https_port, "/api/v1/orders", self.node.ctx,
            f"Authorization: Bearer {key}\r\n",
            lambda csr: json.dumps({"csr": csr, "validation": "dv"}),
            lambda status, body: b" 201 " in status and b'"status":"valid"' in body)

    def probe(self):
        return Probe(self.node.proc.pid, self.node.plain, database=self.admin_url is not None)

    def stop(self):
        self.node.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
        if self.admin_url:
            # The database soak.fresh_postgres made for this run.
            name = self.database_url.rsplit("/", 1)[1]
            subprocess.run(["psql", self.admin_url, "-qc",
                            f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"], check=False)


def openssl_speed():
    out = subprocess.run(["openssl", "speed", "-seconds", "2", "-mr", "ecdsap256"],
                         capture_output=True, text=True).stdout
    m = re.search(r"\+F4:\d+:256:([\d.]+):([\d.]+)", out)
    if not m:
        return "openssl speed: unreadable"
    sign, verify = float(m.group(1)), float(m.group(2))
    return f"openssl speed ecdsap256, one core: {sign:,.0f} signs/s, {verify:,.0f} verifies/s"


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--count", type=int, default=2000)
    p.add_argument("--concurrency", default="16,64")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--systems", default="cfssl-db,cfssl,hallmark-sqlite,hallmark-postgres")
    p.add_argument("--postgres", default="postgres://postgres@127.0.0.1:5432/postgres")
    p.add_argument("--probe", action="store_true",
                   help="also print each hallmark run's writer and CPU figures")
    args = p.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]
    systems = args.systems.split(",")
    csrs = make_csrs(args.count)
    print(f"{len(csrs)} P-256 CSRs, {args.runs} runs per cell, {os.cpu_count()} cores")
    print(openssl_speed())
    results = {}
    for system in systems:
        if system == "cfssl-db":
            server = Cfssl(storage=True)
        elif system == "cfssl":
            server = Cfssl(storage=False)
        elif system == "hallmark-sqlite":
            server = Hallmark(None)
        elif system == "hallmark-postgres":
            server = Hallmark(soak.fresh_postgres(args.postgres), admin_url=args.postgres)
        else:
            sys.exit(f"unknown system {system!r}")
        try:
            # Warm up: one pass of a tenth of the CSRs.
            asyncio.run(drive(server.target, csrs[: max(len(csrs) // 10, levels[0])], levels[0]))
            for c in levels:
                rates, lats, bounds = [], [], []
                for _ in range(args.runs):
                    probe = server.probe() if args.probe else None
                    rate, lat = asyncio.run(drive(server.target, csrs, c))
                    rates.append(rate)
                    lats.extend(lat)
                    if probe:
                        print(f"  {system} c={c} run {len(rates)}: {rate:,.0f}/s", flush=True)
                        line, bound = probe.report(len(csrs))
                        bounds.append(bound)
                        print(line, flush=True)
                lats.sort()
                results[(system, c)] = (
                    statistics.median(rates), rates,
                    lats[len(lats) // 2] * 1000, lats[int(len(lats) * 0.99)] * 1000,
                    statistics.median(bounds) if bounds else None)
                print(f"  {system} c={c}: " + " ".join(f"{r:,.0f}" for r in rates) + "/s", flush=True)
        finally:
            server.stop()
    print()
    # With --probe, the last column is the rate each system's CPU per
    # certificate allows with no idle core (median of its runs), as a ratio
    # of cfssl without storage's measured rate: a goal above it cannot be
    # met in this hour by waiting less, only by spending less CPU.
    bound_head, bound_rule = (" with no idle, × cfssl |", "---:|") if args.probe else ("", "")
    print(f"| system | clients | certificates/s (median) | runs | p50 ms | p99 ms | × cfssl without storage |{bound_head}")
    print(f"|---|---:|---:|---|---:|---:|---:|{bound_rule}")
    for (system, c), (median, rates, p50, p99, bound) in results.items():
        base = results.get(("cfssl", c))
        ratio = f"{median / base[0]:.2f}" if base else "—"
        runs = " ".join(f"{r:,.0f}" for r in rates)
        cell = ""
        if args.probe:
            cell = f" {bound:,.0f}/s ({bound / base[0]:.2f}) |" if base and bound else " — |"
        print(f"| {system} | {c} | {median:,.0f} | {runs} | {p50:.1f} | {p99:.1f} | {ratio} |{cell}")


if __name__ == "__main__":
    main()

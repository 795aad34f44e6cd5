#!/usr/bin/env python3
"""Start-up time and idle memory of the real binary (docs/BENCHMARKS.md,
"Start-up and memory"; DESIGN §6: ready ≤ 300 ms, idle RSS ≤ 30 MB).

  scripts/startup.py [--store sqlite|postgres] [--restarts 3]
                     [--postgres URL]

In a fresh data directory (and, for PostgreSQL, a fresh database on the
server at URL, dropped afterwards): `init`, then

  - the first `serve`, which also makes the initial administrator (an
    argon2id hash): milliseconds from exec to `/readyz` answering 200,
    and VmRSS 1, 4 and 12 s after;
  - one dashboard sign-in with a wrong password (one argon2id check):
    VmRSS 1 s after;
  - `--restarts` more starts on the existing data: ready milliseconds
    and VmRSS 1 s after each.

Prints one Markdown table row per start. Needs only the standard
library, `psql` for PostgreSQL, and target/release/hallmark ($HALLMARK to
override). Ports are ephemeral; everything stays on 127.0.0.1.
"""

import argparse
import http.cookiejar
import os
import re
import shutil
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import soak  # noqa: E402  (BIN, PASS, free_port, fresh_postgres)


def rss_mb(pid):
    with open(f"/proc/{pid}/status") as f:
        kb = int(re.search(r"^VmRSS:\s+(\d+) kB", f.read(), re.M).group(1))
    return kb / 1024


class Server:
    def __init__(self, data, env):
        self.data, self.env = data, env
        self.http = f"http://127.0.0.1:{env['HALLMARK_SERVER__HTTP_LISTEN'].rsplit(':', 1)[1]}"
        self.https = f"https://localhost:{env['HALLMARK_SERVER__HTTPS_LISTEN'].rsplit(':', 1)[1]}"

    def start(self):
        """Starts `serve`; returns milliseconds from exec to /readyz 200."""
        started = time.perf_counter()
        self.proc = subprocess.Popen([soak.BIN, "serve"], cwd=self.data, env=self.env,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = started + 30
        while time.perf_counter() < deadline:
            if self.proc.poll() is not None:
                sys.exit(f"serve exited with {self.proc.returncode}")
            try:
                with urllib.request.urlopen(f"{self.http}/readyz", timeout=1) as r:
                    if r.status == 200:
                        return (time.perf_counter() - started) * 1000
            except (urllib.error.URLError, ConnectionError, OSError):
                pass
            time.sleep(0.002)
        sys.exit("serve was not ready within 30 s")

    def sign_in_once(self):
        """One sign-in with a wrong password: the form, its CSRF token,
        and the POST the server checks with argon2id (answered 401)."""
        ctx = ssl.create_default_context(
            cafile=os.path.join(self.data, "hallmark-data", "ca", "root.crt.pem"))
        jar = http.cookiejar.CookieJar()
        opener = urllib.request.build_opener(urllib.request.HTTPSHandler(context=ctx),
                                             urllib.request.HTTPCookieProcessor(jar))
        page = opener.open(f"{self.https}/admin/login", timeout=10).read().decode()
        token = re.search(r'name="csrf" value="([^"]*)"', page).group(1)
        body = urllib.parse.urlencode(
            {"csrf": token, "username": "admin", "password": "not the password"}).encode()
        try:
            opener.open(f"{self.https}/admin/login", data=body, timeout=30)
            sys.exit("a wrong password was accepted")
        except urllib.error.HTTPError as e:
            if e.code != 401:
                sys.exit(f"sign-in answered {e.code}, expected 401")

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=30)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--store", choices=("sqlite", "postgres"), default="sqlite")
    p.add_argument("--restarts", type=int, default=3)
    p.add_argument("--postgres", default="postgres://postgres@127.0.0.1:5432/postgres")
    args = p.parse_args()

    data = tempfile.mkdtemp(prefix="hallmark-startup-")
    env = dict(os.environ)
    env.update({
        "HALLMARK_ROOT_PASSPHRASE": soak.PASS,
        "HALLMARK_SERVER__HTTPS_LISTEN": f"127.0.0.1:{soak.free_port()}",
        "HALLMARK_SERVER__HTTP_LISTEN": f"127.0.0.1:{soak.free_port()}",
        "RUST_LOG": "warn",
    })
    env.pop("DATABASE_URL", None)
    database = None
    if args.store == "postgres":
        database = soak.fresh_postgres(args.postgres)
        env["DATABASE_URL"] = database
    try:
        out = subprocess.run([soak.BIN, "init"], cwd=data, env=env,
                             capture_output=True, text=True, timeout=120)
        if out.returncode != 0:
            sys.exit(f"init failed: {out.stderr}")
        server = Server(data, env)
        print(f"{soak.BIN}, {args.store}, {os.cpu_count()} cores")
        print("| start | ready ms | VmRSS MB |")
        print("|---|---:|---|")
        ready = server.start()
        samples = []
        for wait in (1, 3, 8):
            time.sleep(wait)
            samples.append(rss_mb(server.proc.pid))
        print(f"| first (makes the initial administrator) | {ready:.0f} | "
              f"{' / '.join(f'{s:.1f}' for s in samples)} (1 / 4 / 12 s) |")
        server.sign_in_once()
        time.sleep(1)
        print(f"| first, 1 s after a sign-in | — | {rss_mb(server.proc.pid):.1f} |")
        server.stop()
        for i in range(args.restarts):
            ready = server.start()
            time.sleep(1)
            print(f"| restart {i + 1} | {ready:.0f} | {rss_mb(server.proc.pid):.1f} |")
            server.stop()
    finally:
        shutil.rmtree(data, ignore_errors=True)
        if database:
            name = database.rsplit("/", 1)[1]
            subprocess.run(["psql", args.postgres, "-qc",
                            f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"], check=False)


if __name__ == "__main__":
    main()

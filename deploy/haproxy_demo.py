"""Two crossdock instances behind HAProxy on loopback, a load test through HAProxy, and each instance's share.

    .venv/bin/python deploy/haproxy_demo.py                       # 200 connections of ping for 10 s
    .venv/bin/python deploy/haproxy_demo.py -- -c 1000 -s mix:ping=90,primes=10 -d 20   # loadtest flags after --

It starts ``crossdock serve`` twice on free loopback ports, ``haproxy -db -f deploy/haproxy.cfg`` in the
foreground with those ports in its environment (stats socket and log in a temporary directory: no root, nothing
written elsewhere), waits until HAProxy's health checks see both instances up, runs ``crossdock loadtest``
against HAProxy's port, then prints, per instance, how many connections and commands it took during the load
test (INFO stats before and after; HAProxy's own health checks, one PING every 2 s, are in the figures). Every
process it started is stopped at the end, also on Ctrl-C or an error.

Each instance has its own keyspace: the load test's keys are split between them. See docs/deployment.md.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from loadtest.servers import RunningServer, free_port, start_crossdock

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "deploy" / "haproxy.cfg"

#: Seconds to wait for an instance's "started" line and for HAProxy's checks (inter 2s, rise 2) to pass.
START_WAIT = 60.0


def resp_info(port: int, section: str) -> dict[str, str]:
    """INFO over a raw socket (an inline command; the reply is one bulk string)."""
    data = b""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(f"INFO {section}\r\n".encode())
        while chunk := sock.recv(65536):
            data += chunk
            header, sep, body = data.partition(b"\r\n")
            if sep and len(body) >= int(header[1:]) + 2:
                break
    _, _, body = data.partition(b"\r\n")
    return dict(line.split(":", 1) for line in body.decode().splitlines() if ":" in line)


def haproxy_status(stats_socket: Path) -> dict[str, str]:
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(5)
        sock.connect(str(stats_socket))
        sock.sendall(b"show stat\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    rows = [line.split(",") for line in data.decode().splitlines() if line and not line.startswith("#")]
    return {row[1]: row[17] for row in rows if row[0] == "crossdock_instances" and row[1] != "BACKEND"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=1, help="pool workers per instance (default 1)")
    parser.add_argument("--mode", default="async", choices=("async", "threaded"))
    parser.add_argument("loadtest_args", nargs="*", help="flags for crossdock loadtest (after --)")
    args = parser.parse_args()
    haproxy = shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin:/usr/local/sbin")
    if haproxy is None:
        raise SystemExit("haproxy is not installed (apt-get install haproxy)")
    loadtest_args = args.loadtest_args or ["-c", "200", "-d", "10", "-s", "ping"]

    instances: list[RunningServer] = []
    started: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory(prefix="crossdock-haproxy-") as tmp:
        try:
            for _ in (1, 2):
                instances.append(start_crossdock(args.mode, "pool", args.workers))
            ports = [instance.port for instance in instances]
            front = free_port()
            stats_socket = Path(tmp) / "haproxy.sock"
            env = {
                **os.environ,
                "CROSSDOCK_LB_BIND": f"127.0.0.1:{front}",
                "CROSSDOCK_LB_SERVER1": f"127.0.0.1:{ports[0]}",
                "CROSSDOCK_LB_SERVER2": f"127.0.0.1:{ports[1]}",
                "CROSSDOCK_LB_STATS_SOCKET": str(stats_socket),
            }
            log_path = Path(tmp) / "haproxy.log"
            with open(log_path, "wb") as log:
                lb = subprocess.Popen([haproxy, "-db", "-f", str(CONFIG)], cwd=tmp, env=env, stdout=log, stderr=log)
            started.append(lb)
            deadline = time.monotonic() + START_WAIT
            status: dict[str, str] = {}
            while time.monotonic() < deadline and lb.poll() is None:
                if stats_socket.exists():
                    status = haproxy_status(stats_socket)
                    if status and all(value == "UP" for value in status.values()):
                        break
                time.sleep(0.1)
            else:
                print(log_path.read_text(), file=sys.stderr)
                raise SystemExit(f"haproxy did not see both instances up: {status}")
            print(f"instances on ports {ports[0]} and {ports[1]}; haproxy on {front}: {status}\n", flush=True)

            before = [resp_info(port, "stats") for port in ports]
            command = [sys.executable, "-m", "server", "loadtest", "-p", str(front), *loadtest_args]
            print("$ crossdock", " ".join(command[3:]), flush=True)
            code = subprocess.run(command, cwd=ROOT).returncode
            after = [resp_info(port, "stats") for port in ports]

            deltas = [
                {key: int(a[key]) - int(b[key]) for key in ("total_connections_received", "total_commands_processed")}
                for a, b in zip(after, before, strict=True)
            ]
            total = sum(d["total_commands_processed"] for d in deltas) or 1
            print("\ninstance  port   connections  commands    share of commands")
            for i, (port, delta) in enumerate(zip(ports, deltas, strict=True), start=1):
                print(
                    f"{i:<9} {port:<6} {delta['total_connections_received']:>11}  "
                    f"{delta['total_commands_processed']:>10}  {delta['total_commands_processed'] / total:>8.1%}"
                )
            print("\n(each instance has its own keyspace: see docs/deployment.md)")
            return code
        finally:
            for proc in started:
                if proc.poll() is None:
                    proc.terminate()
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
            for instance in instances:
                instance.stop()


if __name__ == "__main__":
    raise SystemExit(main())

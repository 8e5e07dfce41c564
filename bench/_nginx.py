"""
nginx for the benchmarks: a fast upstream serving a small static file, and
nginx's own C{proxy_pass} to it, the compiled reference a Python proxy is
compared with.

Each nginx is its own process with its own config file, prefix, pid file and
logs in a temporary directory, one worker, C{daemon off;}, listening on
127.0.0.1 only; it is stopped by its pid like every other process.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess

from _processes import Processes, waitForPort

#: What rows 2 to 5 fetch: a small static file.
SMALL_PATH = "/small.txt"
SMALL_BODY = b"akoutpost benchmark: a small static response from the upstream.\n" * 8


def available() -> bool:
    return shutil.which("nginx") is not None


def _config(prefix: str, port: int, server: str) -> str:
    # As root, nginx would run its worker as "nobody", who cannot read the
    # temporary directory; keep it as the current user.
    user = f"user {pwd.getpwuid(os.geteuid()).pw_name};\n" if os.geteuid() == 0 else ""
    temp = "".join(
        f"    {kind}_temp_path {prefix}/{kind}-temp;\n" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return (
        f"{user}"
        "worker_processes 1;\n"
        "daemon off;\n"
        f"pid {prefix}/nginx.pid;\n"
        f"error_log {prefix}/error.log warn;\n"
        "events { worker_connections 4096; }\n"
        "http {\n"
        "    access_log off;\n"
        f"{temp}"
        "    keepalive_requests 1000000;\n"
        "    keepalive_timeout 120s;\n"
        "    default_type text/plain;\n"
        f"{server}"
        "}\n"
    )


def _start(processes: Processes, prefix: str, port: int, server: str, cpu: str | None) -> subprocess.Popen[bytes]:
    os.makedirs(prefix, exist_ok=True)
    path = os.path.join(prefix, "nginx.conf")
    with open(path, "w") as f:
        f.write(_config(prefix, port, server))
    process = processes.start(["nginx", "-p", prefix, "-c", path], cpu=cpu, log=os.path.join(prefix, "stdout.log"))
    waitForPort(port, 15, process)
    return process


def startUpstream(processes: Processes, workdir: str, port: int, cpu: str | None) -> subprocess.Popen[bytes]:
    """
    nginx serving L{SMALL_PATH} on 127.0.0.1:C{port}, keep-alive without limit.
    """
    prefix = os.path.join(workdir, "nginx-upstream")
    root = os.path.join(prefix, "www")
    os.makedirs(root, exist_ok=True)
    with open(os.path.join(root, SMALL_PATH.lstrip("/")), "wb") as f:
        f.write(SMALL_BODY)
    server = f"    server {{\n        listen 127.0.0.1:{port};\n        root {root};\n    }}\n"
    return _start(processes, prefix, port, server, cpu)


def startProxy(
    processes: Processes, workdir: str, port: int, upstream: int, cpu: str | None
) -> subprocess.Popen[bytes]:
    """
    nginx on 127.0.0.1:C{port} passing everything to 127.0.0.1:C{upstream}
    over pooled HTTP/1.1 connections, as a production front would.
    """
    prefix = os.path.join(workdir, "nginx-proxy")
    server = (
        f"    upstream app {{\n        server 127.0.0.1:{upstream};\n        keepalive 64;\n    }}\n"
        f"    server {{\n        listen 127.0.0.1:{port};\n"
        "        location / {\n"
        "            proxy_pass http://app;\n"
        "            proxy_http_version 1.1;\n"
        '            proxy_set_header Connection "";\n'
        "            proxy_set_header Host $http_host;\n"
        "            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;\n"
        "        }\n    }\n"
    )
    return _start(processes, prefix, port, server, cpu)

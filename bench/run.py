#!/usr/bin/env python3
"""FuseStream benchmark: FuseStream vs curl vs rclone mount, one file served by a real nginx.

Run as root from anywhere (the repo is found from this file's location):

    sudo bench/run.py [--size-mib 1024] [--runs 5] [--no-rclone] [--json PATH] [--keep]

Everything (nginx config and root, mount points, caches, sockets, logs) lives in one
temp dir that is removed at the end; daemons are SIGTERMed and waited for and every mount
is unmounted, also on Ctrl-C, SIGTERM and errors. See bench/README.md.
"""

import argparse
import datetime
import hashlib
import json
import os
import platform
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BIN = REPO / "target" / "release"
FILE = "bench.bin"  # name of the file in nginx's root and in the FuseStream mount
PAGE = 4096
HEAD_PREFETCH = 128 * 1024  # what the mount daemon fetches of a file at staging (its default)
SETTLE = 0.25  # seconds of pause between (re-)mounting/staging and a timed sequential read

# Targets from the project's issue. kind: which column/ratio is checked, and how.
TARGETS = {
    "cold_seq": ("ratio", ">=", 0.8),
    "warm_seq": ("ratio", ">=", 1.0),
    "open_first4k": ("value", "<=", 1.0),
    "rand4k_p50": ("value", "<=", 1.0),
    "rand4k_p99": ("value", "<=", 3.0),
    "rss_peak": ("value", "<=", 64.0),
    "stalled_meta_p99": ("value", "<=", 5.0),
}
# Sequential throughput with span export on may cost at most this fraction.
OTLP_MAX_OVERHEAD = 0.05


def log(msg):
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)



def start_dead_remote(size, answers_with_headers):
    """An HTTP server that answers the one-byte staging probe of a `size`-byte object, then
    never finishes another request: with `answers_with_headers`, it sends the headers and
    4 KiB of the range and hangs (a remote that stalls mid-body); without, it accepts the
    request and never answers at all (a dead host that still accepts connections)."""
    import socketserver
    import threading

    class Handler(socketserver.BaseRequestHandler):
        def handle(self):
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = self.request.recv(4096)
                if not chunk:
                    return
                data += chunk
            rng = [l for l in data.decode("latin-1").split("\r\n") if l.lower().startswith("range:")]
            first, last = 0, size - 1
            if rng:
                spec = rng[0].split("=", 1)[1]
                a, _, b = spec.partition("-")
                first, last = int(a), (int(b) if b else size - 1)
            n = last - first + 1
            if n == 1 or answers_with_headers:
                self.request.sendall(
                    (f"HTTP/1.1 206 Partial Content\r\nContent-Range: bytes {first}-{last}/{size}\r\n"
                     f"Content-Length: {n}\r\nETag: \"dead\"\r\n\r\n").encode())
            if n == 1:
                self.request.sendall(b"x")
                return
            if answers_with_headers:
                self.request.sendall(b"x" * 4096)
            threading.Event().wait()  # never finish

    class Server(socketserver.ThreadingTCPServer):
        daemon_threads = True
        allow_reuse_address = True

    server = Server(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


class BenchError(Exception):
    pass


class Interrupted(BaseException):
    """Raised from SIGTERM/SIGHUP handlers so that all clean-up runs."""


# ---------------------------------------------------------------- helpers


def percentile(values, p):
    """Linear interpolation between closest ranks (numpy's default)."""
    xs = sorted(values)
    if not xs:
        return None
    k = (len(xs) - 1) * p / 100.0
    lo = int(k)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def median(values):
    return statistics.median(values) if values else None


def unescape_mount_field(s):
    # /proc/self/mounts escapes space, tab, newline and backslash as \ooo.
    out, i = [], 0
    while i < len(s):
        if s[i] == "\\" and i + 4 <= len(s) and s[i + 1 : i + 4].isdigit():
            out.append(chr(int(s[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(s[i])
            i += 1
    return "".join(out)


def mounts():
    with open("/proc/self/mounts") as f:
        return [unescape_mount_field(line.split()[1]) for line in f if line.strip()]


def is_mounted(path):
    return str(path) in mounts()


def wait_until(pred, timeout, what, interval=0.02, alive=None):
    deadline = time.monotonic() + timeout
    while True:
        if pred():
            return
        if alive is not None:
            alive()
        if time.monotonic() > deadline:
            raise BenchError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def unmount(path):
    """Unmount a FUSE mount; lazily if a plain unmount fails. Never raises."""
    path = str(path)
    if not is_mounted(path):
        return
    fusermount = shutil.which("fusermount3") or shutil.which("fusermount")
    attempts = []
    if fusermount:
        attempts += [[fusermount, "-u", path], [fusermount, "-u", "-z", path]]
    attempts += [["umount", path], ["umount", "-l", path]]
    for cmd in attempts:
        try:
            subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=20)
        except (OSError, subprocess.TimeoutExpired):
            pass
        if not is_mounted(path):
            return
    log(f"WARNING: could not unmount {path}")


def stop_process(proc, name, timeout=15.0, sig=signal.SIGTERM):
    """Signal a child we started (by its pid) and wait for it; SIGKILL after `timeout`."""
    if proc is None or proc.poll() is not None:
        return
    try:
        proc.send_signal(sig)
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        log(f"WARNING: {name} (pid {proc.pid}) ignored {sig.name} for {timeout:.0f}s; SIGKILL")
        proc.kill()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            log(f"WARNING: {name} (pid {proc.pid}) did not exit after SIGKILL")


def vm_hwm_mib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


def spawn(cmd, stderr_path, env):
    """Start a child in its own session (Ctrl-C reaches only us; we stop it in order)."""
    with open(stderr_path, "ab") as err:
        return subprocess.Popen([str(c) for c in cmd], stdin=subprocess.DEVNULL,
                                stdout=err, stderr=err, start_new_session=True, env=env)


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tail(path, n=20):
    try:
        return "".join(Path(path).read_text(errors="replace").splitlines(True)[-n:])
    except OSError:
        return ""


def tool_version(cmd):
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
        out = (p.stdout or p.stderr).strip().splitlines()
        return out[0] if out else None
    except (OSError, subprocess.TimeoutExpired):
        return None


# ---------------------------------------------------------------- the bench


class Bench:
    def __init__(self, args, stack):
        self.args = args
        self.stack = stack
        self.size = args.size_mib << 20
        self.tmp = Path(tempfile.mkdtemp(prefix="fusestream-bench-"))
        stack.callback(self._remove_tmp)
        log(f"temp dir {self.tmp}")
        self.www = self.tmp / "www"
        self.src = self.www / FILE
        self.sha256 = None
        self.port = None
        self.url = None
        self.env = dict(os.environ, LC_ALL="C")
        self.fs_mnt = self.tmp / "fs-mnt"
        self.fs_path = self.fs_mnt / FILE
        self.mountd = None
        self.ctl = None
        self.rclone_bin = None if args.no_rclone else shutil.which("rclone")
        self.rclone_note = None
        if args.no_rclone:
            self.rclone_note = "rclone skipped (--no-rclone)"
        elif not self.rclone_bin:
            self.rclone_note = "rclone skipped: not found on PATH"
        self.rc_mnt = self.tmp / "rclone-mnt"
        self.rc_cache = self.tmp / "rclone-cache"
        self.rc_proc = None
        self.rc_hwm = []  # VmHWM of every rclone process, read just before its unmount
        self.rc_mounts = 0
        self.problems = []
        self.fs_ino = None  # inode of the current FuseStream entry
        self.stale_opens = 0
        self.timeout = 60 + args.size_mib * 0.5  # bound for one full read (>= 2 MiB/s)

    # ---- clean-up of the temp dir: never while anything is still mounted under it
    def _remove_tmp(self):
        under = [m for m in mounts() if m == str(self.tmp) or m.startswith(str(self.tmp) + "/")]
        for m in under:
            unmount(m)
        under = [m for m in mounts() if m.startswith(str(self.tmp) + "/")]
        if under:
            log(f"WARNING: still mounted, temp dir {self.tmp} left in place: {under}")
        elif self.args.keep:
            log(f"--keep: temp dir left at {self.tmp}")
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)

    def problem(self, msg):
        log(f"PROBLEM: {msg}")
        self.problems.append(msg)

    # ---- source file + nginx
    def make_source(self):
        self.www.mkdir()
        log(f"writing {self.args.size_mib} MiB of random data")
        h = hashlib.sha256()
        chunk = 8 << 20
        with open(self.src, "wb") as f:
            left = self.size
            while left:
                b = os.urandom(min(chunk, left))
                h.update(b)
                f.write(b)
                left -= len(b)
            # Written back now, not during the measurements (it would load every one).
            f.flush()
            os.fsync(f.fileno())
        self.sha256 = h.hexdigest()
        self.src_fd = os.open(self.src, os.O_RDONLY)
        self.stack.callback(os.close, self.src_fd)

    def start_nginx(self):
        nginx = "/usr/sbin/nginx"
        if not os.access(nginx, os.X_OK):
            raise BenchError("/usr/sbin/nginx not found (apt-get install nginx-light)")
        d = self.tmp / "nginx"
        d.mkdir()
        for attempt in range(5):
            port = free_port()
            conf = d / "nginx.conf"
            conf.write_text(
                f"""daemon off;
master_process off;
worker_processes 1;
error_log {d}/error.log;
pid {d}/nginx.pid;
events {{ worker_connections 256; }}
http {{
    access_log off;
    sendfile on;
    default_type application/octet-stream;
    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    server {{
        listen 127.0.0.1:{port};
        root {self.www};
        autoindex on;  # rclone's http backend lists the directory
    }}
}}
"""
            )
            proc = spawn([nginx, "-p", f"{d}/", "-e", d / "error.log", "-c", conf],
                         d / "stderr.log", self.env)
            self.stack.callback(stop_process, proc, "nginx")

            def up():
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    return True
                except OSError:
                    return False

            deadline = time.monotonic() + 10
            while proc.poll() is None and not up() and time.monotonic() < deadline:
                time.sleep(0.02)
            if proc.poll() is None and up():
                self.nginx = proc
                self.port = port
                self.url = f"http://127.0.0.1:{port}/{FILE}"
                log(f"nginx pid {proc.pid} on 127.0.0.1:{port}")
                return
            stop_process(proc, "nginx")
            log(f"nginx did not come up on port {port} (attempt {attempt + 1}):\n"
                + tail(d / "error.log") + tail(d / "stderr.log"))
        raise BenchError("nginx did not start")

    # ---- FuseStream
    def ctl_cmd(self, *args, timeout=30, check=True):
        env = dict(self.env, FUSESTREAM_SOCKET=str(self.tmp / "control.sock"))
        p = subprocess.run([str(BIN / "fusestreamctl"), *args], env=env, capture_output=True,
                           text=True, timeout=timeout)
        if check and p.returncode != 0:
            raise BenchError(f"fusestreamctl {' '.join(args)} failed ({p.returncode}): "
                             f"{p.stderr.strip()}")
        return p

    def start_fusestream(self, extra_env=None):
        env = dict(self.env, **(extra_env or {}))
        for b in ("fusestream-mountd", "fusestreamctl"):
            if not os.access(BIN / b, os.X_OK):
                raise BenchError(f"{BIN / b} missing: run `cargo build --release --bins` in the repo")
        cache = self.tmp / "fs-cache"
        cache.mkdir(exist_ok=True)  # restarted daemons (the OTLP runs) reuse it
        mountd_log = self.tmp / "mountd.log"
        ctl_log = self.tmp / "control.log"
        self.mountd = spawn(
            [BIN / "fusestream-mountd", "--mountpoint", self.fs_mnt,
             "--socket", self.tmp / "mountd.sock", "--cache-dir", cache,
             "--log-file", mountd_log], self.tmp / "mountd.stderr", env)
        # LIFO: the mount is checked/unmounted after the daemon has been stopped.
        self.stack.callback(unmount, self.fs_mnt)
        self.stack.callback(stop_process, self.mountd, "fusestream-mountd")

        def mountd_alive():
            if self.mountd.poll() is not None:
                raise BenchError(f"fusestream-mountd exited with {self.mountd.returncode}:\n"
                                 + tail(mountd_log) + tail(self.tmp / "mountd.stderr"))

        wait_until(lambda: is_mounted(self.fs_mnt), 15, "the FuseStream mount", alive=mountd_alive)
        self.ctl = spawn(
            [BIN / "fusestreamctl", "serve", "--socket", self.tmp / "control.sock",
             "--mountd-socket", self.tmp / "mountd.sock", "--log-file", ctl_log],
            self.tmp / "control.stderr", env)
        self.stack.callback(stop_process, self.ctl, "fusestreamctl serve")

        def ctl_alive():
            mountd_alive()
            if self.ctl.poll() is not None:
                raise BenchError(f"fusestreamctl serve exited with {self.ctl.returncode}:\n"
                                 + tail(ctl_log) + tail(self.tmp / "control.stderr"))

        wait_until(lambda: self.ctl_cmd("status", timeout=5, check=False).returncode == 0, 15,
                   "fusestreamctl status", interval=0.1, alive=ctl_alive)
        log(f"FuseStream up: mountd pid {self.mountd.pid}, control pid {self.ctl.pid}")

    def fs_stage(self):
        """Stage (or re-stage: new inode, empty backing store) the nginx URL."""
        t0 = time.perf_counter()
        p = self.ctl_cmd("stage", "--replace", "--name", FILE, self.url)
        dt = time.perf_counter() - t0
        if p.stdout.strip() != str(self.fs_path):
            self.problem(f"stage printed {p.stdout.strip()!r}, expected {self.fs_path}")
        return dt

    def fs_fetched(self):
        """FETCHED column of `fusestreamctl ls` for our entry."""
        for line in self.ctl_cmd("ls").stdout.splitlines()[1:]:
            cols = line.split()
            if cols and cols[0] == FILE:
                return int(cols[2])
        return None

    # ---- rclone
    def cold_read(self):
        """Re-stage the entry (new inode, empty store) and read it all once: MB/s."""
        self.fs_stage()
        time.sleep(SETTLE)
        st = os.stat(self.fs_path)
        if st.st_ino == self.fs_ino:
            self.problem(f"{self.fs_path} is still the replaced inode {st.st_ino}: not cold")
        self.fs_ino = st.st_ino
        return self.dd(self.fs_path)

    def otlp_runs(self):
        """Cold sequential reads with span export off and on, interleaved (off, on, off,
        on, ...) so drift on a shared machine hits both alike: the daemons are restarted
        for each read, with the standard OTEL_* variables pointing at a real OTLP receiver
        (gRPC) for the "on" ones, where every FUSE op and fetch is a span. Returns the MB/s
        of both series and the spans the receiver got."""
        sink_bin = BIN / "fusestream-otlp-sink"
        if not os.access(sink_bin, os.X_OK):
            raise BenchError(f"{sink_bin} missing: run `cargo build --release --bins` in the repo")
        with open(self.tmp / "otlp-sink.stderr", "w") as err:
            sink = subprocess.Popen([str(sink_bin)], stdin=subprocess.PIPE,
                                    stdout=subprocess.PIPE, stderr=err, text=True,
                                    start_new_session=True)
        self.stack.callback(stop_process, sink, "fusestream-otlp-sink")
        endpoints = dict(sink.stdout.readline().split() for _ in range(2))
        otel = {"OTEL_EXPORTER_OTLP_ENDPOINT": endpoints["grpc"],
                "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}
        log(f"span export off vs on (OTLP to {endpoints['grpc']}), interleaved")
        off, on = [], []
        for i in range(self.args.runs):
            for env, series in ((None, off), (otel, on)):
                self.shutdown_fusestream()
                self.fs_ino = None
                self.start_fusestream(env)
                series.append(self.cold_read())
            log(f"run {i + 1}/{self.args.runs}: export off {off[-1]:.0f} MB/s, "
                f"on {on[-1]:.0f} MB/s")
        # Stopping the daemons flushes their last spans.
        self.shutdown_fusestream()
        sink.stdin.close()
        sink.wait(timeout=15)
        said = (self.tmp / "otlp-sink.stderr").read_text()
        spans = int(said.rsplit("spans received:", 1)[1].split()[0]) if "spans received:" in said else 0
        if spans == 0:
            self.problem("the OTLP receiver got no spans while export was on")
        self.fs_ino = None
        self.start_fusestream()
        return off, on, spans

    def rclone_mount(self):
        """Fresh rclone mount with an empty VFS cache; the directory is listed before returning."""
        self.rclone_unmount()
        shutil.rmtree(self.rc_cache, ignore_errors=True)
        self.rc_cache.mkdir()
        self.rc_mnt.mkdir(exist_ok=True)
        conf = self.tmp / "rclone.conf"
        conf.touch()
        rlog = self.tmp / "rclone.log"
        cmd = [self.rclone_bin, "mount", ":http:", str(self.rc_mnt),
               "--http-url", f"http://127.0.0.1:{self.port}/",
               "--config", str(conf),
               "--read-only",
               "--vfs-cache-mode", "full",
               "--cache-dir", str(self.rc_cache),
               "--daemon-timeout", "10m",
               "--dir-cache-time", "1h",
               "--log-file", str(rlog), "--log-level", "NOTICE"]
        self.rclone_cmd = cmd
        self.rc_proc = spawn(cmd, self.tmp / "rclone.stderr", self.env)
        self.rc_mounts += 1

        def alive():
            if self.rc_proc.poll() is not None:
                raise BenchError(f"rclone mount exited with {self.rc_proc.returncode}:\n"
                                 + tail(rlog) + tail(self.tmp / "rclone.stderr"))

        wait_until(lambda: is_mounted(self.rc_mnt), 30, "the rclone mount", alive=alive)
        names = os.listdir(self.rc_mnt)  # the listing (and HEAD) happen here, untimed
        if FILE not in names:
            raise BenchError(f"rclone mount does not list {FILE}: {names}")
        st = os.stat(self.rc_mnt / FILE)
        if st.st_size != self.size:
            raise BenchError(f"rclone reports size {st.st_size}, expected {self.size}")

    def rclone_unmount(self):
        if self.rc_proc is None:
            unmount(self.rc_mnt)
            return
        hwm = vm_hwm_mib(self.rc_proc.pid)
        if hwm is not None:
            self.rc_hwm.append(hwm)
        unmount(self.rc_mnt)
        stop_process(self.rc_proc, "rclone", timeout=15)
        self.rc_proc = None

    # ---- primitive measurements
    def dd(self, path):
        """Sequential read with dd bs=1M; returns MB/s (10^6 B/s) from our own timing."""
        t0 = time.perf_counter()
        p = subprocess.run(["dd", f"if={path}", "of=/dev/null", "bs=1M"], capture_output=True,
                           text=True, timeout=self.timeout, env=self.env)
        dt = time.perf_counter() - t0
        if p.returncode != 0:
            raise BenchError(f"dd if={path} failed: {p.stderr.strip()}")
        got = None
        for line in p.stderr.splitlines():
            if " bytes" in line and "copied" in line:
                got = int(line.split()[0])
        if got != self.size:
            raise BenchError(f"dd read {got} bytes from {path}, expected {self.size}")
        return self.size / dt / 1e6

    def curl_seq(self):
        t0 = time.perf_counter()
        p = subprocess.run(["curl", "-s", "-S", "-f", "-o", "/dev/null", "-w", "%{size_download}",
                            self.url], capture_output=True, text=True, timeout=self.timeout)
        dt = time.perf_counter() - t0
        if p.returncode != 0 or int(float(p.stdout)) != self.size:
            raise BenchError(f"curl failed ({p.returncode}): {p.stderr.strip()} {p.stdout}")
        return self.size / dt / 1e6

    def curl_pipe_dd(self):
        """curl piped into `dd bs=1M`: the cost of handing the bytes to a second process
        (no store, no FUSE), a reference for what a mount's cold read can reach. MB/s."""
        t0 = time.perf_counter()
        curl = subprocess.Popen(["curl", "-s", "-S", "-f", self.url], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)
        dd = subprocess.run(["dd", "of=/dev/null", "bs=1M", "iflag=fullblock"], stdin=curl.stdout,
                            capture_output=True, text=True, timeout=self.timeout)
        curl.stdout.close()
        rc = curl.wait(timeout=self.timeout)
        dt = time.perf_counter() - t0
        got = next((int(l.split()[0]) for l in dd.stderr.splitlines() if "copied" in l), None)
        if rc != 0 or dd.returncode != 0 or got != self.size:
            raise BenchError(f"curl | dd failed (curl {rc}, dd {dd.returncode}, {got} bytes): "
                             f"{curl.stderr.read().decode(errors='replace').strip()}")
        return self.size / dt / 1e6

    def curl_ranges(self, offsets):
        """One curl process, one request per range on a kept-alive connection; curl's own
        time_total per request (no process start-up) in ms."""
        fmt = "%{time_total} %{http_code} %{size_download}\\n"
        cmd = ["curl"]
        for i, off in enumerate(offsets):
            if i:
                cmd.append("--next")
            cmd += ["-s", "-S", "-f", "-r", f"{off}-{off + PAGE - 1}", "-o", "/dev/null",
                    "-w", fmt, self.url]
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        lines = p.stdout.split()
        if p.returncode != 0 or len(lines) != 3 * len(offsets):
            raise BenchError(f"curl ranges failed ({p.returncode}): {p.stderr.strip()}")
        out = []
        for i in range(len(offsets)):
            t, code, n = lines[3 * i : 3 * i + 3]
            if code != "206" or int(float(n)) != PAGE:
                raise BenchError(f"curl range request got HTTP {code}, {n} bytes")
            out.append(float(t) * 1e3)
        return out

    def expect(self, off, data, what):
        want = os.pread(self.src_fd, PAGE, off)
        if data != want:
            self.problem(f"{what}: wrong bytes at offset {off} (got {len(data)} bytes)")

    def open_first4k(self, path, offset=0):
        """Times open + pread(4096, offset) + close; returns (ms, inode). The fstat that gets
        the inode (to check it is the freshly staged one) is left out of the time."""
        t0 = time.perf_counter()
        fd = os.open(path, os.O_RDONLY)
        try:
            data = os.pread(fd, PAGE, offset)
            t1 = time.perf_counter()
            ino = os.fstat(fd).st_ino
            t2 = time.perf_counter()
        finally:
            os.close(fd)
        dt = (time.perf_counter() - t2 + t1 - t0) * 1e3
        self.expect(offset, data, f"open+first 4 KiB at {offset} of {path}")
        return dt, ino

    def fs_fresh(self, ino):
        """True if `ino`, opened right after a re-stage, is a new inode. False (and counted)
        if the open still reached the replaced entry: `stage --replace` returned before the
        kernel's dentry for the name was invalidated. The caller discards that sample."""
        if ino == self.fs_ino:
            self.stale_opens += 1
            time.sleep(0.1)
            self.fs_ino = os.stat(self.fs_path).st_ino
            return False
        self.fs_ino = ino
        return True

    def fs_open_fresh(self):
        """Re-stage and open; retried (bounded) if the open got the replaced entry."""
        for _ in range(5):
            self.fs_stage()
            fd = os.open(self.fs_path, os.O_RDONLY)
            if self.fs_fresh(os.fstat(fd).st_ino):
                return fd
            os.close(fd)
        raise BenchError("5 re-stagings in a row opened the replaced entry")

    def fs_first4k_samples(self, count, offset):
        """`count` timings of open + 4 KiB at `offset` + close, each right after a re-stage;
        samples whose open reached the replaced entry are redone (bounded)."""
        lat, attempts = [], 0
        while len(lat) < count:
            attempts += 1
            if attempts > 2 * count + 5:
                raise BenchError("too many re-stagings opened the replaced entry")
            self.fs_stage()
            dt, ino = self.open_first4k(self.fs_path, offset)
            if self.fs_fresh(ino):
                lat.append(dt)
        return lat

    def mid_offset(self):
        """A page in the middle of the file, far past the head fetched at staging."""
        return self.size // 2 // PAGE * PAGE

    def random_preads(self, path, offsets, fd=None):
        lat, datas = [], []
        if fd is None:
            fd = os.open(path, os.O_RDONLY)
        try:
            for off in offsets:
                t0 = time.perf_counter()
                data = os.pread(fd, PAGE, off)
                lat.append((time.perf_counter() - t0) * 1e3)
                datas.append(data)
        finally:
            os.close(fd)
        bad = [off for off, d in zip(offsets, datas) if d != os.pread(self.src_fd, PAGE, off)]
        if bad:
            self.problem(f"random preads on {path}: wrong bytes at {len(bad)} of {len(offsets)} "
                         f"offsets (first {bad[0]})")
        return lat

    def offsets(self, run):
        rng = random.Random(4242 + run)
        return [rng.randrange(self.size // PAGE) * PAGE for _ in range(self.args.random_reads)]

    def sha_of(self, path):
        h = hashlib.sha256()
        with open(path, "rb") as f:
            while True:
                b = f.read(8 << 20)
                if not b:
                    break
                h.update(b)
        return h.hexdigest()

    # ---- the benchmark proper
    def run(self):
        a = self.args
        R = {"curl": {}, "fusestream": {}, "rclone": {}}
        self.make_source()
        self.start_nginx()
        self.start_fusestream()

        # 1+2 sequential
        log(f"curl sequential x{a.runs}")
        R["curl"]["seq"] = [self.curl_seq() for _ in range(a.runs)]
        log(f"curl | dd x{a.runs}")
        R["curl"]["pipe_seq"] = [self.curl_pipe_dd() for _ in range(a.runs)]

        cold, warm, stage_ms = [], [], []
        for i in range(a.runs):
            stage_ms.append(self.fs_stage() * 1e3)
            # Replacing a fully read entry tears down its backing store and its page cache
            # (tens of ms per GiB, see README); let that finish outside the timed read.
            time.sleep(SETTLE)
            st = os.stat(self.fs_path)  # untimed lookup of the new inode
            fetched = self.fs_fetched()
            if st.st_ino == self.fs_ino:
                self.problem(f"{SETTLE}s after re-staging, {self.fs_path} is still the replaced "
                             f"inode {st.st_ino}: run {i + 1} is not cold")
            self.fs_ino = st.st_ino
            if fetched and fetched > HEAD_PREFETCH:
                self.problem(f"freshly staged entry already has FETCHED={fetched}, more than "
                             f"its head ({HEAD_PREFETCH})")
            if st.st_size != self.size:
                raise BenchError(f"FuseStream reports size {st.st_size}, expected {self.size}")
            cold.append(self.dd(self.fs_path))
            warm.append(self.dd(self.fs_path))
            log(f"FuseStream run {i + 1}/{a.runs}: cold {cold[-1]:.0f} MB/s, "
                f"warm {warm[-1]:.0f} MB/s")
        fetched = self.fs_fetched()
        if fetched != self.size:
            self.problem(f"after full reads FETCHED={fetched}, expected {self.size}")
        if self.sha_of(self.fs_path) != self.sha256:
            self.problem("sha256 of the file read through the FuseStream mount differs from the source")
        R["fusestream"].update(cold_seq=cold, warm_seq=warm, stage_ms=stage_ms)
        if not a.no_otlp:
            off, on, spans = self.otlp_runs()
            R["fusestream"].update(cold_seq_otlp_off=off, cold_seq_otlp=on, otlp_spans=spans)

        if self.rclone_bin:
            cold, warm = [], []
            for i in range(a.runs):
                self.rclone_mount()
                time.sleep(SETTLE)
                p = self.rc_mnt / FILE
                cold.append(self.dd(p))
                warm.append(self.dd(p))
                log(f"rclone run {i + 1}/{a.runs}: cold {cold[-1]:.0f} MB/s, "
                    f"warm {warm[-1]:.0f} MB/s")
            if self.sha_of(self.rc_mnt / FILE) != self.sha256:
                self.problem("sha256 of the file read through the rclone mount differs from the source")
            self.rclone_unmount()
            R["rclone"].update(cold_seq=cold, warm_seq=warm)

        # 3 open + first 4 KiB, freshly staged / freshly mounted
        n = a.latency_samples
        log(f"open+first 4 KiB: curl x{n}")
        R["curl"]["open_first4k"] = [self.curl_ranges([0])[0] for _ in range(n)]
        log(f"open+first 4 KiB: FuseStream x{n} re-stagings")
        # Reported on its own: the first re-stage replaces the fully read entry of the runs
        # above, and its teardown is paid by the next lookup. The samples that follow each
        # replace an entry with only its first few KiB fetched.
        lat = self.fs_first4k_samples(n + 1, 0)
        R["fusestream"]["open_first4k_after_full_replace"] = lat[0]
        R["fusestream"]["open_first4k"] = lat[1:]
        # The same with the first read in the middle: staging fetched only the head, so this
        # read waits for the network (what a first read costs without the head prefetch).
        mid = self.mid_offset()
        log(f"open+first 4 KiB at {mid}: curl and FuseStream x{n}")
        R["curl"]["open_mid4k"] = [self.curl_ranges([mid])[0] for _ in range(n)]
        R["fusestream"]["open_mid4k"] = self.fs_first4k_samples(n, mid)
        if self.rclone_bin:
            n_rc = min(n, a.rclone_latency_samples)
            log(f"open+first 4 KiB (at 0 and at {mid}): rclone x{n_rc} fresh mounts each")
            for key, off in (("open_first4k", 0), ("open_mid4k", mid)):
                lat = []
                for _ in range(n_rc):
                    self.rclone_mount()
                    lat.append(self.open_first4k(self.rc_mnt / FILE, off)[0])
                R["rclone"][key] = lat
            self.rclone_unmount()

        # 4 random 4 KiB preads on a cold file
        log(f"random 4 KiB preads: {a.random_reads} per run x{a.runs}")
        for key in R:
            R[key]["rand4k_runs"] = []
        for i in range(a.runs):
            offs = self.offsets(i)
            R["curl"]["rand4k_runs"].append(self.curl_ranges(offs))
            fd = self.fs_open_fresh()
            R["fusestream"]["rand4k_runs"].append(self.random_preads(self.fs_path, offs, fd))
            if self.rclone_bin:
                self.rclone_mount()
                R["rclone"]["rand4k_runs"].append(self.random_preads(self.rc_mnt / FILE, offs))
        if self.rclone_bin:
            self.rclone_unmount()

        # 6 metadata latency while readers are stuck on a stalled remote
        log("ls/stat with 8 readers stalled: FuseStream")
        R["fusestream"]["stalled_meta"] = self.stalled_metadata()

        # 7 a healthy file's first read while dead-host objects are being read
        log(f"open+4 KiB at {mid} with readers stuck on dead-host objects: FuseStream x{n}")
        R["fusestream"]["open_mid4k_deadhosts"] = self.dead_host_latency(mid, n)

        # 5 peak RSS
        R["fusestream"]["rss_peak"] = vm_hwm_mib(self.mountd.pid)
        R["fusestream"]["control_rss_peak"] = vm_hwm_mib(self.ctl.pid)
        if self.rclone_bin:
            R["rclone"]["rss_peak"] = max(self.rc_hwm) if self.rc_hwm else None
            R["rclone"]["rss_peak_per_mount"] = self.rc_hwm
        R["fusestream"]["stale_opens"] = self.stale_opens
        if self.stale_opens:
            self.problem(f"{self.stale_opens} open(s) right after `fusestreamctl stage --replace` "
                         f"had returned reached the replaced entry (old inode), not the new one; "
                         f"those samples were discarded and redone")
        if self.mountd.poll() is not None or self.ctl.poll() is not None:
            self.problem("a FuseStream daemon exited during the benchmark")
        return R

    def stalled_metadata(self, readers=8, samples=200):
        """Stages an object whose remote stalls, parks `readers` O_DIRECT reads on it, and
        times `ls` of the mount and `stat` of another entry. Then kills the readers, which
        must exit (FUSE_INTERRUPT), and unstages the object."""
        size = 64 << 20
        server = start_dead_remote(size, answers_with_headers=True)
        try:
            url = f"http://127.0.0.1:{server.server_address[1]}/stall.bin"
            self.ctl_cmd("stage", "--replace", "--name", "stall.bin", url)
            stuck = self.fs_mnt / "stall.bin"
            procs = [subprocess.Popen(["dd", f"if={stuck}", "of=/dev/null", "bs=4096", "count=1",
                                       f"skip={1000 + 997 * i}", "iflag=direct"],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                     for i in range(readers)]
            try:
                def parked():
                    out = self.ctl_cmd("status").stdout
                    line = [l for l in out.splitlines() if "reads waiting:" in l]
                    return bool(line) and int(line[0].split(":")[1]) >= readers
                wait_until(parked, 30, f"{readers} parked reads")
                lat = []
                for _ in range(samples):
                    t = time.perf_counter()
                    os.listdir(self.fs_mnt)
                    os.stat(self.fs_path)
                    lat.append((time.perf_counter() - t) * 1e3)
            finally:
                for p in procs:
                    p.kill()
                deadline = time.monotonic() + 10
                for p in procs:
                    try:
                        p.wait(timeout=max(0.1, deadline - time.monotonic()))
                    except subprocess.TimeoutExpired:
                        self.problem("a reader killed while stuck on a stalled remote did not exit")
            self.ctl_cmd("unstage", "stall.bin")
            return lat
        finally:
            server.shutdown()
            server.server_close()

    def dead_host_latency(self, offset, samples, objects=6, readers=4):
        """Stages `objects` entries of a host that accepts and never answers, parks
        `readers` O_DIRECT reads on each (far apart: a fetch each, more than the daemon's
        shared fetch slots in all), and times open + 4 KiB at `offset` of freshly staged
        copies of the healthy file meanwhile, as `open_mid4k` does without them."""
        size = 256 << 20
        server = start_dead_remote(size, answers_with_headers=False)
        names = [f"dead{i}.bin" for i in range(objects)]
        try:
            port = server.server_address[1]
            for name in names:
                self.ctl_cmd("stage", "--replace", "--name", name, f"http://127.0.0.1:{port}/{name}")
            procs = [subprocess.Popen(["dd", f"if={self.fs_mnt / name}", "of=/dev/null", "bs=4096",
                                       "count=1", f"skip={2000 + 4000 * r}", "iflag=direct"],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                     for name in names for r in range(readers)]
            try:
                def parked():
                    out = self.ctl_cmd("status").stdout
                    line = [l for l in out.splitlines() if "reads waiting:" in l]
                    return bool(line) and int(line[0].split(":")[1]) >= len(procs)
                wait_until(parked, 30, f"{len(procs)} reads parked on dead-host objects")
                return self.fs_first4k_samples(samples, offset)
            finally:
                for p in procs:
                    p.kill()
                for p in procs:
                    try:
                        p.wait(timeout=10)
                    except subprocess.TimeoutExpired:
                        self.problem("a reader killed while stuck on a dead host did not exit")
        finally:
            for name in names:
                self.ctl_cmd("unstage", name, check=False)
            server.shutdown()
            server.server_close()

    def shutdown_fusestream(self):
        """Orderly stop (also done by the clean-up stack): reports exit codes."""
        codes = {}
        for name, proc in (("fusestreamctl serve", self.ctl), ("fusestream-mountd", self.mountd)):
            if proc is not None:
                stop_process(proc, name)
                codes[name] = proc.returncode
                if proc.returncode not in (0, -signal.SIGTERM):
                    self.problem(f"{name} exited with {proc.returncode} on SIGTERM")
        if is_mounted(self.fs_mnt):
            self.problem("the FuseStream mount was still mounted after fusestream-mountd exited")
            unmount(self.fs_mnt)
        return codes


# ---------------------------------------------------------------- report


def summarize(R, have_rclone):
    def agg(sysname, key):
        d = R[sysname]
        if key in ("cold_seq", "warm_seq"):
            v = d.get(key) if sysname != "curl" else d.get("seq")
            return median(v) if v else None
        if key in ("open_first4k", "open_mid4k"):
            return median(d[key]) if d.get(key) else None
        if key in ("rand4k_p50", "rand4k_p99"):
            runs = d.get("rand4k_runs")
            if not runs:
                return None
            p = 50 if key.endswith("p50") else 99
            return median([percentile(r, p) for r in runs])
        if key == "open_first4k_p99":
            v = d.get("open_first4k")
            return percentile(v, 99) if v else None
        if key == "rss_peak":
            return d.get("rss_peak")
        if key == "stalled_meta_p99":
            v = d.get("stalled_meta")
            return percentile(v, 99) if v else None
        return None

    rows = [
        ("cold_seq", "cold sequential read, MB/s (higher better)"),
        ("warm_seq", "warm re-read, MB/s (higher better)"),
        ("open_first4k", "open+first 4 KiB p50, ms (lower better)"),
        ("open_first4k_p99", "open+first 4 KiB p99, ms (lower better)"),
        ("open_mid4k", "open+4 KiB mid-file p50, ms (lower better)"),
        ("rand4k_p50", "random 4 KiB pread p50, ms (lower better)"),
        ("rand4k_p99", "random 4 KiB pread p99, ms (lower better)"),
        ("rss_peak", "peak RSS (VmHWM), MiB (lower better)"),
        ("stalled_meta_p99", "ls+stat p99, 8 readers stalled, ms"),
    ]
    target_key = {"open_first4k_p99": None}
    out = []
    for key, label in rows:
        c = agg("curl", key)
        f = agg("fusestream", key)
        r = agg("rclone", key) if have_rclone else None
        fr = f / c if (f is not None and c) else None
        rr = r / c if (r is not None and c) else None
        t = TARGETS.get(target_key.get(key, key))
        target, ok = None, None
        if t:
            kind, op, lim = t
            x = fr if kind == "ratio" else f
            unit = {"rss_peak": " MiB"}.get(key, " ms")
            target = (f"FS/curl {op} {lim:.1f}" if kind == "ratio" else
                      f"FS {op} {lim:g}{unit}")
            if x is not None:
                ok = x >= lim if op == ">=" else x <= lim
        out.append(dict(key=key, metric=label, curl=c, fusestream=f, rclone=r,
                        fusestream_over_curl=fr, rclone_over_curl=rr, target=target, met=ok))
    return out


def fmt_num(x, key):
    if x is None:
        return "-"
    if key in ("cold_seq", "warm_seq"):
        return f"{x:.0f}"
    if key == "rss_peak":
        return f"{x:.1f}"
    return f"{x:.3f}"


def table(rows, have_rclone):
    head = ["metric", "curl", "FuseStream", "rclone", "FuseStream/curl", "rclone/curl", "target"]
    body = []
    for r in rows:
        tgt = r["target"] or "-"
        if r["met"] is not None:
            tgt += "  " + ("PASS" if r["met"] else "FAIL")
        body.append([
            r["metric"],
            fmt_num(r["curl"], r["key"]),
            fmt_num(r["fusestream"], r["key"]),
            fmt_num(r["rclone"], r["key"]) if have_rclone else "n/a",
            "-" if r["fusestream_over_curl"] is None else f"{r['fusestream_over_curl']:.2f}",
            ("-" if r["rclone_over_curl"] is None else f"{r['rclone_over_curl']:.2f}")
            if have_rclone else "n/a",
            tgt,
        ])
    widths = [max(len(x[i]) for x in [head] + body) for i in range(len(head))]
    lines = []
    for j, row in enumerate([head] + body):
        cells = [row[0].ljust(widths[0])] + [row[i].rjust(widths[i]) for i in range(1, 6)]
        cells.append(row[6].ljust(widths[6]))
        lines.append("  ".join(cells).rstrip())
        if j == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size-mib", type=int, default=1024, help="size of the test file (default 1024)")
    ap.add_argument("--runs", type=int, default=5, help="repetitions per measurement (default 5)")
    ap.add_argument("--no-rclone", action="store_true", help="skip the rclone mount")
    ap.add_argument("--no-otlp", action="store_true",
                    help="skip the cold reads with span export on")
    ap.add_argument("--json", metavar="PATH", help="also write the results as JSON to PATH")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (logs) for debugging")
    ap.add_argument("--latency-samples", type=int, default=50,
                    help="re-stagings for the open+first 4 KiB latency (default 50)")
    ap.add_argument("--rclone-latency-samples", type=int, default=20,
                    help="fresh rclone mounts for the open+first 4 KiB latency (default 20)")
    ap.add_argument("--random-reads", type=int, default=200,
                    help="random 4 KiB preads per cold file (default 200)")
    args = ap.parse_args()
    if args.size_mib < 1 or args.runs < 1 or args.latency_samples < 1 or args.random_reads < 1:
        ap.error("sizes and counts must be >= 1")
    if os.geteuid() != 0:
        print("bench/run.py: must run as root (the FuseStream mount daemon mounts directly; "
              "try: sudo bench/run.py)", file=sys.stderr)
        return 2
    for tool in ("curl", "dd"):
        if not shutil.which(tool):
            print(f"bench/run.py: {tool} not found on PATH", file=sys.stderr)
            return 2

    def on_signal(signum, _frame):
        raise Interrupted(signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)

    started = datetime.datetime.now(datetime.timezone.utc)
    status = 0
    results = None
    with ExitStack() as stack:
        try:
            bench = Bench(args, stack)
            stack.callback(bench.rclone_unmount)
            try:
                results = bench.run()
            finally:
                # Clean-up (including the ExitStack's) must not be cut short by Ctrl-C.
                signal.signal(signal.SIGINT, signal.SIG_IGN)
                signal.signal(signal.SIGTERM, signal.SIG_IGN)
                signal.signal(signal.SIGHUP, signal.SIG_IGN)
                bench.rclone_unmount()
                exit_codes = bench.shutdown_fusestream()
        except (KeyboardInterrupt, Interrupted) as e:
            log(f"interrupted ({str(e) or 'SIGINT'}); cleaning up")
            status = 130
        except (BenchError, subprocess.TimeoutExpired, OSError) as e:
            log(f"FAILED: {e}")
            if args.keep:
                log("logs are in the temp dir (--keep)")
            status = 1
    if results is None:
        return status or 1

    have_rclone = bench.rclone_bin is not None
    rows = summarize(results, have_rclone)
    cores = os.cpu_count()
    print(f"FuseStream benchmark  {started:%Y-%m-%d %H:%M} UTC  file {args.size_mib} MiB from nginx "
          f"on 127.0.0.1  runs {args.runs}  {cores} CPUs  {platform.release()}")
    print(table(rows, have_rclone))
    print("medians over runs; MB/s = 10^6 bytes/s; ratios are medians / curl's median; "
          "curl latency = curl's time_total of a 4 KiB Range GET (new connection for "
          "open+first 4 KiB, kept-alive for random).")
    x = results["fusestream"].get("open_first4k_after_full_replace")
    if x is not None:
        print(f"note: FuseStream open+first 4 KiB right after --replace of the fully read "
              f"{args.size_mib} MiB entry: {x:.3f} ms (one sample, not in the table)")
    pipe, seq = results["curl"].get("pipe_seq"), results["curl"].get("seq")
    if pipe and seq:
        print(f"reference: curl piped into dd bs=1M (no store, no FUSE: the bytes only handed "
              f"to a second process): {median(pipe):.0f} MB/s, {median(pipe) / median(seq):.2f} "
              f"of curl")
    on = results["fusestream"].get("cold_seq_otlp")
    off = results["fusestream"].get("cold_seq_otlp_off")
    if on and off:
        # Each "on" read against the "off" read just before it, then the median of those.
        ratio = median([x / y for x, y in zip(on, off)])
        verdict = "PASS" if ratio >= 1 - OTLP_MAX_OVERHEAD else "FAIL"
        print(f"span export: cold sequential, interleaved, with tracing + OTLP export on "
              f"{median(on):.0f} MB/s, off {median(off):.0f} MB/s: on/off {ratio:.2f} (median of "
              f"pairs; target >= "
              f"{1 - OTLP_MAX_OVERHEAD:.2f}: {verdict}); "
              f"{results['fusestream']['otlp_spans']} spans received")
    dead = results["fusestream"].get("open_mid4k_deadhosts")
    alone = results["fusestream"].get("open_mid4k")
    if dead and alone:
        ratio = median(dead) / median(alone)
        print(f"dead hosts: open+4 KiB mid-file of a healthy file with 24 reads stuck on 6 "
              f"objects of a host that never answers: p50 {median(dead):.3f} ms, "
              f"{median(alone):.3f} ms without them (with/without {ratio:.2f}; goal: equal within "
              f"noise); p99 {percentile(dead, 99):.3f} / {percentile(alone, 99):.3f} ms")
    if bench.rclone_note:
        print(f"note: {bench.rclone_note}")
    for p in bench.problems:
        print(f"PROBLEM: {p}")

    if args.json:
        doc = {
            "started_utc": started.isoformat(timespec="seconds"),
            "config": {
                "size_mib": args.size_mib, "runs": args.runs,
                "latency_samples": args.latency_samples,
                "rclone_latency_samples": min(args.latency_samples, args.rclone_latency_samples),
                "random_reads": args.random_reads,
                "rclone_cmd": [str(x) for x in getattr(bench, "rclone_cmd", [])] or None,
            },
            "machine": {"cpus": cores, "kernel": platform.release(), "machine": platform.machine()},
            "versions": {
                "nginx": tool_version(["/usr/sbin/nginx", "-v"]),
                "curl": tool_version(["curl", "--version"]),
                "rclone": tool_version([bench.rclone_bin, "version"]) if have_rclone else None,
                "fusestream": tool_version([str(BIN / "fusestream-mountd"), "--version"]),
                "repo_commit": tool_version(["git", "-C", str(REPO), "describe", "--always",
                                             "--dirty"]),
            },
            "summary": rows,
            "raw": results,
            "rclone_note": bench.rclone_note,
            "rclone_mounts": bench.rc_mounts,
            "fusestream_exit_codes": exit_codes,
            "problems": bench.problems,
        }
        with open(args.json, "w") as f:
            json.dump(doc, f, indent=1)
            f.write("\n")
    return 1 if bench.problems else 0


if __name__ == "__main__":
    sys.exit(main())

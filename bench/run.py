#!/usr/bin/env python3
"""FuseStream benchmark: profiles that read files through FuseStream next to curl (and
rclone mount, httpdirfs, aria2c), each from a server the benchmark starts on 127.0.0.1.

Run as root from anywhere (the repo is found from this file's location):

    sudo bench/run.py [--profile loopback|remote|sustained|scale] [--runs N] [--json PATH] [--keep]

- loopback (default): one file from a real nginx: cold and warm sequential reads, first-read
  and random-read latency, peak RSS, metadata with stalled readers, span export, dead hosts.
- remote: a paced server that caps every connection's rate and delays every response, like
  an object store: curl, aria2c -x16, rclone mount, httpdirfs and FuseStream side by side.
- sustained: several large objects from nginx read back to back through the mount: MB/s of
  each, the mount daemon's CPU-s and disk writes per GiB.
- scale: 100,000 small local files staged with `stage -r` (five folders into one directory):
  the time of a 20,000-file folder, the mount daemon's RSS and descriptors, `ls -f` and
  `stat` in the 100,000-entry directory, and a restart of either daemon until all is back.

One script, shared helpers (servers, mounts, timing); each profile is a `Bench.run_*`
method (or a `run_*` function) and a `report_*` function. Everything (sources, server configs, mount points,
caches, sockets, logs) lives in one temp dir that is removed at the end; servers and daemons
are stopped and waited for and every mount is unmounted, also on Ctrl-C, SIGTERM and errors.
See bench/README.md.
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
ARIA2_CONNECTIONS = 16  # aria2c -x/-s in the remote profile (16 is aria2c's maximum)

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
# Profile remote: cold read against curl's single stream; a random read's p50 at most
# this fraction above the added delay (one round trip).
REMOTE_COLD_RATIO = 8.0
REMOTE_RAND_SLACK = 0.10
# The paced server alone, 16 connections at once: each must get this fraction of its cap.
REMOTE_CHECK_MIN = 0.8
# Profile sustained: the slowest object against curl, and the mount daemon's CPU per GiB.
SUSTAINED_SLOWEST_RATIO = 0.5
SUSTAINED_CPU_PER_GIB = 1.0


def log(msg):
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)



def read_request(sock, buf=b""):
    """Reads one HTTP/1.1 request head from `sock` (`buf`: bytes already received).
    Returns (method, path, headers with lower-case names, the bytes after the head), or
    None when the peer closed the connection or sent more than 64 KiB of head."""
    while b"\r\n\r\n" not in buf:
        if len(buf) > 64 << 10:
            return None
        chunk = sock.recv(4096)
        if not chunk:
            return None
        buf += chunk
    head, _, rest = buf.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split()
    if len(parts) != 3:
        return None
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if parts[2] == "HTTP/1.0":
        headers.setdefault("connection", "close")
    return parts[0], parts[1], headers, rest


def parse_range(value, size):
    """(first, last) of a single `bytes=` range against an object of `size` bytes; the
    whole object when there is no Range header; None when it is not satisfiable."""
    if not value:
        return (0, size - 1) if size else None
    unit, _, spec = value.partition("=")
    a, _, b = spec.strip().partition("-")
    try:
        if unit.strip() != "bytes" or "," in spec:
            return None
        if not a:
            first, last = max(0, size - int(b)), size - 1
        else:
            first, last = int(a), min(int(b), size - 1) if b else size - 1
    except ValueError:
        return None
    return (first, last) if first <= last < size else None


def serve_on_loopback(handle):
    """A threaded TCP server on a free 127.0.0.1 port that calls `handle(sock)` for each
    connection, running until its `shutdown()`; the caller must also `server_close()`."""
    import socketserver
    import threading

    class Handler(socketserver.BaseRequestHandler):
        def handle(self):
            # Headers and a small body are separate sends: without this, Nagle's algorithm
            # holds the body until the client's delayed ACK (40 ms on Linux).
            self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            try:
                handle(self.request)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client went away mid-response (aria2c and rclone do that)

    class Server(socketserver.ThreadingTCPServer):
        daemon_threads = True
        allow_reuse_address = True
        request_queue_size = 128

    server = Server(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def start_dead_remote(size, answers_with_headers):
    """An HTTP server that answers the one-byte staging probe of a `size`-byte object, then
    never finishes another request: with `answers_with_headers`, it sends the headers and
    4 KiB of the range and hangs (a remote that stalls mid-body); without, it accepts the
    request and never answers at all (a dead host that still accepts connections)."""
    import threading

    def handle(sock):
        req = read_request(sock)
        if req is None:
            return
        first, last = parse_range(req[2].get("range"), size) or (0, size - 1)
        n = last - first + 1
        if n == 1 or answers_with_headers:
            sock.sendall(
                (f"HTTP/1.1 206 Partial Content\r\nContent-Range: bytes {first}-{last}/{size}\r\n"
                 f"Content-Length: {n}\r\nETag: \"dead\"\r\n\r\n").encode())
        if n == 1:
            sock.sendall(b"x")
            return
        if answers_with_headers:
            sock.sendall(b"x" * 4096)
        threading.Event().wait()  # never finish

    return serve_on_loopback(handle)


def start_paced_remote(files, rate, delay):
    """An HTTP/1.1 server for the files in `files` (name -> path) that, like an object
    store, caps every connection at `rate` bytes/s (0: no cap) and waits `delay` seconds
    before every response. Keep-alive, single Range requests, HEAD, ETag, Last-Modified,
    If-Match, and a listing at / (for rclone's http backend and httpdirfs). The body goes
    out with `sendfile` from the page cache in slices of 1/100 s worth, each slice sent when
    the bytes sent so far fall behind the rate, so the server costs little CPU even with
    many connections. Every response is recorded in the server's `log` (conn, method, first,
    length, sent, status, start, end; monotonic times): the fetches of a run, their sizes
    and how many ran at once."""
    import email.utils
    import itertools
    import threading

    meta = {}
    for name, path in files.items():
        st = os.stat(path)
        meta["/" + name] = (path, st.st_size, f'"{int(st.st_mtime):x}-{st.st_size:x}"',
                            email.utils.formatdate(st.st_mtime, usegmt=True))
    index = ("<html><body>\n" + "".join(f'<a href="{n}">{n}</a>\n' for n in files)
             + "</body></html>\n").encode()
    slice_size = max(16 << 10, min(1 << 20, int(rate / 100))) if rate else 1 << 20
    conn_ids = itertools.count()
    log = []
    log_lock = threading.Lock()

    def respond(sock, status, headers, body=b""):
        head = f"HTTP/1.1 {status}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        sock.sendall((head + "\r\n").encode() + body)

    def send_paced(sock, path, first, n, record):
        start = time.monotonic()
        with open(path, "rb") as f:
            while record["sent"] < n:
                if rate:
                    ahead = start + record["sent"] / rate - time.monotonic()
                    if ahead > 0:
                        time.sleep(ahead)
                k = os.sendfile(sock.fileno(), f.fileno(), first + record["sent"],
                                min(slice_size, n - record["sent"]))
                if k == 0:
                    break
                record["sent"] += k

    def answer(sock, method, target, headers, record):
        def status(line, fields, body=b""):
            record["status"] = int(line[:3])
            respond(sock, line, fields, body)

        if method not in ("GET", "HEAD"):
            return status("405 Method Not Allowed", {"Content-Length": 0})
        if target == "/":
            return status("200 OK", {"Content-Type": "text/html", "Content-Length": len(index)},
                          index if method == "GET" else b"")
        if target not in meta:
            return status("404 Not Found", {"Content-Length": 0})
        path, size, etag, modified = meta[target]
        common = {"Accept-Ranges": "bytes", "ETag": etag, "Last-Modified": modified,
                  "Content-Type": "application/octet-stream"}
        rng = parse_range(headers.get("range"), size)
        if headers.get("if-match", etag) not in (etag, "*"):
            return status("412 Precondition Failed", {"Content-Length": 0, **common})
        if rng is None:
            # With a short body, as nginx's and object stores' error replies have: httpdirfs
            # 1.2.5 asks for the range past the end of a file whose size is a multiple of its
            # segment size, and exits on a 416 without a body.
            body = b"<html><body>416 Requested Range Not Satisfiable</body></html>\n"
            return status("416 Range Not Satisfiable",
                          {"Content-Range": f"bytes */{size}", **common,
                           "Content-Type": "text/html", "Content-Length": len(body)},
                          body if method == "GET" else b"")
        first, last = rng
        n = last - first + 1
        if "range" in headers:
            common["Content-Range"] = f"bytes {first}-{last}/{size}"
        status("206 Partial Content" if "range" in headers else "200 OK",
               {"Content-Length": n, **common})
        if method == "GET":
            record.update(first=first, length=n)
            send_paced(sock, path, first, n, record)

    def handle(sock):
        conn = next(conn_ids)
        buf = b""
        while True:
            req = read_request(sock, buf)
            if req is None:
                return
            method, target, headers, buf = req
            target = target.split("?", 1)[0]
            record = dict(conn=conn, method=method, first=0, length=0, sent=0, status=0,
                          start=time.monotonic(), end=None)
            try:
                time.sleep(delay)
                answer(sock, method, target, headers, record)
            finally:
                record["end"] = time.monotonic()
                with log_lock:
                    log.append(record)
            if headers.get("connection", "").lower() == "close":
                return

    server = serve_on_loopback(handle)
    server.log = log
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


def proc_usage(pid):
    """What a process has used so far, all its threads together: CPU seconds (user +
    system, from /proc/PID/stat) and bytes it had written to storage (`write_bytes`: counted
    when a page is dirtied, whether or not it was written back yet) and of those, the ones
    dropped before writeback (`cancelled_write_bytes`: a deleted or truncated file's)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    io = {}
    with open(f"/proc/{pid}/io") as f:
        for line in f:
            k, _, v = line.partition(":")
            io[k.strip()] = int(v)
    return dict(cpu=(int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK"),
                write_bytes=io["write_bytes"], cancelled_write_bytes=io["cancelled_write_bytes"])


def usage_delta(before, after):
    return {k: after[k] - before[k] for k in before}


def fetch_metrics(port):
    """The mount daemon's fetch counters from its metrics endpoint: HTTP requests (all
    statuses) and bytes received."""
    import urllib.request
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    out = {"requests": 0, "bytes": 0}
    for line in text.splitlines():
        if line.startswith("fusestream_fetch_requests_total{"):
            out["requests"] += int(float(line.split()[-1]))
        elif line.startswith("fusestream_fetch_bytes_total "):
            out["bytes"] = int(float(line.split()[-1]))
    return out


def fetches_between(log, t0, t1):
    """What a paced remote's log (see `start_paced_remote`) says about the body-carrying
    GETs that started in [t0, t1]: how many, on how many connections, their sizes, how
    many ran at once (at most, and on average over the window), and each one (start and
    end in s from t0, connection, first byte, length) for the JSON."""
    gets = [r for r in log if r["method"] == "GET" and r["length"] > 1 and t0 <= r["start"] <= t1]
    if not gets:
        return {"requests": 0}
    events = sorted([(r["start"], 1) for r in gets] + [(r["end"], -1) for r in gets])
    now = peak = 0
    for _, step in events:
        now += step
        peak = max(peak, now)
    busy = sum(min(r["end"], t1) - r["start"] for r in gets)
    sizes = [r["length"] for r in gets]
    return {"requests": len(gets), "connections": len({r["conn"] for r in gets}),
            "bytes": sum(r["sent"] for r in gets), "size_min": min(sizes),
            "size_median": median(sizes), "size_max": max(sizes), "concurrent_max": peak,
            "concurrent_mean": busy / (t1 - t0) if t1 > t0 else None,
            "gets": [[round(r["start"] - t0, 4), round(r["end"] - t0, 4), r["conn"], r["first"],
                      r["length"]] for r in sorted(gets, key=lambda r: r["start"])]}


def describe_fetches(f):
    if not f.get("requests"):
        return "no GETs"
    mib = 1 << 20
    return (f"{f['requests']} GETs on {f['connections']} connections, size "
            f"{f['size_min'] / mib:.2f}/{f['size_median'] / mib:.2f}/{f['size_max'] / mib:.2f} MiB "
            f"(min/median/max), at once max {f['concurrent_max']} mean {f['concurrent_mean']:.1f}")


# What a mount daemon's CPU time is spent in, by kernel entry: the store's pwrite/pread,
# receiving (recvfrom; softirqs: the TCP stack), FUSE replies (writev on /dev/fuse) and
# requests (read on /dev/fuse), closing (freeing replaced stores), futex (thread hand-offs).
PERF_ENTRY_POINTS = ("[k] __x64_sys_", "[k] do_writev", "[k] ksys_read", "[k] ksys_write",
                     "[k] handle_softirqs", "[k] fuse_dev_write", "[k] fuse_dev_do_read")


def perf_record(pid, path, stack):
    """Starts `perf record -g` on process `pid`, writing `path`; returns a function that
    stops it (SIGINT, so it writes its file), waits for it and writes the top self-time
    symbols next to it (`path`.top.txt), returning those lines. Also stopped by `stack`."""
    err = open(f"{path}.stderr", "wb")
    proc = subprocess.Popen(["perf", "record", "-g", "-e", "cpu-clock", "-p", str(pid), "-o", path],
                            stdin=subprocess.DEVNULL, stdout=err, stderr=err, start_new_session=True)
    stack.callback(stop_process, proc, "perf record", 30, signal.SIGINT)
    stack.callback(err.close)
    time.sleep(0.5)  # perf attaches to every thread before the measured work starts

    def report(*how):
        p = subprocess.run(["perf", "report", "-i", path, "--stdio", "--sort", "dso,sym",
                            "-g", "none", *how], capture_output=True, text=True, timeout=600)
        return [l for l in p.stdout.splitlines() if l.strip() and not l.startswith("#")]

    def stop():
        stop_process(proc, "perf record", 30, signal.SIGINT)
        top = report("--no-children", "--percent-limit", "0.5")
        # Kernel entry points with everything below them (children): where the time goes
        # per kind of work (user-space stacks are not reliable: no frame pointers).
        entries = [l for l in report("--children", "--percent-limit", "0.2")
                   if any(e in l for e in PERF_ENTRY_POINTS)]
        lines = ["self time:"] + top + ["", "by kernel entry point (children):"] + entries
        Path(f"{path}.top.txt").write_text("\n".join(lines) + "\n")
        return lines

    return stop


def tool_version(cmd, name=None):
    """First line of what `cmd` prints (stdout, else stderr); with `name`, the first line of
    either that contains it (case-insensitive)."""
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
        out = (p.stdout or p.stderr).strip().splitlines()
        if name:
            out = [l for l in (p.stdout + "\n" + p.stderr).splitlines()
                   if name.lower() in l.lower()]
        return out[0] if out else None
    except (OSError, subprocess.TimeoutExpired):
        return None


# ---------------------------------------------------------------- peer mounts


class PeerMount:
    """A peer FUSE filesystem the benchmark compares with (rclone mount, httpdirfs): run in
    the foreground as our child (so its pid is known), mounted on TMP/KEY-mnt with its cache
    in TMP/KEY-cache. Every `mount()` is a fresh mount with an empty cache dir (new inodes, so
    no page cache either); `unmount()` reads the process's VmHWM, unmounts, and stops and
    waits for the process. `command(peer)` returns the command line; `version` are the
    arguments that make it print its version. Skipped (`bin` None, with a `note`) when
    `skip` (its --no-KEY option) or when it is not on PATH."""

    def __init__(self, bench, key, skip, command, version, package=None):
        self.bench = bench
        self.key = key  # also its column, its name in the JSON and its binary's name
        self.command = command
        self.bin = None if skip else shutil.which(key)
        self.version_cmd = [self.bin, *version]
        self.note = None
        if skip:
            self.note = f"{key} skipped (--no-{key})"
        elif not self.bin:
            self.note = f"{key} skipped: not found on PATH" + (
                f" (Debian package {package})" if package else "")
        self.mnt = bench.tmp / f"{key}-mnt"
        self.cache = bench.tmp / f"{key}-cache"
        self.log = bench.tmp / f"{key}.log"  # for a tool that writes its own log
        self.stderr = bench.tmp / f"{key}.stderr"
        self.path = self.mnt / FILE
        self.cmd = None
        self.proc = None
        self.hwm = []  # VmHWM of every process, read just before its unmount
        self.mounts = 0
        self.early_exits = []  # processes that had exited before their unmount

    def mount(self):
        """Fresh mount with an empty cache; the directory is listed and the file stat'ed
        (untimed) before returning."""
        self.unmount()
        shutil.rmtree(self.cache, ignore_errors=True)
        self.cache.mkdir()
        self.mnt.mkdir(exist_ok=True)
        self.cmd = self.command(self)
        self.proc = spawn(self.cmd, self.stderr, self.bench.env)
        self.mounts += 1

        def alive():
            if self.proc.poll() is not None:
                raise BenchError(f"{self.key} exited with {self.proc.returncode}:\n"
                                 + tail(self.log) + tail(self.stderr))

        wait_until(lambda: is_mounted(self.mnt), 30, f"the {self.key} mount", alive=alive)
        names = os.listdir(self.mnt)  # the listing (and HEAD) happen here, untimed
        if FILE not in names:
            raise BenchError(f"{self.key} mount does not list {FILE}: {names}")
        st = os.stat(self.path)
        if st.st_size != self.bench.size:
            raise BenchError(f"{self.key} reports size {st.st_size}, expected {self.bench.size}")

    def notes(self):
        """What the report says about this peer: skipped, or processes that died."""
        out = [self.note] if self.note else []
        if self.early_exits:
            whys = sorted({e["why"] or f"exit code {e['returncode']}" for e in self.early_exits})
            out.append(f"{self.key} exited by itself {len(self.early_exits)} of {self.mounts} "
                       f"times, after the last read through its mount, before the unmount: "
                       + "; ".join(whys))
        return out

    def unmount(self):
        if self.proc is None:
            unmount(self.mnt)
            return
        if self.proc.poll() is not None:
            # It died after the last read through this mount (one during a read fails that
            # read, and the benchmark); its dead mount is unmounted below all the same.
            said = (tail(self.log, 40) + tail(self.stderr, 40)).splitlines()
            why = [l for l in said if "fatal" in l.lower() or "panic" in l.lower()]
            self.early_exits.append(dict(pid=self.proc.pid, returncode=self.proc.returncode,
                                         why=why[-1] if why else None))
            log(f"{self.key} (pid {self.proc.pid}) exited with {self.proc.returncode} before its "
                f"unmount: {why[-1] if why else '(no reason in its output)'}")
        hwm = vm_hwm_mib(self.proc.pid)
        if hwm is not None:
            self.hwm.append(hwm)
        unmount(self.mnt)
        stop_process(self.proc, self.key, timeout=15)
        self.proc = None


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
        # Peer FUSE filesystems, each a column of the loopback and remote tables.
        self.peers = [PeerMount(self, "rclone", args.no_rclone, self.rclone_command, ["version"]),
                      PeerMount(self, "httpdirfs", args.no_httpdirfs, self.httpdirfs_command,
                                ["--version"], package="httpdirfs")]
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
    def make_source(self, name=FILE):
        """Writes `size` bytes of random data to www/`name` (fsync'ed: written back now,
        not during the measurements, which it would load). The first one is the source
        (`src`, `src_fd`, `sha256`) that reads are checked against."""
        self.www.mkdir(exist_ok=True)
        path = self.www / name
        log(f"writing {self.args.size_mib} MiB of random data to {name}")
        h = hashlib.sha256()
        chunk = 8 << 20
        with open(path, "wb") as f:
            left = self.size
            while left:
                b = os.urandom(min(chunk, left))
                h.update(b)
                f.write(b)
                left -= len(b)
            f.flush()
            os.fsync(f.fileno())
        if name == FILE:
            self.sha256 = h.hexdigest()
            self.src_fd = os.open(self.src, os.O_RDONLY)
            self.stack.callback(os.close, self.src_fd)
        return path

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
        autoindex on;  # rclone's http backend and httpdirfs list the directory
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
        self.start_mountd(env)
        self.start_control(env)
        log(f"FuseStream up: mountd pid {self.mountd.pid}, control pid {self.ctl.pid}")

    def start_mountd(self, env):
        """Starts the mount daemon and waits for its mount (also after a restart: the
        cache dir and log are reused)."""
        cache = self.tmp / "fs-cache"
        cache.mkdir(exist_ok=True)  # restarted daemons (the OTLP runs) reuse it
        self.metrics_port = free_port()
        self.mountd = spawn(
            [BIN / "fusestream-mountd", "--mountpoint", self.fs_mnt,
             "--socket", self.tmp / "mountd.sock", "--cache-dir", cache,
             "--log-file", self.tmp / "mountd.log",
             "--metrics-listen", f"127.0.0.1:{self.metrics_port}"],
            self.tmp / "mountd.stderr", env)
        # LIFO: the mount is checked/unmounted after the daemon has been stopped.
        self.stack.callback(unmount, self.fs_mnt)
        self.stack.callback(stop_process, self.mountd, "fusestream-mountd")
        wait_until(lambda: is_mounted(self.fs_mnt), 15, "the FuseStream mount",
                   alive=self.mountd_alive)

    def mountd_alive(self):
        if self.mountd.poll() is not None:
            raise BenchError(f"fusestream-mountd exited with {self.mountd.returncode}:\n"
                             + tail(self.tmp / "mountd.log") + tail(self.tmp / "mountd.stderr"))

    def start_control(self, env):
        """Starts the control plane, its state in the temp dir (never the user's), and
        waits until it answers (also after a restart: it takes up its saved entries)."""
        ctl_log = self.tmp / "control.log"
        self.ctl = spawn(
            [BIN / "fusestreamctl", "serve", "--socket", self.tmp / "control.sock",
             "--mountd-socket", self.tmp / "mountd.sock", "--state-dir", self.tmp / "state",
             "--log-file", ctl_log],
            self.tmp / "control.stderr", env)
        self.stack.callback(stop_process, self.ctl, "fusestreamctl serve")

        def ctl_alive():
            self.mountd_alive()
            if self.ctl.poll() is not None:
                raise BenchError(f"fusestreamctl serve exited with {self.ctl.returncode}:\n"
                                 + tail(ctl_log) + tail(self.tmp / "control.stderr"))

        wait_until(lambda: self.ctl_cmd("status", timeout=5, check=False).returncode == 0, 60,
                   "fusestreamctl status", interval=0.05, alive=ctl_alive)

    def fs_stage(self, name=FILE, url=None):
        """Stage (or re-stage: new inode, empty backing store) `url` (default: the
        benchmark's file) as `name`; returns the seconds it took."""
        t0 = time.perf_counter()
        p = self.ctl_cmd("stage", "--replace", "--name", name, url or self.url)
        dt = time.perf_counter() - t0
        if p.stdout.strip() != str(self.fs_mnt / name):
            self.problem(f"stage printed {p.stdout.strip()!r}, expected {self.fs_mnt / name}")
        return dt

    def fs_fetched(self):
        """FETCHED column of `fusestreamctl ls` for our entry."""
        for line in self.ctl_cmd("ls").stdout.splitlines()[1:]:
            cols = line.split()
            if cols and cols[0] == FILE:
                return int(cols[2])
        return None

    def make_cold(self):
        """Re-stage the entry (new inode, empty store) and let the replaced one go."""
        self.fs_stage()
        time.sleep(SETTLE)
        st = os.stat(self.fs_path)
        if st.st_ino == self.fs_ino:
            self.problem(f"{self.fs_path} is still the replaced inode {st.st_ino}: not cold")
        self.fs_ino = st.st_ino

    def cold_read(self):
        """Re-stage the entry and read it all once: MB/s."""
        self.make_cold()
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

    # ---- peer mounts (see PeerMount)
    def rclone_command(self, peer):
        conf = self.tmp / "rclone.conf"
        conf.touch()  # empty: nothing of the user's rclone setup is read
        return [peer.bin, "mount", ":http:", str(peer.mnt),
                "--http-url", f"http://127.0.0.1:{self.port}/",
                "--config", str(conf),
                "--read-only",
                "--vfs-cache-mode", "full",
                "--cache-dir", str(peer.cache),
                "--daemon-timeout", "10m",
                "--dir-cache-time", "1h",
                "--log-file", str(peer.log), "--log-level", "NOTICE"]

    def httpdirfs_command(self, peer):
        conf = self.tmp / "httpdirfs.conf"
        conf.touch()  # empty: the user's ~/.config/httpdirfs/config is not read
        # --cache: segments of the file (--dl-seg-size, 8 MB) are kept in the cache dir, read
        # from there again (the warm re-read), and the next segment is fetched in the
        # background; without it every FUSE read (128 KiB) is its own GET.
        # --no-range-check: 1.2.5 exits at the first read unless a 206 reply carries
        # "Accept-Ranges: bytes", which nginx sends only on 200 replies (1.2.8 also accepts
        # Content-Range); it only turns that check off, reads are ranges all the same.
        return [peer.bin, "-f",
                "--config", str(conf),
                "--cache", "--cache-location", str(peer.cache),
                "--no-range-check",
                f"http://127.0.0.1:{self.port}/", str(peer.mnt)]

    def active_peers(self):
        return [p for p in self.peers if p.bin]

    def unmount_peers(self):
        for peer in self.peers:
            peer.unmount()

    # ---- primitive measurements
    def dd(self, path):
        """Sequential read of `size` bytes with dd bs=1M; returns MB/s (10^6 B/s) from our
        own timing."""
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

    def curl_seq(self, url=None):
        """One curl of `url` (default: the benchmark's file) to /dev/null: MB/s."""
        t0 = time.perf_counter()
        p = subprocess.run(["curl", "-s", "-S", "-f", "-o", "/dev/null", "-w", "%{size_download}",
                            url or self.url], capture_output=True, text=True, timeout=self.timeout)
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

    def peers_open_latency(self, R, mid):
        """open + 4 KiB at 0 and at `mid` through each peer mount, each sample on a fresh
        mount with an empty cache (`--peer-latency-samples` mounts each), into R[peer]."""
        n = min(self.args.latency_samples, self.args.peer_latency_samples)
        for peer in self.active_peers():
            log(f"open+first 4 KiB (at 0 and at {mid}): {peer.key} x{n} fresh mounts each")
            for key, off in (("open_first4k", 0), ("open_mid4k", mid)):
                lat = []
                for _ in range(n):
                    peer.mount()
                    lat.append(self.open_first4k(peer.path, off)[0])
                R[peer.key][key] = lat
            peer.unmount()

    def random_read_runs(self, R):
        """`--random-reads` random 4 KiB reads per run, the same offsets for all: curl on
        one kept-alive connection, FuseStream on a freshly staged file, each peer on a
        fresh mount. Into R[system]["rand4k_runs"], one list of ms per run."""
        a = self.args
        log(f"random 4 KiB preads: {a.random_reads} per run x{a.runs}")
        for key in R:
            R[key]["rand4k_runs"] = []
        for i in range(a.runs):
            offs = self.offsets(i)
            R["curl"]["rand4k_runs"].append(self.curl_ranges(offs))
            fd = self.fs_open_fresh()
            R["fusestream"]["rand4k_runs"].append(self.random_preads(self.fs_path, offs, fd))
            for peer in self.active_peers():
                peer.mount()
                R[peer.key]["rand4k_runs"].append(self.random_preads(peer.path, offs))
        self.unmount_peers()

    def sha_of(self, path):
        h = hashlib.sha256()
        with open(path, "rb") as f:
            while True:
                b = f.read(8 << 20)
                if not b:
                    break
                h.update(b)
        return h.hexdigest()

    # ---- the benchmark proper: one method per profile, each returning its raw results
    def run_loopback(self):
        a = self.args
        R = {"curl": {}, "fusestream": {}, **{peer.key: {} for peer in self.peers}}
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
        # A sequential read is served from stream memory and let go once read (the kernel's
        # page cache serves the warm re-read), so FETCHED (bytes held) is at most the size.
        fetched = self.fs_fetched()
        if fetched is not None and fetched > self.size:
            self.problem(f"after full reads FETCHED={fetched}, more than the size {self.size}")
        if self.sha_of(self.fs_path) != self.sha256:
            self.problem("sha256 of the file read through the FuseStream mount differs from the source")
        R["fusestream"].update(cold_seq=cold, warm_seq=warm, stage_ms=stage_ms)
        if not a.no_otlp:
            off, on, spans = self.otlp_runs()
            R["fusestream"].update(cold_seq_otlp_off=off, cold_seq_otlp=on, otlp_spans=spans)

        for peer in self.active_peers():
            cold, warm = [], []
            for i in range(a.runs):
                peer.mount()
                time.sleep(SETTLE)
                cold.append(self.dd(peer.path))
                warm.append(self.dd(peer.path))
                log(f"{peer.key} run {i + 1}/{a.runs}: cold {cold[-1]:.0f} MB/s, "
                    f"warm {warm[-1]:.0f} MB/s")
            if self.sha_of(peer.path) != self.sha256:
                self.problem(f"sha256 of the file read through the {peer.key} mount differs "
                             f"from the source")
            peer.unmount()
            R[peer.key].update(cold_seq=cold, warm_seq=warm)

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
        self.peers_open_latency(R, mid)

        # 4 random 4 KiB preads on a cold file
        self.random_read_runs(R)

        # 6 metadata latency while readers are stuck on a stalled remote
        log("ls/stat with 8 readers stalled: FuseStream")
        R["fusestream"]["stalled_meta"] = self.stalled_metadata()

        # 7 a healthy file's first read while dead-host objects are being read
        log(f"open+4 KiB at {mid} with readers stuck on dead-host objects: FuseStream x{n}")
        R["fusestream"]["open_mid4k_deadhosts"] = self.dead_host_latency(mid, n)

        # 5 peak RSS
        R["fusestream"]["rss_peak"] = vm_hwm_mib(self.mountd.pid)
        R["fusestream"]["control_rss_peak"] = vm_hwm_mib(self.ctl.pid)
        for peer in self.active_peers():
            R[peer.key]["rss_peak"] = max(peer.hwm) if peer.hwm else None
            R[peer.key]["rss_peak_per_mount"] = peer.hwm
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

    def aria2c(self, out_dir):
        """One aria2c download of the benchmark's URL with ARIA2_CONNECTIONS connections,
        into `out_dir` (aria2c writes a file; it is checked for size and removed): MB/s."""
        out = out_dir / FILE
        t0 = time.perf_counter()
        p = subprocess.run(["aria2c", f"-x{ARIA2_CONNECTIONS}", f"-s{ARIA2_CONNECTIONS}", "-k1M",
                            "--file-allocation=none", "--allow-overwrite=true",
                            "--auto-file-renaming=false", "--console-log-level=warn",
                            "--summary-interval=0", "-q", "-d", str(out_dir), "-o", FILE, self.url],
                           capture_output=True, text=True, timeout=self.timeout)
        dt = time.perf_counter() - t0
        try:
            got = out.stat().st_size
        except OSError:
            got = None
        if p.returncode != 0 or got != self.size:
            raise BenchError(f"aria2c failed ({p.returncode}, {got} bytes): "
                             f"{(p.stderr or p.stdout).strip()}")
        if self.sha_of(out) != self.sha256:
            self.problem("sha256 of aria2c's download differs from the source")
        out.unlink()
        return self.size / dt / 1e6

    def run_remote(self):
        """Profile `remote`: the benchmark's file from a paced server (per-connection rate
        cap, delay before every response): curl, aria2c, the peer mounts (rclone,
        httpdirfs) and FuseStream side by side, plus which GETs each of them made."""
        a = self.args
        rate, delay = a.rate_mbs * 1e6, a.delay_ms / 1e3
        src = self.make_source()
        server = start_paced_remote({FILE: src}, rate, delay)
        self.stack.callback(server.server_close)
        self.stack.callback(server.shutdown)
        self.port = server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/{FILE}"
        self.timeout = 120 + 3 * self.size / (rate or 1e9)
        log(f"paced remote on 127.0.0.1:{self.port}: {a.rate_mbs:g} MB/s per connection, "
            f"{a.delay_ms:g} ms before each response")
        R = {"curl": {}, "aria2c": {}, **{peer.key: {} for peer in self.peers}, "fusestream": {}}
        R["server_check"] = self.remote_check(server, rate, delay)
        self.start_fusestream()
        aria2 = None if a.no_aria2 else shutil.which("aria2c")
        self.aria2_note = (None if aria2 else "aria2c skipped: " + (
            "--no-aria2" if a.no_aria2 else "not found on PATH (Debian package aria2)"))
        aria_dir = self.tmp / "aria2"
        aria_dir.mkdir()
        windows = {k: [] for k in R}  # (t0, t1) of each timed read, for the server's log

        def timed(system, fn, prepare=None):
            if prepare:
                prepare()
            t0 = time.monotonic()
            value = fn()
            windows[system].append((t0, time.monotonic()))
            R[system].setdefault("cold_seq", []).append(value)
            return value

        for i in range(a.runs):
            timed("curl", self.curl_seq)
            if aria2:
                timed("aria2c", lambda: self.aria2c(aria_dir))
            for peer in self.active_peers():
                timed(peer.key, lambda: self.dd(peer.path),
                      prepare=lambda: (peer.mount(), time.sleep(SETTLE)))
            timed("fusestream", lambda: self.dd(self.fs_path), prepare=self.make_cold)
            log(f"run {i + 1}/{a.runs}: cold MB/s " + ", ".join(
                f"{k} {R[k]['cold_seq'][-1]:.0f}" for k in R if R[k].get("cold_seq")))
        if self.sha_of(self.fs_path) != self.sha256:
            self.problem("sha256 of the file read through the FuseStream mount differs from the source")
        self.unmount_peers()

        n, mid = a.latency_samples, self.mid_offset()
        log(f"open+4 KiB at 0 and at {mid}: curl and FuseStream x{n}")
        for key, off in (("open_first4k", 0), ("open_mid4k", mid)):
            R["curl"][key] = [self.curl_ranges([off])[0] for _ in range(n)]
            R["fusestream"][key] = self.fs_first4k_samples(n, off)
        self.peers_open_latency(R, mid)
        self.random_read_runs(R)

        for system, spans in windows.items():
            R[system]["fetches"] = [fetches_between(server.log, t0, t1) for t0, t1 in spans]
        R["fusestream"]["rss_peak"] = vm_hwm_mib(self.mountd.pid)
        if self.mountd.poll() is not None or self.ctl.poll() is not None:
            self.problem("a FuseStream daemon exited during the benchmark")
        return R

    def remote_check(self, server, rate, delay, streams=16):
        """The paced remote alone: `streams` curls at once, each a range of one second at
        the cap (at most the file) at different offsets. Each connection must get its cap
        and all of them the sum (else the server, not the client, would limit the
        profile): returns what each and all got."""
        length = min(self.size, int(rate) if rate else self.size // streams)
        starts = [min(i * self.size // streams, self.size - length) for i in range(streams)]
        n0 = len(server.log)
        cpu0 = os.times()
        procs = [subprocess.Popen(["curl", "-s", "-S", "-f", "-o", "/dev/null", "-r",
                                   f"{start}-{start + length - 1}", self.url])
                 for start in starts]
        codes = [p.wait(timeout=self.timeout) for p in procs]
        cpu1 = os.times()
        gets = server.log[n0:]
        if any(codes) or len(gets) != streams:
            raise BenchError(f"server check: curl exit codes {codes}, {len(gets)} responses")
        per = [r["sent"] / max(1e-9, r["end"] - r["start"] - delay) / 1e6 for r in gets]
        span = max(r["end"] for r in gets) - min(r["start"] for r in gets)
        # All transfers overlap: the aggregate is the sum of the rates while all run.
        check = {"streams": streams, "per_stream_mbs": per,
                 "aggregate_mbs": sum(per),
                 "span_mbs": sum(r["sent"] for r in gets) / span / 1e6,
                 "server_cpu_s": (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)}
        log(f"paced remote alone: {streams} curls at once, each {min(per):.1f}-{max(per):.1f} MB/s, "
            f"together {check['aggregate_mbs']:.0f} MB/s, server CPU {check['server_cpu_s']:.2f} s")
        if rate and min(per) < REMOTE_CHECK_MIN * rate / 1e6:
            self.problem(f"the paced remote gave a connection only {min(per):.1f} MB/s of "
                         f"{rate / 1e6:g} with {streams} at once: the server limits the profile")
        return check

    def sustained_pass(self, names, perf=None):
        """Re-stages `names` (empty stores), syncs (every pass starts with nothing dirty;
        not with --no-sync), then reads them through the mount back to back with no pause
        (with `perf`, recorded into that path). Returns per object: MB/s, the mount
        daemon's CPU-s and bytes written, and the fetches it made."""
        for name in names:
            self.fs_stage(name, f"http://127.0.0.1:{self.port}/{name}")
        if not self.args.no_sync:
            os.sync()
        time.sleep(SETTLE)
        stop_perf = perf_record(self.mountd.pid, perf, self.stack) if perf else None
        out = []
        before, fetched = proc_usage(self.mountd.pid), fetch_metrics(self.metrics_port)
        for name in names:
            mbs = self.dd(self.fs_mnt / name)
            after, fetched_after = proc_usage(self.mountd.pid), fetch_metrics(self.metrics_port)
            out.append(dict(name=name, mbs=mbs, **usage_delta(before, after),
                            fetch_requests=fetched_after["requests"] - fetched["requests"],
                            fetch_bytes=fetched_after["bytes"] - fetched["bytes"]))
            before, fetched = after, fetched_after
        if stop_perf:
            self.perf_top = stop_perf()
        for name in names:
            with open(self.fs_mnt / name, "rb") as f:
                for off in random.Random(name).sample(range(self.size // PAGE), 16):
                    if os.pread(f.fileno(), PAGE, off * PAGE) != os.pread(
                            self.src_fds[name], PAGE, off * PAGE):
                        self.problem(f"{name}: wrong bytes through the mount at {off * PAGE}")
        return out

    def page_cache_write_cost(self):
        """CPU-s (user + system) that `dd` takes to write 1 GiB of zeros into a new file on
        the cache disk (deleted at once, never written back): what filling fresh page-cache
        pages costs on this machine right now. On a VM it varies severalfold with the host's
        memory state, and every byte the daemon stores or hands to a reader pays it."""
        import resource
        path = self.tmp / "fs-cache" / "page-cache-probe"
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        try:
            subprocess.run(["dd", "if=/dev/zero", f"of={path}", "bs=1M", "count=1024"],
                           check=True, capture_output=True, timeout=self.timeout)
        finally:
            path.unlink(missing_ok=True)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)

    def run_sustained(self):
        """Profile `sustained`: `--objects` files from nginx (no cap) read through the mount
        back to back, per run; curl reads each in the same run."""
        a = self.args
        names = [f"stream{i + 1}.bin" for i in range(a.objects)]
        self.src_fds = {}
        for name in names:
            fd = os.open(self.make_source(name), os.O_RDONLY)
            self.stack.callback(os.close, fd)
            self.src_fds[name] = fd
        self.start_nginx()
        self.start_fusestream()
        R = {"curl": [], "passes": [], "page_cache_write": []}
        for i in range(a.runs):
            R["curl"].append([self.curl_seq(f"http://127.0.0.1:{self.port}/{n}") for n in names])
            R["passes"].append(self.sustained_pass(names))
            # After the pass, not before: it would warm the very pages the pass then uses.
            R["page_cache_write"].append(self.page_cache_write_cost())
            gib = self.size / (1 << 30)
            log(f"run {i + 1}/{a.runs}: curl " + " ".join(f"{x:.0f}" for x in R["curl"][-1])
                + " MB/s; FuseStream " + "  ".join(
                    f"{o['mbs']:.0f} MB/s {o['cpu'] / gib:.2f} CPU-s/GiB "
                    f"{o['write_bytes'] / gib / (1 << 20):.0f} MiB written/GiB"
                    for o in R["passes"][-1])
                + f"; dd writing 1 GiB to the page cache: {R['page_cache_write'][-1]:.2f} CPU-s")
        if a.perf:
            log(f"one more pass recorded with perf (not in the medians): {a.perf}")
            R["perf_pass"] = self.sustained_pass(names, perf=a.perf)
            R["perf_top"] = self.perf_top
        R["rss_peak"] = vm_hwm_mib(self.mountd.pid)
        if self.mountd.poll() is not None or self.ctl.poll() is not None:
            self.problem("a FuseStream daemon exited during the benchmark")
        return R

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


# ---------------------------------------------------------------- profile scale
# Issue 13's scale goals: `stage -r` of a 20,000-file local folder, then 100,000 staged
# entries (several `stage -r` folders into one directory of the mount): the mount daemon's
# RSS and descriptors, `ls -f` of that directory, `stat` of one entry, and a restart of
# either daemon until everything is back. Separate functions (run_scale, report_scale)
# over the Bench's helpers, so the profile stands beside the others.

SCALE_GOALS = {
    "stage_r_first_s": 10.0,  # stage -r of the first folder, end to end
    "mountd_rss_mib": 200.0,
    "mountd_fds": 100,  # plus open files (none are open when counted)
    "ls_f_s": 1.0,
    "stat_p99_ms": 1.0,
    "restart_mountd_s": 10.0,
    "restart_control_s": 10.0,
}
SCALE_DIR = "big"  # the mount's directory every folder is staged into


def scale_make_folders(root, folders, files):
    """`folders` local folders of `files` small files each, named apart (folder i holds
    `i-NNNNNN.bin`) so that all can be staged into one directory of the mount; a 64-byte
    body each, different per file. Returns the folders."""
    made = []
    for i in range(folders):
        d = root / f"folder{i}"
        d.mkdir(parents=True)
        for j in range(files):
            (d / f"{i}-{j:06d}.bin").write_bytes(f"{i}-{j:06d}".encode().ljust(64, b"."))
        made.append(d)
    return made


def scale_reconciled(bench, after):
    """The control plane's next "reconciled with the mount daemon" log line after byte
    `after` of its log, as a dict of its counts; None if not there yet."""
    try:
        with open(bench.tmp / "control.log", "rb") as f:
            f.seek(after)
            text = f.read().decode(errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        if "reconciled with the mount daemon" in line:
            return {k: int(v) for k, v in
                    (w.split("=", 1) for w in line.split() if "=" in w) if v.isdigit()}
    return None


def scale_log_size(bench):
    try:
        return os.path.getsize(bench.tmp / "control.log")
    except OSError:
        return 0


def scale_check_bytes(bench, names, count=20):
    """Reads `count` random entries of SCALE_DIR through the mount and checks their bytes."""
    for name in random.sample(names, min(count, len(names))):
        want = name.removesuffix(".bin").encode().ljust(64, b".")
        got = (bench.fs_mnt / SCALE_DIR / name).read_bytes()
        if got != want:
            bench.problem(f"{SCALE_DIR}/{name} read {got[:80]!r}, expected {want!r}")


def scale_mountd_usage(bench):
    """The mount daemon's resident memory (MiB) and open descriptors, now."""
    pid = bench.mountd.pid
    rss = None
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) / 1024.0
    return rss, len(os.listdir(f"/proc/{pid}/fd"))


def scale_stat_ms(paths):
    lat = []
    for p in paths:
        t = time.perf_counter()
        os.stat(p)
        lat.append((time.perf_counter() - t) * 1e3)
    return lat


def scale_wait_reconciled(bench, after, what):
    """Waits for the control plane to report a reconcile after byte `after` of its log;
    returns the reconcile's counts."""
    found = {}

    def back():
        line = scale_reconciled(bench, after)
        if line is None:
            return False
        found.update(line)
        return True

    wait_until(back, 600, what, interval=0.05)
    return found


def scale_restart(bench, daemon, count, total):
    """Stops `daemon` ("mountd" or "control") and starts it again; everything is back at
    the control plane's next reconcile line, which must say `count`=`total`. Returns the
    seconds from the start to that line, and the line's counts."""
    proc, name = ((bench.mountd, "fusestream-mountd") if daemon == "mountd"
                  else (bench.ctl, "fusestreamctl serve"))
    stop_process(proc, name)
    if daemon == "mountd":
        unmount(bench.fs_mnt)
    after = scale_log_size(bench)
    t = time.perf_counter()
    (bench.start_mountd if daemon == "mountd" else bench.start_control)(bench.env)
    counts = scale_wait_reconciled(bench, after, f"everything back after restarting {name}")
    elapsed = time.perf_counter() - t
    log(f"{name} restart: everything back in {elapsed:.2f} s ({counts})")
    if counts.get(count) != total:
        bench.problem(f"after restarting {name}: {counts}, expected {count}={total}")
    return elapsed, counts


def run_scale(bench):
    """Profile `scale`: the figures of SCALE_GOALS, with release binaries."""
    a = bench.args
    folders = scale_make_folders(bench.tmp / "local", a.scale_folders, a.scale_files)
    total = a.scale_folders * a.scale_files
    names = sorted(p.name for d in folders for p in d.iterdir())
    log(f"{a.scale_folders} folders of {a.scale_files} files made")
    bench.start_fusestream()
    R = {"entries": total, "stage_r_s": []}
    for d in folders:
        t = time.perf_counter()
        p = bench.ctl_cmd("stage", "-r", "--name", SCALE_DIR, str(d), timeout=600, check=False)
        R["stage_r_s"].append(time.perf_counter() - t)
        summary = p.stderr.strip().splitlines()[-1] if p.stderr.strip() else ""
        if p.returncode != 0 or not summary.startswith(f"{a.scale_files} staged"):
            raise BenchError(f"stage -r {d}: exit {p.returncode}, {summary!r}")
        log(f"stage -r {d.name}: {R['stage_r_s'][-1]:.2f} s ({summary})")
    scale_check_bytes(bench, names)
    R["mountd_rss_mib"], R["mountd_fds"] = scale_mountd_usage(bench)
    log(f"mount daemon: {R['mountd_rss_mib']:.0f} MiB resident, {R['mountd_fds']} descriptors")

    big = bench.fs_mnt / SCALE_DIR
    R["ls_f_s"] = []
    for _ in range(a.runs):
        t = time.perf_counter()
        out = subprocess.run(["ls", "-f", str(big)], capture_output=True, text=True, check=True)
        R["ls_f_s"].append(time.perf_counter() - t)
        listed = len(out.stdout.splitlines()) - 2  # . and ..
        if listed != total:
            bench.problem(f"ls -f {big} listed {listed} entries, expected {total}")
    log("ls -f: " + " ".join(f"{x:.3f}" for x in R["ls_f_s"]) + " s")

    sample = [big / n for n in random.sample(names, min(a.scale_stats, total))]
    R["stat_listed_ms"] = scale_stat_ms(sample)  # each name's first stat since ls -f
    R["stat_again_ms"] = scale_stat_ms(sample)  # the same names again (dentries cached)
    log(f"stat p99: after ls -f {percentile(R['stat_listed_ms'], 99):.3f} ms, again "
        f"{percentile(R['stat_again_ms'], 99):.3f} ms")

    # The mount daemon restarts: the control plane sees a new daemon and stages everything
    # again (it lost its entries).
    R["restart_mountd_s"], R["restart_mountd_counts"] = scale_restart(
        bench, "mountd", "staged_again", total)
    # A fresh mount: the kernel knows none of the names yet (cold dentry cache).
    R["stat_cold_ms"] = scale_stat_ms(sample)
    log(f"stat p99 on the fresh mount: {percentile(R['stat_cold_ms'], 99):.3f} ms")
    scale_check_bytes(bench, names)
    # The control plane restarts: it takes up its saved entries and gives each a new URL
    # (its signed-URL server's key and port are new).
    R["restart_control_s"], R["restart_control_counts"] = scale_restart(
        bench, "control", "renewed", total)
    scale_check_bytes(bench, names)
    R["mountd_rss_after_mib"], R["mountd_fds_after"] = scale_mountd_usage(bench)
    return R


def report_scale(args, bench, R, started):
    """Prints the scale profile's figures against SCALE_GOALS; returns the summary rows."""
    rows = [
        ("stage_r_first_s", f"stage -r of a {args.scale_files}-file folder, s",
         R["stage_r_s"][0]),
        ("mountd_rss_mib", f"mount daemon RSS at {R['entries']} entries, MiB",
         R["mountd_rss_mib"]),
        ("mountd_fds", f"mount daemon descriptors at {R['entries']} entries (no file open)",
         R["mountd_fds"]),
        ("ls_f_s", f"ls -f of the {R['entries']}-entry directory, s (median)",
         median(R["ls_f_s"])),
        ("stat_p99_ms", "stat of one entry p99, ms (fresh mount: cold dentry cache)",
         percentile(R["stat_cold_ms"], 99)),
        ("restart_mountd_s", "mount daemon restart, everything staged again, s",
         R["restart_mountd_s"]),
        ("restart_control_s", "control plane restart, every URL renewed, s",
         R["restart_control_s"]),
    ]
    print(f"FuseStream benchmark, profile scale  {started:%Y-%m-%d %H:%M} UTC  "
          f"{args.scale_folders} folders x {args.scale_files} local files  "
          f"{os.cpu_count()} CPUs  {platform.release()}")
    body, summary = [], []
    for key, label, value in rows:
        goal = SCALE_GOALS[key]
        ok = value <= goal
        body.append([label, f"{value:.3f}" if isinstance(value, float) else str(value),
                     verdict(f"<= {goal:g}", ok)])
        summary.append(dict(key=key, metric=label, value=value, goal=goal, met=ok))
    print(format_table(["metric", "value", "goal"], body))
    print("stage -r, each folder in turn: " + ", ".join(f"{x:.2f}" for x in R["stage_r_s"])
          + " s; ls -f runs: " + ", ".join(f"{x:.3f}" for x in R["ls_f_s"]) + " s")
    print("stat p50/p99, ms (" + str(len(R["stat_cold_ms"])) + " names): " + ", ".join(
        f"{what} {percentile(R[key], 50):.3f}/{percentile(R[key], 99):.3f}"
        for what, key in (("fresh mount", "stat_cold_ms"), ("first after ls -f", "stat_listed_ms"),
                          ("again", "stat_again_ms"))))
    print(f"after both restarts: mount daemon {R['mountd_rss_after_mib']:.0f} MiB resident, "
          f"{R['mountd_fds_after']} descriptors")
    print("restart times run from starting the daemon to the control plane's log line "
          "\"reconciled with the mount daemon\" (after a mount daemon restart it finds the new "
          "daemon by retrying every 250 ms)")
    return summary


# ---------------------------------------------------------------- report


def summarize(R, peers):
    """Rows of the loopback table: curl, FuseStream and each of `peers` (PeerMount; a
    skipped one's values are None) with its ratio to curl, and FuseStream's target."""
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
        fr = f / c if (f is not None and c) else None
        peer_cols = {}
        for peer in peers:
            r = agg(peer.key, key) if peer.bin else None
            peer_cols[peer.key] = r
            peer_cols[f"{peer.key}_over_curl"] = r / c if (r is not None and c) else None
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
        out.append(dict(key=key, metric=label, curl=c, fusestream=f, fusestream_over_curl=fr,
                        **peer_cols, target=target, met=ok))
    return out


def fmt_num(x, key):
    if x is None:
        return "-"
    if key in ("cold_seq", "warm_seq"):
        return f"{x:.0f}"
    if key == "rss_peak":
        return f"{x:.1f}"
    return f"{x:.3f}"


def format_table(head, body, text_last=True):
    """Plain-text table: the first column (and the last, a target's text, if `text_last`)
    left-aligned, the numbers right-aligned."""
    widths = [max(len(x[i]) for x in [head] + body) for i in range(len(head))]
    lines = []
    for j, row in enumerate([head] + body):
        last = len(head) - 1 if text_last else len(head)
        cells = [row[0].ljust(widths[0])]
        cells += [row[i].rjust(widths[i]) for i in range(1, last)]
        cells += [row[i].ljust(widths[i]) for i in range(last, len(head))]
        lines.append("  ".join(cells).rstrip())
        if j == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def verdict(target, ok):
    return (target or "-") + ("" if ok is None else "  " + ("PASS" if ok else "FAIL"))


def table(rows, peers):
    def ratio(x):
        return "-" if x is None else f"{x:.2f}"

    head = (["metric", "curl", "FuseStream"] + [p.key for p in peers] + ["FuseStream/curl"]
            + [f"{p.key}/curl" for p in peers] + ["target"])
    body = []
    for r in rows:
        body.append(
            [r["metric"], fmt_num(r["curl"], r["key"]), fmt_num(r["fusestream"], r["key"])]
            + [fmt_num(r[p.key], r["key"]) if p.bin else "n/a" for p in peers]
            + [ratio(r["fusestream_over_curl"])]
            + [ratio(r[f"{p.key}_over_curl"]) if p.bin else "n/a" for p in peers]
            + [verdict(r["target"], r["met"])])
    return format_table(head, body)


def report_loopback(args, bench, results, started):
    """Prints the loopback profile's table and notes; returns the summary rows."""
    rows = summarize(results, bench.peers)
    print(f"FuseStream benchmark  {started:%Y-%m-%d %H:%M} UTC  file {args.size_mib} MiB from nginx "
          f"on 127.0.0.1  runs {args.runs}  {os.cpu_count()} CPUs  {platform.release()}")
    print(table(rows, bench.peers))
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
        print(f"span export: cold sequential, interleaved, with tracing + OTLP export on "
              f"{median(on):.0f} MB/s, off {median(off):.0f} MB/s: on/off {ratio:.2f} (median of "
              f"pairs; {verdict(f'target >= {1 - OTLP_MAX_OVERHEAD:.2f}', ratio >= 1 - OTLP_MAX_OVERHEAD)}); "
              f"{results['fusestream']['otlp_spans']} spans received")
    dead = results["fusestream"].get("open_mid4k_deadhosts")
    alone = results["fusestream"].get("open_mid4k")
    if dead and alone:
        ratio = median(dead) / median(alone)
        print(f"dead hosts: open+4 KiB mid-file of a healthy file with 24 reads stuck on 6 "
              f"objects of a host that never answers: p50 {median(dead):.3f} ms, "
              f"{median(alone):.3f} ms without them (with/without {ratio:.2f}; goal: equal within "
              f"noise); p99 {percentile(dead, 99):.3f} / {percentile(alone, 99):.3f} ms")
    return rows


def report_remote(args, bench, R, started):
    """Prints the remote profile's table (one column per system) and what GETs each made;
    returns the summary rows."""
    systems = ([("curl", "curl"), ("aria2c", f"aria2c -x{ARIA2_CONNECTIONS}")]
               + [(p.key, p.key) for p in bench.peers] + [("fusestream", "FuseStream")])
    systems = [(k, label) for k, label in systems if R[k].get("cold_seq")]
    delay = args.delay_ms

    def stat(system, key):
        d = R[system]
        if key == "cold_seq":
            return median(d["cold_seq"]) if d.get("cold_seq") else None
        if key in ("open_first4k", "open_mid4k"):
            return median(d[key]) if d.get(key) else None
        if key in ("open_first4k_p99", "open_mid4k_p99"):
            v = d.get(key[:-4])
            return percentile(v, 99) if v else None
        runs = d.get("rand4k_runs")
        return median([percentile(r, int(key[-2:])) for r in runs]) if runs else None

    rows = []
    curl_cold = stat("curl", "cold_seq")
    for key, label, target in [
            ("cold_seq", "cold sequential read, MB/s", ("ratio", REMOTE_COLD_RATIO)),
            ("open_first4k", "open+first 4 KiB p50, ms", None),
            ("open_first4k_p99", "open+first 4 KiB p99, ms", None),
            ("open_mid4k", "open+4 KiB mid-file p50, ms", None),
            ("rand4k_p50", "random 4 KiB pread p50, ms", ("delay", REMOTE_RAND_SLACK)),
            ("rand4k_p99", "random 4 KiB pread p99, ms", None)]:
        values = {k: stat(k, key) for k, _ in systems}
        fs = values.get("fusestream")
        text, ok = None, None
        if target and target[0] == "ratio":
            text = f"FS/curl >= {target[1]:g}"
            ok = fs / curl_cold >= target[1] if fs and curl_cold else None
        elif target and delay:
            text = f"FS <= {1 + target[1]:g} x {delay:g} ms"
            ok = fs <= (1 + target[1]) * delay if fs is not None else None
        rows.append(dict(key=key, metric=label, values=values, target=text, met=ok))

    print(f"FuseStream benchmark, profile remote  {started:%Y-%m-%d %H:%M} UTC  file "
          f"{args.size_mib} MiB from a paced server on 127.0.0.1 ({args.rate_mbs:g} MB/s per "
          f"connection, {args.delay_ms:g} ms before each response)  runs {args.runs}  "
          f"{os.cpu_count()} CPUs  {platform.release()}")
    head = ["metric"] + [label for _, label in systems] + [
        f"{label}/curl" for k, label in systems if k != "curl"] + ["target"]
    body = []
    for r in rows:
        fmt = (lambda x: f"{x:.0f}") if r["key"] == "cold_seq" else (lambda x: f"{x:.2f}")
        cells = [r["metric"]] + ["-" if r["values"][k] is None else fmt(r["values"][k])
                                 for k, _ in systems]
        c = r["values"].get("curl")
        cells += ["-" if (r["values"][k] is None or not c) else f"{r['values'][k] / c:.2f}"
                  for k, _ in systems if k != "curl"]
        body.append(cells + [verdict(r["target"], r["met"])])
    print(format_table(head, body))
    peers = ", ".join(p.key for p in bench.active_peers())
    print("medians over runs; MB/s = 10^6 bytes/s; curl latency = curl's time_total of a 4 KiB "
          "Range GET (new connection for open, kept-alive for random)"
          + (f"; {peers}: open latency on fresh mounts." if peers else "."))
    chk = R["server_check"]
    print(f"paced remote alone: {chk['streams']} curls at once got "
          f"{min(chk['per_stream_mbs']):.1f}-{max(chk['per_stream_mbs']):.1f} MB/s each, "
          f"{chk['aggregate_mbs']:.0f} MB/s together ({chk['span_mbs']:.0f} MB/s over the whole "
          f"span, process starts included), the server using {chk['server_cpu_s']:.2f} CPU-s")
    for k, label in systems:
        for i, f in enumerate(R[k].get("fetches", [])):
            print(f"GETs of {label}'s cold read {i + 1}: {describe_fetches(f)}")
    for note in [bench.aria2_note] + [n for p in bench.peers for n in p.notes()]:
        if note:
            print(f"note: {note}")
    return rows


def report_sustained(args, bench, R, started):
    """Prints the sustained profile's table (one row per object position); returns the
    summary rows."""
    gib = args.size_mib / 1024
    curl = median([x for run in R["curl"] for x in run])
    rows = []
    for i in range(args.objects):
        col = [p[i] for p in R["passes"]]
        mbs = median([o["mbs"] for o in col])
        rows.append(dict(object=i + 1, mbs=mbs, over_curl=mbs / curl,
                         cpu_s_per_gib=median([o["cpu"] / gib for o in col]),
                         written_mib_per_gib=median([o["write_bytes"] / gib / (1 << 20) for o in col]),
                         cancelled_mib_per_gib=median(
                             [o["cancelled_write_bytes"] / gib / (1 << 20) for o in col]),
                         fetch_requests=median([o["fetch_requests"] for o in col]),
                         fetch_mib=median([o["fetch_bytes"] / (1 << 20) for o in col])))
    # The goals, per run: its slowest object against its own curl, and the daemon's CPU
    # over all its objects; then the median over runs.
    slowest = [min(o["mbs"] for o in p) / median(c) for p, c in zip(R["passes"], R["curl"])]
    cpu_runs = [sum(o["cpu"] for o in p) / (gib * len(p)) for p in R["passes"]]
    slow, cpu = median(slowest), median(cpu_runs)
    print(f"FuseStream benchmark, profile sustained  {started:%Y-%m-%d %H:%M} UTC  "
          f"{args.objects} x {args.size_mib} MiB from nginx on 127.0.0.1, read back to back  "
          f"runs {args.runs}  {os.cpu_count()} CPUs  {platform.release()}")
    head = ["object", "MB/s", "/curl", "mountd CPU-s/GiB", "written MiB/GiB",
            "of which cancelled", "GETs", "fetched MiB"]
    body = [[f"{r['object']} of {args.objects}", f"{r['mbs']:.0f}", f"{r['over_curl']:.2f}",
             f"{r['cpu_s_per_gib']:.2f}", f"{r['written_mib_per_gib']:.0f}",
             f"{r['cancelled_mib_per_gib']:.0f}", f"{r['fetch_requests']:.0f}",
             f"{r['fetch_mib']:.0f}"] for r in rows]
    print(format_table(head, body, text_last=False))
    print(f"curl, same runs: {curl:.0f} MB/s (median of {len(R['curl']) * args.objects} reads)")
    print(f"slowest object of each run / that run's curl: {min(slowest):.2f}-{max(slowest):.2f}, "
          f"median {slow:.2f}: "
          + verdict(f"target >= {SUSTAINED_SLOWEST_RATIO:g}", slow >= SUSTAINED_SLOWEST_RATIO))
    print(f"mount daemon per run: {min(cpu_runs):.2f}-{max(cpu_runs):.2f} CPU-s/GiB, median "
          f"{cpu:.2f}: " + verdict(f"target <= {SUSTAINED_CPU_PER_GIB:g}", cpu <= SUSTAINED_CPU_PER_GIB))
    print("medians over runs; MB/s = 10^6 bytes/s; each run re-stages the objects"
          + (" (no sync: --no-sync)" if args.no_sync else " and syncs") + ", then reads them with dd bs=1M with no pause; CPU = utime+stime of fusestream-mountd "
          "(/proc/PID/stat), written = its write_bytes (/proc/PID/io: pages it dirtied, "
          "cancelled = dropped before writeback), GETs and fetched bytes from its metrics.")
    pcw = R["page_cache_write"]
    print(f"reference, right after each run: dd writing 1 GiB of zeros into the page cache (the "
          f"cache disk) took {min(pcw):.2f}-{max(pcw):.2f} CPU-s, median {median(pcw):.2f}: the "
          f"machine's cost of filling fresh pages, paid by every byte stored or replied")
    if R.get("perf_top"):
        print(f"perf (one more pass, not in the medians), top self time of the mount daemon "
              f"(all: {args.perf}.top.txt; perf report -i {args.perf}):")
        top = R["perf_top"]
        split = top.index("")
        for line in top[:min(split, 21)] + top[split:]:
            print("  " + line.rstrip())
    return {"objects": rows, "slowest_over_curl": slowest, "cpu_s_per_gib": cpu_runs}


PROFILES = {
    # name: (runner, reporter, default --size-mib, --runs, --random-reads)
    "loopback": (Bench.run_loopback, report_loopback, 1024, 5, 200),
    "remote": (Bench.run_remote, report_remote, 512, 3, 100),
    "sustained": (Bench.run_sustained, report_sustained, 1024, 3, 0),
    "scale": (run_scale, report_scale, 1, 3, 0),
}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--profile", choices=sorted(PROFILES), default="loopback",
                    help="what to measure (default loopback; see bench/README.md)")
    ap.add_argument("--size-mib", type=int,
                    help="size of the test file, of each object for sustained (default: loopback "
                         "1024, remote 512, sustained 1024)")
    ap.add_argument("--runs", type=int,
                    help="repetitions per measurement (default: loopback 5, remote and sustained 3)")
    ap.add_argument("--no-rclone", action="store_true", help="skip the rclone mount")
    ap.add_argument("--no-httpdirfs", action="store_true", help="skip the httpdirfs mount")
    ap.add_argument("--no-otlp", action="store_true",
                    help="loopback: skip the cold reads with span export on")
    ap.add_argument("--json", metavar="PATH", help="also write the results as JSON to PATH")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (logs) for debugging")
    ap.add_argument("--latency-samples", type=int, default=50,
                    help="re-stagings for the open+first 4 KiB latency (default 50)")
    ap.add_argument("--peer-latency-samples", "--rclone-latency-samples", type=int, default=20,
                    help="fresh mounts of each peer FUSE filesystem (rclone, httpdirfs) for the "
                         "open+first 4 KiB latency (default 20)")
    ap.add_argument("--random-reads", type=int,
                    help="random 4 KiB preads per cold file (default: loopback 200, remote 100)")
    ap.add_argument("--rate-mbs", type=float, default=40.0,
                    help="remote: each connection's cap, MB/s (default 40; 0: no cap)")
    ap.add_argument("--delay-ms", type=float, default=30.0,
                    help="remote: delay before each response, ms (default 30)")
    ap.add_argument("--no-aria2", action="store_true", help="remote: skip aria2c")
    ap.add_argument("--objects", type=int, default=3,
                    help="sustained: objects read back to back (default 3)")
    ap.add_argument("--no-sync", action="store_true",
                    help="sustained: no sync before each pass (starts with earlier passes' "
                         "writeback still going)")
    ap.add_argument("--perf", metavar="PATH",
                    help="sustained: one more pass with `perf record -g` on the mount daemon, "
                         "written to PATH (its top costs to PATH.top.txt)")
    ap.add_argument("--scale-folders", type=int, default=5,
                    help="scale: local folders staged with stage -r into one directory "
                         "(default 5)")
    ap.add_argument("--scale-files", type=int, default=20000,
                    help="scale: files in each folder (default 20000)")
    ap.add_argument("--scale-stats", type=int, default=2000,
                    help="scale: entries stat'ed for the stat latency (default 2000)")
    args = ap.parse_args()
    run, report, size_mib, runs, random_reads = PROFILES[args.profile]
    args.size_mib = size_mib if args.size_mib is None else args.size_mib
    args.runs = runs if args.runs is None else args.runs
    args.random_reads = random_reads if args.random_reads is None else args.random_reads
    if (args.size_mib < 1 or args.runs < 1 or args.latency_samples < 1 or args.objects < 1
            or (args.random_reads < 1 and args.profile not in ("sustained", "scale"))
            or min(args.scale_folders, args.scale_files, args.scale_stats) < 1
            or args.rate_mbs < 0 or args.delay_ms < 0):
        ap.error("sizes and counts must be >= 1, rate and delay >= 0")
    if os.geteuid() != 0:
        print("bench/run.py: must run as root (the FuseStream mount daemon mounts directly; "
              "try: sudo bench/run.py)", file=sys.stderr)
        return 2
    for tool in ("curl", "dd") + (("perf",) if args.perf else ()):
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
            stack.callback(bench.unmount_peers)
            try:
                results = run(bench)
            finally:
                # Clean-up (including the ExitStack's) must not be cut short by Ctrl-C.
                signal.signal(signal.SIGINT, signal.SIG_IGN)
                signal.signal(signal.SIGTERM, signal.SIG_IGN)
                signal.signal(signal.SIGHUP, signal.SIG_IGN)
                bench.unmount_peers()
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

    rows = report(args, bench, results, started)
    if args.profile == "loopback":
        for note in [n for p in bench.peers for n in p.notes()]:
            print(f"note: {note}")
    for p in bench.problems:
        print(f"PROBLEM: {p}")

    if args.json:
        doc = {
            "profile": args.profile,
            "started_utc": started.isoformat(timespec="seconds"),
            "config": {k: v for k, v in vars(args).items() if k not in ("json", "keep")}
            | {f"{p.key}_cmd": [str(x) for x in p.cmd or []] or None for p in bench.peers},
            "machine": {"cpus": os.cpu_count(), "kernel": platform.release(),
                        "machine": platform.machine()},
            "versions": {
                "nginx": tool_version(["/usr/sbin/nginx", "-v"]),
                "curl": tool_version(["curl", "--version"]),
                **{p.key: tool_version(p.version_cmd, p.key) if p.bin else None
                   for p in bench.peers},
                "aria2c": tool_version(["aria2c", "--version"]) if args.profile == "remote"
                and shutil.which("aria2c") else None,
                "fusestream": tool_version([str(BIN / "fusestream-mountd"), "--version"]),
                "repo_commit": tool_version(["git", "-C", str(REPO), "describe", "--always",
                                             "--dirty"]),
            },
            "summary": rows,
            "raw": results,
            **{f"{p.key}_note": p.note for p in bench.peers},
            **{f"{p.key}_mounts": p.mounts for p in bench.peers},
            **{f"{p.key}_early_exits": p.early_exits for p in bench.peers},
            "fusestream_exit_codes": exit_codes,
            "problems": bench.problems,
        }
        with open(args.json, "w") as f:
            json.dump(doc, f, indent=1)
            f.write("\n")
    return 1 if bench.problems else 0


if __name__ == "__main__":
    sys.exit(main())

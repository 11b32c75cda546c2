"""`toolkit loadtest`: perf_analyzer's concurrency sweep for a server of the `detect` model (`toolkit serve`, or
a Triton server holding that model), from Python (perf_analyzer's PyPI package is a stub for this Python).

A target is `grpc://HOST:PORT`, `http://HOST:PORT`, or an artifact directory, which is served on loopback
(`toolkit serve` as a subprocess at free ports) for the duration and stopped after. Each cell of the sweep,
concurrency x images per request, is a closed loop: `concurrency` threads each send a request, wait for its
answer and send the next, until the cell's request count or its duration is reached (whichever first), after
a short warm-up that is not counted. Per cell: images/s, requests/s, p50/p90/p95/p99 request latency as the
client sees it, failed requests and failed items, and the server's side of the same requests from Triton's
statistics extension (deltas of the model's counters over the cell): mean queue time, mean compute time
(input + infer + output) per request and the mean batch the server executed. The difference between the
client's latency and the server's queue + compute is the transport (gRPC/HTTP, serialisation).

An address outside loopback is refused unless `allow_remote`: a load test saturates what it targets.
"""

from __future__ import annotations

import contextlib
import io
import ipaddress
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

PROTOCOLS = ("grpc", "http")
READY_S = 300.0  # how long a served artifact may take to load before the load test gives up


@dataclass
class LoadConfig:
    concurrency: tuple[int, ...] = (1, 4, 16, 64)
    batch: tuple[int, ...] = (1, 8)  # images per request
    requests: int = 1000  # per cell, at most
    duration_s: float | None = None  # per cell, at most (None: only the request count bounds it)
    warmup_requests: int = 16  # per cell, sent before it is measured
    timeout_s: float = 120.0  # one request's deadline: a request past it counts as failed
    model: str = "detect"
    allow_remote: bool = False


@dataclass
class ServeOptions:
    """How an artifact target is served (the options of `toolkit serve`)."""

    engine: str = "onnxruntime"
    precision: str = "fp32"
    instances: int = 1
    max_batch: int = 64
    max_queue_delay_us: int = 2000
    threads: int | None = None
    extra: list[str] = field(default_factory=list)
    decode_threads: int | None = None
    stage: str = "predict"  # predict | decode | none (toolkit serve --stage: where a request's fixed cost goes)


@dataclass(frozen=True)
class Address:
    protocol: str  # grpc | http
    host: str
    port: int

    @property
    def hostport(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def __str__(self) -> str:
        return f"{self.protocol}://{self.hostport}"


def parse_address(text: str) -> Address:
    """grpc://HOST:PORT or http://HOST:PORT -> Address; anything else is a ValueError naming the form."""
    protocol, sep, rest = text.partition("://")
    host, colon, port = rest.rpartition(":")
    host = host.strip("[]")
    if not sep or protocol not in PROTOCOLS or not colon or not host or not port.isdigit() or "/" in rest:
        raise ValueError(f"{text!r}: a load test target is grpc://HOST:PORT, http://HOST:PORT or an artifact directory")
    if not 0 < int(port) < 65536:
        raise ValueError(f"{text!r}: port {port} is not in 1-65535")
    return Address(protocol, host, int(port))


def is_loopback(host: str) -> bool:
    """Whether every address `host` resolves to is a loopback address (127.0.0.0/8, ::1)."""
    try:
        infos = socket.getaddrinfo(host, None)
    except socket.gaierror:
        return False
    return bool(infos) and all(ipaddress.ip_address(i[4][0].split("%")[0]).is_loopback for i in infos)


def check_target(address: Address, allow_remote: bool) -> None:
    if not allow_remote and not is_loopback(address.host):
        raise ValueError(
            f"{address}: {address.host} is not a loopback address; a load test saturates its target, so pass "
            "--allow-remote to load a server on another machine"
        )


# ---- the closed loop, transport-agnostic --------------------------------------------------------------------
Send = Callable[[list[bytes]], int]  # sends one request; -> failed items in it; raises if the request failed


def run_cell(
    new_sender: Callable[[], Send],
    pool: list[bytes],
    concurrency: int,
    per_request: int,
    requests: int,
    duration_s: float | None = None,
    warmup_requests: int = 0,
    advance: Callable[..., None] = lambda n=1, **_: None,
    on_start: Callable[[], None] = lambda: None,
) -> dict:
    """One cell: `concurrency` threads, each with its own sender from `new_sender()`, send requests of
    `per_request` images of `pool` (cycled) back to back until `requests` were sent or `duration_s` passed.
    The first `warmup_requests` (sent before the clock starts, by the same threads) are not counted;
    `on_start` runs after them, just before the clock starts (to read the server's counters)."""
    if concurrency < 1 or per_request < 1 or requests < 1:
        raise ValueError("concurrency, images per request and requests are each at least 1")
    if not pool:
        raise ValueError("no images to send")
    lock = threading.Lock()
    state = {"next": 0, "failed": 0, "failed_items": 0, "first_error": None}
    latencies: list[float] = []
    warm, go = threading.Barrier(concurrency + 1), threading.Barrier(concurrency + 1)
    clock: dict[str, float] = {}

    def batch(i: int) -> list[bytes]:
        return [pool[(i * per_request + j) % len(pool)] for j in range(per_request)]

    def worker(send: Send, warmups: int) -> None:
        for i in range(warmups):
            with contextlib.suppress(Exception):
                send(batch(i))
        warm.wait()  # the warm-up of every thread is over
        go.wait()  # and the main thread has read the server's counters and started the clock
        while True:
            with lock:
                i = state["next"]
                if i >= requests or (duration_s is not None and time.perf_counter() - clock["start"] > duration_s):
                    return
                state["next"] += 1
            t0 = time.perf_counter()
            try:
                bad, error = send(batch(i)), None
            except Exception as e:  # a failed request is a result of the cell, not the end of it
                bad, error = 0, e
            dt = time.perf_counter() - t0
            with lock:
                latencies.append(dt)
                state["failed_items"] += bad
                if error is not None:
                    state["failed"] += 1
                    state["first_error"] = state["first_error"] or f"{type(error).__name__}: {error}"[:300]
            advance(1)

    senders = [new_sender() for _ in range(concurrency)]
    share = [warmup_requests // concurrency + (k < warmup_requests % concurrency) for k in range(concurrency)]
    threads = [threading.Thread(target=worker, args=(s, w), daemon=True) for s, w in zip(senders, share, strict=True)]
    for t in threads:
        t.start()
    warm.wait()
    try:
        on_start()
    finally:
        clock["start"] = time.perf_counter()
        go.wait()
    for t in threads:
        t.join()
    wall = time.perf_counter() - clock["start"]
    return summarise(latencies, wall, concurrency, per_request, requests, state)


def summarise(latencies: list[float], wall: float, concurrency: int, per_request: int, asked: int, state: dict):
    """A cell's figures from its request latencies (s) and wall time (s)."""
    lat = np.asarray(latencies, dtype=np.float64) * 1e3
    done = len(lat)

    def pct(q: float) -> float | None:
        return float(np.percentile(lat, q)) if done else None

    return {
        "concurrency": concurrency,
        "images_per_request": per_request,
        "requests": done,
        "requests_asked": asked,
        "stopped_by": "requests" if done >= asked else "duration",
        "failed_requests": state["failed"],
        "failed_items": state["failed_items"],
        "errors": state["failed"] + state["failed_items"],
        "first_error": state["first_error"],
        "wall_s": wall,
        "requests_per_s": done / wall if wall > 0 else 0.0,
        "images_per_s": done * per_request / wall if wall > 0 else 0.0,
        "mean_ms": float(lat.mean()) if done else None,
        "p50_ms": pct(50),
        "p90_ms": pct(90),
        "p95_ms": pct(95),
        "p99_ms": pct(99),
    }


# ---- Triton transports and statistics ---------------------------------------------------------------------------
def triton_sender(address: Address, model: str, timeout_s: float) -> Callable[[], Send]:
    """-> a factory of senders, each with its own tritonclient (gRPC or HTTP) to `address`."""

    def new_sender() -> Send:
        if address.protocol == "grpc":
            import tritonclient.grpc as tc

            client = tc.InferenceServerClient(address.hostport)
            call = lambda inputs: client.infer(model, inputs, client_timeout=timeout_s)  # noqa: E731
        else:
            import tritonclient.http as tc

            client = tc.InferenceServerClient(address.hostport, network_timeout=timeout_s,
                                              connection_timeout=timeout_s)  # fmt: skip
            call = lambda inputs: client.infer(model, inputs)  # noqa: E731

        def send(payloads: list[bytes]) -> int:
            arr = np.empty((len(payloads), 1), dtype=object)
            arr[:, 0] = payloads
            inp = tc.InferInput("image", list(arr.shape), "BYTES")
            inp.set_data_from_numpy(arr)
            errors = call([inp]).as_numpy("error")
            return 0 if errors is None else int((errors.reshape(-1) != b"").sum())

        return send

    return new_sender


def _client(address: Address):
    if address.protocol == "grpc":
        import tritonclient.grpc as tc
    else:
        import tritonclient.http as tc
    return tc.InferenceServerClient(address.hostport)


def server_counters(address: Address, model: str) -> dict:
    """The model's cumulative counters from Triton's statistics extension: {name: (count, ns)} for success,
    queue, compute_input, compute_infer, compute_output, plus inference_count and execution_count; or
    {"unavailable": why} where the server does not give them (a restricted endpoint, another server)."""
    try:
        client = _client(address)
        stats = (
            client.get_inference_statistics(model, as_json=True)
            if address.protocol == "grpc"
            else client.get_inference_statistics(model)
        )
    except Exception as e:
        return {"unavailable": f"{type(e).__name__}: {e}"[:300]}
    models = [m for m in stats.get("model_stats", []) if m.get("name") == model]
    if not models:
        return {"unavailable": f"the statistics name no model {model!r}"}
    m, out = models[0], {}
    for key in ("success", "queue", "compute_input", "compute_infer", "compute_output"):
        d = m.get("inference_stats", {}).get(key, {})
        out[key] = (int(d.get("count", 0)), int(d.get("ns", 0)))
    out["inference_count"] = int(m.get("inference_count", 0))
    out["execution_count"] = int(m.get("execution_count", 0))
    return out


def settled_counters(read, before: dict | None, answered: int, timeout_s: float = 2.0, poll_s: float = 0.02) -> dict:
    """`read()` (a `server_counters`) once the server has counted the `answered` requests of the cell: Triton
    records a request's statistics after it sends the response, so a read right after the last response missed
    it (a CI run saw 11 of 12). Polls for at most `timeout_s`; then returns what it read."""
    deadline = time.monotonic() + timeout_s
    while True:
        after = read()
        done = "unavailable" in after or not before or "unavailable" in before
        if done or after["success"][0] - before["success"][0] >= answered or time.monotonic() > deadline:
            return after
        time.sleep(poll_s)


def server_side(before: dict | None, after: dict) -> dict:
    """Per request over a cell, from two `server_counters`: mean queue and compute ms, mean executed batch;
    or {"unavailable": why}."""
    for c in (before or {"unavailable": "not read"}, after):
        if "unavailable" in c:
            return {"unavailable": c["unavailable"]}
    n = after["success"][0] - before["success"][0]
    if n <= 0:
        return {"unavailable": "the server counted no successful request in the cell"}

    def ms(key: str) -> float:
        return (after[key][1] - before[key][1]) / n / 1e6

    executions = after["execution_count"] - before["execution_count"]
    images = after["inference_count"] - before["inference_count"]
    return {
        "requests": n,
        "queue_ms": ms("queue"),
        "compute_ms": ms("compute_input") + ms("compute_infer") + ms("compute_output"),
        "compute_infer_ms": ms("compute_infer"),
        "mean_batch": images / executions if executions > 0 else None,
    }


# ---- an artifact served on loopback for the duration ----------------------------------------------------------
def _free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@contextlib.contextmanager
def served(artifact: Path, options: ServeOptions, log: Callable[[str], None] = print) -> Iterator[dict]:
    """`toolkit serve ARTIFACT` on 127.0.0.1 at free ports in its own session, until the block ends (SIGTERM,
    then SIGKILL of the whole session if it does not stop in 60 s). -> {grpc, http: Address, log: Path}."""
    http, grpc, metrics = _free_ports(3)
    with tempfile.TemporaryDirectory(prefix="loadtest-") as tmp:
        out = Path(tmp) / "serve.log"
        args = [sys.executable, "-c", "from toolkit.cli import main; main()", "serve", str(artifact),
                "--engine", options.engine, "--precision", options.precision, "--instances", str(options.instances),
                "--max-batch", str(options.max_batch), "--max-queue-delay-us", str(options.max_queue_delay_us),
                "--http-port", str(http), "--grpc-port", str(grpc), "--metrics-port", str(metrics),
                "--log-file", str(out.with_suffix(".triton.log")), *options.extra]  # fmt: skip
        if options.threads:
            args += ["--threads", str(options.threads)]
        if options.decode_threads:
            args += ["--decode-threads", str(options.decode_threads)]
        if options.stage != "predict":
            args += ["--stage", options.stage]
        log(f"serving {artifact} on 127.0.0.1 (gRPC {grpc}, HTTP {http}) ...")
        with open(out, "wb") as sink:
            proc = subprocess.Popen(args, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            address = Address("grpc", "127.0.0.1", grpc)
            _wait_ready(proc, address, out)
            yield {"grpc": address, "http": Address("http", "127.0.0.1", http), "log": out}
        finally:
            _stop(proc)


def _tail(path: Path) -> str:
    lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    return lines[-1] if lines else "(no output)"


def _wait_ready(proc: subprocess.Popen, address: Address, log: Path) -> None:
    client = _client(address)
    deadline = time.monotonic() + READY_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"toolkit serve exited with {proc.returncode}: {_tail(log)}")
        with contextlib.suppress(Exception):
            if client.is_model_ready("detect"):
                return
        time.sleep(0.2)
    raise TimeoutError(f"toolkit serve was not ready in {READY_S:.0f} s ({log})")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)  # `toolkit serve` drains in-flight requests and stops its server
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(60)
    with contextlib.suppress(ProcessLookupError):  # whatever is left of its session (tritonserver, stubs)
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(10)


# ---- images ---------------------------------------------------------------------------------------------------
def synthetic_jpegs(n: int, size: int = 256, seed: int = 0) -> list[bytes]:
    """Smooth gradients with mild noise, JPEG quality 90 (photo-like sizes, ~10-20 KB at 256 px)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    out = []
    for _ in range(n):
        img = np.stack([yy * rng.uniform(60, 220), xx * rng.uniform(60, 220), (xx + yy) * rng.uniform(30, 120)], -1)
        img = np.clip(img + rng.normal(0, 6, img.shape), 0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def image_pool(images: Path | None, n: int) -> tuple[list[bytes], str]:
    """Up to `n` image files of a folder (or list) as bytes, in the source's order; without a folder, `n`
    synthetic 256 px JPEGs. -> (pool, what it is)."""
    if images is None:
        return synthetic_jpegs(n), f"{n} synthetic 256 px JPEGs"
    from toolkit.data.images import ImageDecodeError, read_file
    from toolkit.sources import open_source

    pool = []
    for path, _key in open_source(images).items():
        with contextlib.suppress(ImageDecodeError):
            pool.append(read_file(path))
        if len(pool) >= n:
            break
    if not pool:
        raise ValueError(f"{images}: no readable image files")
    return pool, f"{len(pool)} files of {images}"


# ---- the sweep ------------------------------------------------------------------------------------------------
def loadtest(
    target: str | Path,
    cfg: LoadConfig,
    images: Path | None = None,
    pool_size: int = 256,
    serve: ServeOptions | None = None,
    protocol: str = "grpc",
    progress: bool = True,
    log: Callable[[str], None] = print,
    pool: tuple[list[bytes], str] | None = None,
) -> dict:
    """The sweep over `cfg.concurrency` x `cfg.batch` against `target` (an address, or an artifact served on
    loopback meanwhile, reached over `protocol`) -> {target, config, images, cells: [cell + server side]}.
    `pool`: (images, what they are) already read, instead of `images` / `pool_size`."""
    from toolkit.progress import progress_bar

    pool, what = pool or image_pool(images, pool_size)
    with _resolved(target, serve or ServeOptions(), protocol, cfg.allow_remote, log) as (address, served_from, logs):
        cells = []
        n_cells = len(cfg.concurrency) * len(cfg.batch)
        with progress_bar(f"loadtest {address}", n_cells * cfg.requests, progress) as advance:
            for per_request in cfg.batch:
                for concurrency in cfg.concurrency:
                    before = {}
                    cell = run_cell(triton_sender(address, cfg.model, cfg.timeout_s), pool, concurrency, per_request,
                                    cfg.requests, cfg.duration_s, cfg.warmup_requests, advance,
                                    lambda b=before: b.update(c=server_counters(address, cfg.model)))  # fmt: skip
                    answered = cell["requests"] - cell["errors"]
                    after = settled_counters(lambda: server_counters(address, cfg.model), before.get("c"), answered)
                    cell["server"] = server_side(before.get("c"), after)
                    if cell["stopped_by"] == "duration":
                        advance(cfg.requests - cell["requests"])
                    cells.append(cell)
                    log(cell_line(cell))
        kept_logs = keep_server_logs(logs, cells, log)
    return {
        "target": str(target),
        "address": str(address),
        "served_artifact": served_from,
        "server_logs": kept_logs,
        "serve_options": asdict(serve or ServeOptions()) if served_from else None,
        "config": asdict(cfg),
        "images": what,
        "cells": cells,
    }


def keep_server_logs(logs: list[Path], cells: list[dict], log: Callable[[str], None] = print) -> str | None:
    """When a cell had errors, copy the served artifact's logs (`toolkit serve`'s output and tritonserver's log, which
    live in a temporary directory removed with the server) into a new private directory -> its path, else None.
    Why: a run once lost 774 of 1,000 requests of a cell to "Server is stopping", and its logs went with the
    temporary directory, so the cause could not be found."""
    import shutil

    if not logs or not any(c["errors"] for c in cells):
        return None
    keep = Path(tempfile.mkdtemp(prefix="loadtest-server-logs-"))
    for f in logs:
        if f.is_file():
            shutil.copy2(f, keep / f.name)
    log(f"requests failed: the server's logs are kept in {keep}")
    return str(keep)


@contextlib.contextmanager
def _resolved(target, serve: ServeOptions, protocol: str, allow_remote: bool,
              log) -> Iterator[tuple[Address, str | None, list[Path]]]:  # fmt: skip
    """-> (the address to load, the artifact served for the duration or None, that server's log files)."""
    text = str(target)
    if "://" in text:
        address = parse_address(text)
        check_target(address, allow_remote)
        yield address, None, []
        return
    if protocol not in PROTOCOLS:
        raise ValueError(f"--protocol must be one of {PROTOCOLS}, got {protocol!r}")
    if not Path(text).is_dir():
        raise FileNotFoundError(f"{text}: not an artifact directory, and not grpc://HOST:PORT or http://HOST:PORT")
    with served(Path(text), serve, log) as s:
        yield s[protocol], text, [s["log"], s["log"].with_suffix(".triton.log")]


def cell_line(c: dict) -> str:
    s = c.get("server") or {}
    side = f", server queue {s['queue_ms']:.2f} ms + compute {s['compute_ms']:.2f} ms" if "queue_ms" in s else ""
    p50 = f"{c['p50_ms']:.1f}" if c["p50_ms"] is not None else "-"
    p99 = f"{c['p99_ms']:.1f}" if c["p99_ms"] is not None else "-"
    return (f"concurrency {c['concurrency']:>3} x {c['images_per_request']} image(s): {c['images_per_s']:.1f} "
            f"images/s, p50 {p50} ms, p99 {p99} ms, errors {c['errors']}{side}")  # fmt: skip


# ---- report ---------------------------------------------------------------------------------------------------
def markdown(r: dict, command: str | None = None, machine: str | None = None) -> str:
    def f(v, spec=".1f"):
        return "-" if v is None else format(v, spec)

    lines = [f"# Load test of {r['address']}" + (f" (serving {r['served_artifact']})" if r["served_artifact"] else "")]
    lines += ["", *([f"Command: `{command}`  "] if command else []), *([f"Machine: {machine}  "] if machine else [])]
    if r.get("server_logs"):
        lines += [f"Requests failed; the served artifact's logs are kept in `{r['server_logs']}`.", ""]
    c = r["config"]
    bound = f"{c['requests']} requests" + (f" or {c['duration_s']:g} s" if c["duration_s"] else "")
    lines += [
        f"Images: {r['images']}. Each cell: a closed loop of `concurrency` clients, {bound} (whichever first), "
        f"after {c['warmup_requests']} warm-up requests. Latency: request round trip at the client. Server: "
        "Triton's statistics for the same requests (queue; compute = input + infer + output; mean batch "
        "executed); client latency minus queue and compute is the transport.",
        "",
        "| concurrency | images/request | requests | errors | images/s | requests/s | p50 ms | p90 ms | p95 ms "
        "| p99 ms | server queue ms | server compute ms | server batch |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for cell in r["cells"]:
        s = cell.get("server") or {}
        stop = " (duration)" if cell["stopped_by"] == "duration" else ""
        lines.append(
            f"| {cell['concurrency']} | {cell['images_per_request']} | {cell['requests']}{stop} | {cell['errors']} | "
            f"{cell['images_per_s']:.1f} | {cell['requests_per_s']:.1f} | {f(cell['p50_ms'])} | {f(cell['p90_ms'])} | "
            f"{f(cell['p95_ms'])} | {f(cell['p99_ms'])} | {f(s.get('queue_ms'), '.2f')} | "
            f"{f(s.get('compute_ms'), '.2f')} | {f(s.get('mean_batch'), '.1f')} |"
        )
    errors = [cell["first_error"] for cell in r["cells"] if cell["first_error"]]
    if errors:
        lines += ["", f"First failed request: {errors[0]}"]
    missing = [(cell.get("server") or {}).get("unavailable") for cell in r["cells"]]
    if any(missing):
        lines += ["", f"Server statistics unavailable: {next(m for m in missing if m)}"]
    return "\n".join(lines) + "\n"


def plot(r: dict, path: Path) -> Path:
    """Latency (p50 solid, p99 dashed) against images/s, one line per images-per-request, points labelled
    with their concurrency."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from toolkit.io import atomic_path

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for per_request in sorted({c["images_per_request"] for c in r["cells"]}):
        cells = [c for c in r["cells"] if c["images_per_request"] == per_request and c["p50_ms"] is not None]
        x = [c["images_per_s"] for c in cells]
        (line,) = ax.plot(x, [c["p50_ms"] for c in cells], "o-", label=f"{per_request} image(s)/request, p50")
        ax.plot(x, [c["p99_ms"] for c in cells], "s--", color=line.get_color(), label=f"{per_request}, p99")
        for c in cells:
            ax.annotate(str(c["concurrency"]), (c["images_per_s"], c["p50_ms"]), textcoords="offset points",
                        xytext=(4, 4), fontsize=8)  # fmt: skip
    ax.set_xlabel("images/s")
    ax.set_ylabel("request latency (ms)")
    ax.set_yscale("log")
    ax.set_title(f"{r['address']}: latency against throughput (labels: concurrency)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return path


def write_report(r: dict, out_dir: Path, command: str | None = None, machine: str | None = None) -> dict[str, Path]:
    """loadtest.json, loadtest.md, loadtest.png under `out_dir`, each written atomically."""
    from toolkit.io import write_json, write_text

    out_dir.mkdir(parents=True, exist_ok=True)
    record = {**r, "command": command, "machine": machine}
    return {
        "json": write_json(out_dir / "loadtest.json", record),
        "md": write_text(out_dir / "loadtest.md", markdown(r, command, machine)),
        "png": plot(r, out_dir / "loadtest.png"),
    }


def machine_line() -> str:
    """'2 CPUs (AMD EPYC ...; flags avx2 ...)': the machine the load generator (and a served artifact) ran on."""
    from toolkit.machine import cpu_flags, cpu_model

    return f"{os.cpu_count()} CPUs ({cpu_model()}; flags {' '.join(cpu_flags()) or 'none recorded'})"


def run_and_report(
    target: str | Path,
    cfg: LoadConfig,
    out_dir: Path,
    images: Path | None = None,
    pool_size: int = 256,
    serve: ServeOptions | None = None,
    protocol: str = "grpc",
    command: str | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> tuple[dict, dict[str, Path]]:
    """`loadtest` then `write_report` (what `toolkit loadtest` runs)."""
    r = loadtest(target, cfg, images, pool_size, serve, protocol, progress, log)
    return r, write_report(r, out_dir, command, machine_line())

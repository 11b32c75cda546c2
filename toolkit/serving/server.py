"""`toolkit serve ARTIFACT`: a real Triton Inference Server (PyTriton) whose models run the one prediction path.

Two models, both batched by Triton's dynamic batcher and both calling `PredictionPath` (toolkit/predict.py),
so a served prediction is the local one, bit for bit:
- `detect`: input `image` BYTES (one encoded file per item) -> per item `p_generated` FP32, `logit` FP32,
  `is_generated` BOOL, `error` BYTES ("" when fine). Decoding follows toolkit/data/images.py; an item that
  cannot be decoded gets its reason in `error` (and NaN scores) and never fails the batch or the server.
- `detect_tensor`: input `images` FP32 [-1, 3, S, S], already preprocessed the way `PredictionPath.preprocess`
  says (the purifier's [0, 1] pixels with --purify, else the detector's normalised input); same outputs.
Triton itself refuses a request of the wrong dtype or shape with an error for that request.

Each instance (`--instances N`) opens its own engines with cpu_count / N threads. SIGTERM or SIGINT stops
accepting requests, lets the in-flight ones finish (up to `drain_s`), then exits 0. The server's id (Triton's
server metadata `name`) carries a digest of the prediction identity, so a client resuming an output can tell
that the server still runs the same artifacts, engine, precision and threshold.

PyTriton runs the models in its Python-backend stub, which links the system libpython; from an interpreter
built elsewhere the stub dies (`'_thread.RLock' object has no attribute '_recursion_count'`) unless
LD_LIBRARY_PATH names the running interpreter's LIBDIR first: `serve` sets it before the server starts.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import signal
import socket
import sysconfig
from dataclasses import dataclass

import numpy as np

IDENTITY_PREFIX = "causal-deploy-toolkit/"
OUTPUTS = ("p_generated", "logit", "is_generated", "error")


# what `--config auto` takes from the `loadtest --tune` record
TUNED_KNOBS = ("engine", "precision", "instances", "max_batch", "max_queue_delay_us", "threads", "decode_threads")


@dataclass
class ServeConfig:
    engine: str = "onnxruntime"  # torch | onnxruntime | openvino | trt | auto
    precision: str = "fp32"
    provider: str = "cpu"
    host: str = "127.0.0.1"
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002
    max_batch: int = 64  # Triton's max_batch_size: the dynamic batcher never builds larger batches
    max_queue_delay_us: int = 2000  # how long the batcher may hold a request to fill a batch
    instances: int = 1  # model instances (each its own engines)
    threads: int | None = None  # engine threads per instance; None: cpu_count // instances
    drain_s: int = 30  # on SIGTERM: how long in-flight requests may take to finish
    log_file: str | None = None  # tritonserver's own log; None: a file in the temp directory, named when ready
    tuned: bool = False  # --config auto: engine, precision, the four knobs above and decode_threads from --tune
    decode_threads: int | None = None  # threads decoding one batch's images per instance; None: cpu_count
    # what `detect` runs: predict (the model) | decode (decode and preprocess, no engine) | none (nothing: the
    # gRPC + Triton + PyTriton hand-over alone). The last two answer NaN scores, name themselves in the server id
    # (no client resumes an output against them) and exist to measure where a request's fixed cost goes.
    stage: str = "predict"


def identity_digest(identity: dict) -> str:
    """The server id for a prediction identity (PredictionPath.identity())."""
    blob = json.dumps(identity, sort_keys=True, separators=(",", ":")).encode()
    return IDENTITY_PREFIX + hashlib.sha256(blob).hexdigest()[:32]


def item_outputs(n: int, batch, outputs: dict) -> dict[str, np.ndarray]:
    """A decoded batch (some items maybe skipped) -> Triton outputs of shape (n, 1), in request order.
    Items are named by their index in the request (`decode_batch` keys)."""
    p = np.full(n, np.nan, np.float32)
    z = np.full(n, np.nan, np.float32)
    g = np.zeros(n, bool)
    err = np.full(n, b"", dtype=object)
    if batch.paths:
        idx = np.array([int(k) for k in batch.paths])
        p[idx], z[idx], g[idx] = outputs["p_generated"], outputs["logit"], outputs["is_generated"]
    for s in batch.skipped:
        err[int(s.path)] = s.reason.encode("utf-8", "backslashreplace")
    return {"p_generated": p[:, None], "logit": z[:, None], "is_generated": g[:, None], "error": err[:, None]}


STAGES = ("predict", "decode", "none")


def detect_items(path, pool, items: list[tuple[str, bytes]], stage: str = "predict") -> dict[str, np.ndarray]:
    """What `detect` answers for one batch of (index, encoded bytes) items: the prediction, or under a diagnostic
    stage NaN scores after decoding ("decode", undecodable items still named in `error`) or at once ("none")."""
    from toolkit.data.loader import Batch

    if stage == "predict":
        b, out = path.predict_bytes(items, pool)
    else:
        b = pool.decode(items, path.preprocess) if stage == "decode" else Batch(np.zeros(0), [], [])
        b, out = Batch(b.array, [], b.skipped), {}
    return item_outputs(len(items), b, out)


def _infer_functions(path, pool, stage: str = "predict"):
    """The two batched callables of one instance, around one opened PredictionPath and its DecodePool."""
    from pytriton.decorators import batch

    @batch
    def detect(image: np.ndarray) -> dict[str, np.ndarray]:
        return detect_items(path, pool, [(str(i), _item_bytes(x)) for i, x in enumerate(image)], stage)

    @batch
    def detect_tensor(images: np.ndarray) -> dict[str, np.ndarray]:
        x = np.ascontiguousarray(images, dtype=np.float32)
        out = path.run(x)
        n = len(x)
        return {
            "p_generated": out["p_generated"].reshape(n, 1),
            "logit": out["logit"].reshape(n, 1),
            "is_generated": out["is_generated"].reshape(n, 1),
            "error": np.full((n, 1), b"", dtype=object),
        }

    return detect, detect_tensor


def _item_bytes(x) -> bytes:
    """One item of a BYTES input (shape (1,) per item) -> its bytes, whatever container Triton handed over."""
    v = x[0] if isinstance(x, np.ndarray) and x.ndim else x
    return v if isinstance(v, bytes) else bytes(v)


def security_config():
    """PyTriton's token-protected endpoints, less `statistics`: its per-model counters (read-only, the figures
    the public /metrics endpoint carries too) are what `toolkit loadtest` reads the server's queue and compute
    times from. Shared memory, the model repository, trace and logging stay behind PyTriton's random token."""
    from pytriton.triton import DEFAULT_PROTECTED_ENDPOINTS, TritonSecurityConfig

    return TritonSecurityConfig(restricted_endpoints=[e for e in DEFAULT_PROTECTED_ENDPOINTS if e != "statistics"])


def check_ports_free(host: str, ports: dict[str, int]) -> None:
    """A taken port is one clear error before the server starts (tritonserver would only log and exit)."""
    if len(set(ports.values())) != len(ports):
        raise ValueError(f"the ports must differ: {ports}")
    for name, port in ports.items():
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers do: TIME_WAIT is no obstacle
            try:
                s.bind((host, port))
            except OSError as e:
                raise ValueError(
                    f"--{name.replace('_', '-')} {port} on {host} is not available ({e.strerror})"
                ) from None


def python_libdir_first() -> None:
    """Put this interpreter's libpython directory first on LD_LIBRARY_PATH (see the module doc)."""
    libdir = sysconfig.get_config_var("LIBDIR")
    if not libdir:
        return
    parts = [p for p in os.environ.get("LD_LIBRARY_PATH", "").split(":") if p]
    if not parts or parts[0] != libdir:
        os.environ["LD_LIBRARY_PATH"] = ":".join([libdir, *[p for p in parts if p != libdir]])


# Runs in its own session: reads its stdin until EOF, which comes when `toolkit serve` closes the pipe after a
# clean stop or dies (SIGKILL, OOM killer); then SIGKILLs the tritonserver it was given, if still running.
_WATCHDOG = """
import os, signal, sys
sys.stdin.buffer.read()
for pid in map(int, sys.argv[1:]):
    try:
        with open(f"/proc/{pid}/comm") as f:
            if f.read().strip() == "tritonserver":
                os.kill(pid, signal.SIGKILL)
    except OSError:
        pass
"""


def _tritonserver_children() -> list[int]:
    me, pids = os.getpid(), []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    stat = f.read()
            except OSError:
                continue
            comm, rest = stat[stat.index("(") + 1 : stat.rindex(")")], stat[stat.rindex(")") + 2 :].split()
            if comm == "tritonserver" and int(rest[1]) == me:
                pids.append(int(d))
    return pids


class TritonGuard:
    """Make the tritonserver die with this process. PyTriton starts it with PDEATHSIG=SIGTERM, a graceful stop
    that waits for in-flight requests; once this process is SIGKILLed those never finish (they run here), so
    the orphan kept its gRPC connections open and clients hung for minutes (measured). `start()` spawns a
    watchdog (own session, so Ctrl-C in a terminal does not reach it) that SIGKILLs it instead; the
    Python-backend stubs exit when their tritonserver does. `close()` after a clean stop lets it exit idle."""

    def __init__(self):
        self._w: int | None = None

    def start(self) -> None:
        import subprocess
        import sys

        pids = _tritonserver_children()
        if not pids:
            return
        r, self._w = os.pipe()
        try:
            subprocess.Popen(
                [sys.executable, "-c", _WATCHDOG, *map(str, pids)], stdin=r, start_new_session=True, close_fds=True
            )
        finally:
            os.close(r)

    def close(self) -> None:
        if self._w is not None:
            os.close(self._w)
            self._w = None


def prepare_log_file(path: str | None, port: int) -> str:
    """tritonserver's log file, created here without following a link. Default: a new private directory
    (mkdtemp: mode 0700, a name nobody can plant in advance), so a link planted at a guessable name is never
    written through; a path the user gives is refused in one line when it is a link."""
    import tempfile

    from toolkit.safe_paths import open_nofollow

    if path is None:
        path = os.path.join(tempfile.mkdtemp(prefix=f"toolkit-serve-{port}-"), "tritonserver.log")
    os.close(open_nofollow(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600))
    return path


def serve(detector, purifier=None, cfg: ServeConfig | None = None, log=print) -> dict:
    """Serve until SIGTERM / SIGINT; -> what was served (for the CLI's last line). Raises when the server
    cannot start or dies on its own."""
    from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
    from pytriton.triton import Triton, TritonConfig

    from toolkit.data.loader import DecodePool
    from toolkit.predict import EngineChoice, PredictionPath

    cfg = cfg or ServeConfig()
    if cfg.tuned:
        from toolkit.serving.sizing import tuned

        cfg = tuned(cfg, detector, TUNED_KNOBS, log)
    if cfg.instances < 1 or cfg.max_batch < 1 or cfg.max_queue_delay_us < 0:
        raise ValueError("need --instances >= 1, --max-batch >= 1 and --max-queue-delay-us >= 0")
    if cfg.stage not in STAGES or (cfg.decode_threads is not None and cfg.decode_threads < 1):
        raise ValueError(f"--stage takes {' | '.join(STAGES)} (got {cfg.stage!r}) and --decode-threads >= 1")
    threads = cfg.threads or max(1, (os.cpu_count() or 1) // cfg.instances)
    decode_threads = cfg.decode_threads or os.cpu_count() or 1
    choice = EngineChoice(cfg.engine, cfg.precision, cfg.provider, threads)
    paths = [PredictionPath(detector, purifier, choice, cfg.max_batch) for _ in range(cfg.instances)]
    first = paths[0]
    if first.detector is None:
        raise ValueError("serve needs a detector artifact (--purify adds a purifier in front of it)")
    if first.auto_reason:
        log(f"--engine auto: {first.auto_reason}")
    identity = first.identity() if cfg.stage == "predict" else {**first.identity(), "diagnostic_stage": cfg.stage}
    ports = {"http_port": cfg.http_port, "grpc_port": cfg.grpc_port, "metrics_port": cfg.metrics_port}
    check_ports_free(cfg.host, ports)
    python_libdir_first()
    for name in ("pytriton", "tritonclient"):
        logging.getLogger(name).setLevel(logging.WARNING)

    size = first.preprocess["size"]
    outputs = [
        Tensor(name="p_generated", dtype=np.float32, shape=(1,)),
        Tensor(name="logit", dtype=np.float32, shape=(1,)),
        Tensor(name="is_generated", dtype=np.bool_, shape=(1,)),
        Tensor(name="error", dtype=np.bytes_, shape=(1,)),
    ]
    model_cfg = ModelConfig(
        max_batch_size=cfg.max_batch, batcher=DynamicBatcher(max_queue_delay_microseconds=cfg.max_queue_delay_us)
    )
    triton_cfg = TritonConfig(
        id=identity_digest(identity),
        http_address=cfg.host,
        grpc_address=cfg.host,
        metrics_address=cfg.host,
        http_port=cfg.http_port,
        grpc_port=cfg.grpc_port,
        metrics_port=cfg.metrics_port,
        exit_timeout_secs=cfg.drain_s,
        log_verbose=0,
        log_file=prepare_log_file(cfg.log_file, cfg.grpc_port),
    )
    with contextlib.ExitStack() as stack:
        opened = [stack.enter_context(p) for p in paths]  # engines open before the server answers
        fns = [_infer_functions(p, stack.enter_context(DecodePool(decode_threads)), cfg.stage) for p in opened]
        stopping = {"signal": None}

        def on_signal(signum, _frame):
            stopping["signal"] = signal.Signals(signum).name
            raise KeyboardInterrupt  # PyTriton's serve() stops (draining in-flight requests) on it

        previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        stack.callback(lambda: [signal.signal(s, h) for s, h in previous.items()])
        guard = TritonGuard()
        stack.callback(guard.close)  # registered before triton.stop, so it runs after it
        triton = Triton(config=triton_cfg, security_config=security_config())  # bound before it starts
        stack.callback(triton.stop)  # drains in-flight requests (exit_timeout_secs); a no-op once stopped
        try:
            triton.bind(
                model_name="detect",
                infer_func=[f[0] for f in fns],
                inputs=[Tensor(name="image", dtype=np.bytes_, shape=(1,))],
                outputs=outputs,
                config=model_cfg,
                strict=True,
            )
            triton.bind(
                model_name="detect_tensor",
                infer_func=[f[1] for f in fns],
                inputs=[Tensor(name="images", dtype=np.float32, shape=(3, size, size))],
                outputs=outputs,
                config=model_cfg,
                strict=True,
            )
            triton.run()  # starts tritonserver and loads both models: ready means ready to predict
            guard.start()
            if cfg.stage != "predict":
                log(f"DIAGNOSTIC SERVER: detect runs stage {cfg.stage!r} and answers NaN scores, no predictions")
            log(
                f"serving on grpc://{cfg.host}:{cfg.grpc_port} and http://{cfg.host}:{cfg.http_port} "
                f"(metrics on :{cfg.metrics_port}): models detect, detect_tensor; {choice.engine} {choice.precision}, "
                f"{cfg.instances} instance(s) x {threads} thread(s), images decoded on {decode_threads} thread(s), "
                f"batches up to {cfg.max_batch}; server id {triton_cfg.id}; server log {triton_cfg.log_file}"
            )
            triton.serve()  # returns after a signal (it stops the server itself) or when the server died
        except KeyboardInterrupt:
            if stopping["signal"] is None:
                raise
        if stopping["signal"] is None:
            raise RuntimeError(f"the Triton server stopped on its own (its log: {triton_cfg.log_file})")
    return {"stopped_by": stopping["signal"], "identity": identity}

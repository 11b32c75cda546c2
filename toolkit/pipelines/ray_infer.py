"""Distributed batch inference on Ray Data: `toolkit infer SOURCE --artifact A --ray local|auto|ray://HOST:PORT`.

The same contract as local `infer` (toolkit/outputs.py): one row per readable file, unreadable files with
their reason, a lock on the output, resumable after the driver is killed. Only transport is added here:
- the driver ships file paths, never image bytes; an actor pool (one `PredictionPath`, i.e. one engine,
  per actor, opened once and reused) reads, decodes and predicts (toolkit/predict.py, as everywhere);
- results stream back to the driver, which appends and commits them batch by batch (resume = skip done keys);
- a killed actor is restarted by Ray and its in-flight batch retried (Ray Data's actor pool restarts actors
  and retries their tasks), so nothing is lost or doubled.
Paths travel as bytes (`os.fsencode`), so any file name the OS can hold survives Arrow's UTF-8 strings.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from toolkit.data.images import Skipped
from toolkit.pipelines.infer import COLUMNS, InferConfig, Tally, detection_rows, warn_if_empty


@dataclass
class RayConfig:
    address: str = "local"  # local (a cluster here) | auto (RAY_ADDRESS / `ray start`) | HOST:PORT | ray://HOST:PORT
    actors: int = 2  # actor pool size: one engine per actor
    cpus_per_actor: float = 1.0
    gpus_per_actor: float = 0.0
    threads_per_actor: int | None = None  # engine threads; None: max(1, cpus_per_actor) so actors do not oversubscribe
    blocks_per_actor: int = 8  # input blocks per actor: smaller blocks stream sooner, more blocks cost scheduling
    object_store_mb: int = 512  # local clusters only


class Predictor:
    """Runs inside a Ray actor: one prediction path, opened once."""

    def __init__(self, detector: str | None, purifier: str | None, choice: dict):
        from toolkit.predict import EngineChoice, PredictionPath

        self.path = PredictionPath(detector, purifier, EngineChoice(**choice)).__enter__()

    def __call__(self, batch: dict) -> dict:
        from toolkit.data.loader import load_batch

        files = [os.fsdecode(bytes(f)) for f in batch["file"]]
        b = load_batch(files, self.path.preprocess)
        out = self.path.predict(b)
        ok = {p: i for i, p in enumerate(b.paths)}
        reason = {s.path: s.reason for s in b.skipped}
        idx = np.array([ok.get(f, -1) for f in files])
        take = np.maximum(idx, 0)

        def col(name: str, dtype) -> np.ndarray:
            if not b.paths:
                return np.zeros(len(files), dtype)
            return np.where(idx >= 0, out[name][take], 0).astype(dtype)

        return {
            "key": batch["key"],
            "logit": col("logit", np.float32),
            "p_generated": col("p_generated", np.float32),
            "is_generated": col("is_generated", bool),
            "error": np.array([reason.get(f, "") for f in files], dtype=object),
        }


def _preflight(detector: str | None, purifier: str | None, choice: dict) -> str | None:
    """Open the prediction path once where the actors will run: a bad engine or artifact is one clear error
    before any output is touched (and before an actor pool would retry it forever)."""
    try:
        Predictor(detector, purifier, choice).path.__exit__(None, None, None)
    except Exception as e:
        return f"{type(e).__name__}: {e}"
    return None


def connect(cfg: RayConfig, log=print) -> bool:
    """ray.init for `cfg.address`; -> True when this process started (and must stop) the cluster."""
    import logging

    import ray

    logging.getLogger("ray.data").setLevel(logging.WARNING)
    if ray.is_initialized():
        return False
    kw = {"include_dashboard": False, "log_to_driver": False, "logging_level": logging.WARNING}
    if cfg.address == "local":
        ray.init(num_cpus=os.cpu_count(), object_store_memory=cfg.object_store_mb << 20, **kw)
        return True
    if cfg.address != "auto" and not cfg.address.startswith("ray://") and ":" not in cfg.address:
        raise ValueError(f"--ray takes local, auto, HOST:PORT or ray://HOST:PORT, got {cfg.address!r}")
    try:
        ray.init(address=cfg.address, **kw)
    except ConnectionError as e:
        raise RuntimeError(f"cannot reach the Ray cluster at {cfg.address}: {e}") from None
    return True


def run_ray_inference(
    source: str | Path,
    artifact: str | Path,
    out: str | Path,
    cfg: InferConfig | None = None,
    ray_cfg: RayConfig | None = None,
    progress: bool = True,
    log=print,
    warn=None,
) -> dict:
    """Predict every image of `source` (folder or file list) on a Ray cluster; -> summary (as local infer's)."""
    import ray

    from toolkit.outputs import open_log
    from toolkit.predict import EngineChoice, PredictionPath
    from toolkit.progress import progress_bar
    from toolkit.sources import open_source

    cfg, ray_cfg, warn = cfg or InferConfig(), ray_cfg or RayConfig(), warn or log
    if ray_cfg.actors < 1 or ray_cfg.cpus_per_actor < 0 or ray_cfg.gpus_per_actor < 0:
        raise ValueError("need --actors >= 1 and non-negative --cpus-per-actor / --gpus-per-actor")
    threads = ray_cfg.threads_per_actor or max(1, int(ray_cfg.cpus_per_actor))
    choice = EngineChoice(cfg.engine, cfg.precision, cfg.provider, threads)
    path = PredictionPath(artifact, cfg.purify, choice, cfg.batch)  # verifies artifacts and kinds (no engine yet)
    if path.auto_reason:
        log(f"--engine auto: {path.auto_reason}")
    choice = path.choice  # auto resolved here, once, so every actor runs the same engine
    args = (str(path.detector.dir), str(path.purifier.dir) if path.purifier else None, asdict(choice))
    src = open_source(source)
    warn_if_empty(src, source, warn)
    # a bad --out is refused here, before the cluster starts; the log touches nothing until entered
    plog = open_log(out, COLUMNS, path.identity(), src.root, cfg.overwrite)
    t0 = time.perf_counter()
    started = connect(ray_cfg, log)
    try:
        resources = {"num_cpus": ray_cfg.cpus_per_actor, "num_gpus": ray_cfg.gpus_per_actor}
        problem = ray.get(ray.remote(_preflight).options(**resources).remote(*args))
        if problem:
            raise RuntimeError(f"the prediction path does not open on the cluster: {problem}")
        t_ready = time.perf_counter()
        tally = Tally()
        with plog:
            done_before = len(plog.done)
            todo = [(p, k) for p, k in src.items if k not in plog.done]
            if done_before:
                log(f"resuming: {done_before} of {len(src)} files already done, {len(todo)} to go")
            with progress_bar("infer (ray)", len(todo), progress) as advance:
                for b in _stream(todo, args, cfg.batch, ray_cfg, resources):
                    keys = [os.fsdecode(bytes(k)) for k in b["key"]]
                    ok = np.array([not e for e in b["error"]], bool)
                    outputs = {k: b[k][ok] for k in ("logit", "p_generated", "is_generated")}
                    rows = detection_rows([k for k, good in zip(keys, ok, strict=True) if good], outputs)
                    skipped = [Skipped(k, e) for k, e in zip(keys, b["error"], strict=True) if e]
                    plog.append(rows, skipped)
                    tally.add(rows, skipped, outputs)
                    advance(len(keys), skipped=tally.n_skip)
    finally:
        if started:
            ray.shutdown()
    return tally.finish(
        src,
        plog,
        done_before,
        time.perf_counter() - t0,
        t_ready - t0,  # cluster start + one engine opened where the actors run
        engine=choice.engine,
        precision=choice.precision,
        auto=path.auto_reason,
        ray=asdict(ray_cfg),
    )


def _stream(todo: list[tuple[str, str]], args: tuple, batch: int, cfg: RayConfig, resources: dict):
    """Result batches (numpy dicts) of the actor pool over `todo`, in completion order."""
    import ray

    if not todo:
        return
    ray.data.DataContext.get_current().enable_progress_bars = False
    items = [{"file": os.fsencode(p), "key": os.fsencode(k)} for p, k in todo]
    blocks = max(1, min(len(items), cfg.actors * cfg.blocks_per_actor, math.ceil(len(items) / batch)))
    ds = ray.data.from_items(items, override_num_blocks=blocks)
    res = ds.map_batches(
        Predictor,
        fn_constructor_args=args,
        compute=ray.data.ActorPoolStrategy(size=cfg.actors),
        batch_size=batch,
        batch_format="numpy",
        **resources,
    )
    yield from res.iter_batches(batch_size=None, batch_format="numpy")

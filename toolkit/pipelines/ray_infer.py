"""Distributed batch inference on Ray Data: `toolkit infer SOURCE --artifact A --ray local|auto|ray://HOST:PORT`.

The transport of the one runner loop (toolkit/runner.py) for a Ray cluster. The driver streams the source through
the output's done index (toolkit/row_log.py) and writes what is left, chunk by chunk, as Parquet parts in the
output's work directory; Ray Data reads them with its own reader (`read_parquet`), so the driver never holds the
list. An actor pool (one `PredictionPath`, i.e. one engine, per actor, opened once) reads, decodes and predicts
(toolkit/predict.py, as everywhere) and writes each batch's results as a Parquet file beside them; their names
stream back to the driver, which reads and commits the rows and removes the file (rows never pass through Ray's
object store to the driver, so its memory does not grow with the number of inputs).
- A killed actor is restarted by Ray and its in-flight batch retried (Ray Data's actor pool), so nothing is lost
  or doubled. Every actor is pinned to the artifacts the run started with (their manifest seals): an actor started
  after `toolkit threshold` or a re-export refuses to predict, so no row is written under another threshold.
- Paths and keys travel as bytes (`os.fsencode`), so any file name the OS can hold survives Arrow's UTF-8 strings.
- The driver starts a local cluster for `--ray local` and shuts it down at the end. If the driver is SIGKILLed,
  Ray's own agents of that local cluster (about 200 MB) linger for a few minutes: `ray stop --force` ends them.
"""

from __future__ import annotations

import math
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from toolkit.data.images import Skipped
from toolkit.pipelines.infer import InferConfig
from toolkit.row_log import Todo
from toolkit.runner import Result, check_out, open_output, run_loop, warn_if_empty


@dataclass
class RayConfig:
    address: str = "local"  # local (a cluster here) | auto (RAY_ADDRESS / `ray start`) | HOST:PORT | ray://HOST:PORT
    actors: int = 2  # actor pool size: one engine per actor
    cpus_per_actor: float = 1.0
    gpus_per_actor: float = 0.0
    threads_per_actor: int | None = None  # engine threads; None: max(1, cpus_per_actor) so actors do not oversubscribe
    blocks_per_actor: int = 8  # input blocks per actor: smaller blocks stream sooner, more blocks cost scheduling
    object_store_mb: int = 512  # local clusters only
    rows_per_part: int = 65536  # what is left to do, written for Ray Data to read


class Predictor:
    """Runs inside a Ray actor: one prediction path, opened once, pinned to the run's artifacts."""

    def __init__(self, detector: str | None, purifier: str | None, choice: dict, pins: dict | None = None):
        from toolkit.predict import EngineChoice, PredictionPath

        self.path = PredictionPath(detector, purifier, EngineChoice(**choice), pins=pins).__enter__()

    def __call__(self, batch: dict) -> dict:
        from toolkit.data.loader import load_items

        keys = [os.fsdecode(bytes(k)) for k in batch["key"]]
        files = [os.fsdecode(bytes(f)) for f in batch["file"]]
        b = load_items(list(zip(keys, files, strict=True)), self.path.preprocess)
        out = self.path.predict(b)
        ok = {k: i for i, k in enumerate(b.paths)}
        reason = {s.path: s.reason for s in b.skipped}
        idx = np.array([ok.get(k, -1) for k in keys])
        take = np.maximum(idx, 0)

        def col(name: str, dtype) -> np.ndarray:
            if not b.paths:
                return np.zeros(len(keys), dtype)
            return np.where(idx >= 0, out[name][take], 0).astype(dtype)

        return {
            "key": batch["key"],
            "chunk": batch["chunk"],
            "logit": col("logit", np.float32),
            "p_generated": col("p_generated", np.float32),
            "is_generated": col("is_generated", bool),
            "error": np.array([reason.get(k, "") for k in keys], dtype=object),
        }


def _preflight(detector: str | None, purifier: str | None, choice: dict, pins: dict) -> str | None:
    """Open the prediction path once where the actors will run: a bad engine or artifact is one clear error
    before any output is touched (and before an actor pool would retry it forever)."""
    try:
        Predictor(detector, purifier, choice, pins).path.__exit__(None, None, None)
    except Exception as e:
        return f"{type(e).__name__}: {e}"
    return None


class ResultFiles:
    """Runs inside a Ray actor around the predictor (Predictor, or a benchmark's stand-in): writes each batch's
    results as a Parquet file in the run's results directory and hands back only its name. Result rows then never
    pass through the object store to the driver, which maps every store page it reads into its own RSS: with the
    rows themselves coming back, the driver's shared pages grew with N (5 / 49 / 366 MB at 10^5 / 10^6 / 10^7
    inputs; measured, its own memory stayed flat). A retried batch writes a new file; only returned names are read."""

    def __init__(self, predictor, args: tuple, results: str):
        self.predict, self.results = predictor(*args), results

    def __call__(self, batch: dict) -> dict:
        import uuid

        import pyarrow as pa
        import pyarrow.parquet as pq

        out = self.predict(batch)
        table = pa.table(
            {
                "key": pa.array(list(out["key"]), pa.binary()),
                "chunk": pa.array(out["chunk"], pa.int64()),
                "logit": pa.array(out["logit"], pa.float32()),
                "p_generated": pa.array(out["p_generated"], pa.float32()),
                "is_generated": pa.array(out["is_generated"], pa.bool_()),
                "error": pa.array(list(out["error"]), pa.string()),
            }
        )
        name = os.path.join(self.results, f"{uuid.uuid4().hex}.parquet")
        pq.write_table(table, name + ".partial")
        os.replace(name + ".partial", name)  # a name handed back is a whole file
        return {"results": np.array([name], dtype=object)}


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


RESULT_SLICE = 8192  # rows of a result file (one batch) turned into Python objects at a time: bounded for any --batch


def _result(table) -> Result:
    """One slice of a result file's table (Predictor's columns, written by ResultFiles) -> the runner loop's Result."""
    keys = [os.fsdecode(k) for k in table.column("key").to_pylist()]
    errors = table.column("error").to_pylist()
    chunk = table.column("chunk").to_pylist()
    ok = np.array([not e for e in errors], bool)
    outputs = {k: table.column(k).to_numpy()[ok] for k in ("logit", "p_generated", "is_generated")}
    good = [k for k, g in zip(keys, ok, strict=True) if g]
    skipped = [Skipped(k, e) for k, e in zip(keys, errors, strict=True) if e]
    chunks = [c for c, g in zip(chunk, ok, strict=True) if g] + [c for c, g in zip(chunk, ok, strict=True) if not g]
    return Result(good, outputs, skipped, chunks)


class RayTransport:
    """What is left, written as Parquet parts, read by Ray Data into an actor pool; results in completion order."""

    def __init__(self, work: Path, args: tuple, batch: int, cfg: RayConfig, resources: dict, predictor=None,
                 expected: int | None = None):  # fmt: skip
        """`predictor`: the actor class (Predictor; benchmarks/scale_sim.py passes a stand-in). `expected`: about
        how many inputs are left; the parts are sized so that every actor gets `blocks_per_actor` of them (Ray Data
        reads one part as one block, and a block goes to one actor: one part would keep the others idle)."""
        self.work, self.args, self.batch, self.cfg, self.resources = work, args, batch, cfg, resources
        self.predictor = predictor or Predictor
        blocks = cfg.actors * cfg.blocks_per_actor
        self.rows_per_part = cfg.rows_per_part if not expected else max(
            batch, min(cfg.rows_per_part, math.ceil(expected / blocks)))  # fmt: skip
        self.timing: dict[str, float] = {}

    def _write_todo(self, chunks: Iterator[list[Todo]]) -> int:
        """What is left, as Parquet parts of `rows_per_part` rows, written a source chunk (one row group) at a time,
        so the driver holds one chunk, not one part (a part of 262,144 rows held as Todo objects: about 40 MB)."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        shutil.rmtree(self.work, ignore_errors=True)  # what a killed driver left
        (self.work / "todo").mkdir(parents=True)
        (self.work / "results").mkdir()
        schema = pa.schema([("file", pa.binary()), ("key", pa.binary()), ("chunk", pa.int64())])
        n, part, in_part, writer = 0, 0, 0, None
        try:
            for chunk in chunks:
                while chunk:
                    if writer is None:
                        writer = pq.ParquetWriter(self.work / "todo" / f"{part:06d}.parquet", schema)
                    take, chunk = chunk[: self.rows_per_part - in_part], chunk[self.rows_per_part - in_part :]
                    writer.write_table(pa.table({"file": [os.fsencode(t.path) for t in take],
                                                 "key": [os.fsencode(t.key) for t in take],
                                                 "chunk": [t.chunk for t in take]}, schema=schema))  # fmt: skip
                    n, in_part = n + len(take), in_part + len(take)
                    if in_part == self.rows_per_part:
                        writer.close()
                        writer, part, in_part = None, part + 1, 0
        finally:
            if writer is not None:
                writer.close()
        return n

    def map(self, chunks: Iterator[list[Todo]]) -> Iterator[Result]:
        import pyarrow.parquet as pq
        import ray

        from toolkit.predict import ArtifactChanged

        t = time.perf_counter()
        n = self._write_todo(chunks)
        self.timing["todo_write_s"] = time.perf_counter() - t
        if not n:
            return
        ray.data.DataContext.get_current().enable_progress_bars = False
        # at least blocks_per_actor per actor, and no block past one part: a block is one actor task's work, so its
        # size bounds what a task holds and how long its results wait (16 blocks for 10^7 inputs: 625,000 rows each)
        blocks = max(1, min(n, self.cfg.actors * self.cfg.blocks_per_actor, math.ceil(n / self.batch)),
                     math.ceil(n / self.rows_per_part))  # fmt: skip
        # read before the actor pool exists: its actors may take every CPU of a small cluster, and Ray Data's
        # file-listing and read tasks then wait for a slot forever (measured: 2 actors x 1 CPU on 2 cores never
        # started). The read blocks live in Ray's object store (spilled to disk past its size), not the driver.
        # repartitioned so that every actor gets blocks (a small read comes back as one block, i.e. one actor)
        ds = (
            ray.data.read_parquet(str(self.work / "todo"), override_num_blocks=blocks).repartition(blocks).materialize()
        )
        res = ds.map_batches(
            ResultFiles,
            fn_constructor_args=(self.predictor, self.args, str(self.work / "results")),
            compute=ray.data.ActorPoolStrategy(size=self.cfg.actors),
            batch_size=self.batch,
            batch_format="numpy",
            **self.resources,
        )
        try:
            # the names of result files (ResultFiles), in completion order; each file is turned into rows a slice at
            # a time (turning a whole block of N / 16 rows into Python objects at once made the driver's own memory
            # grow with N: 1.1 GB at 3.1 M of 10^7 rows) and removed once its rows are handed on
            for block in res.iter_batches(batch_size=None, batch_format="pyarrow"):
                for name in block.column("results").to_pylist():
                    table = pq.read_table(name)
                    for start in range(0, table.num_rows, RESULT_SLICE):
                        yield _result(table.slice(start, RESULT_SLICE))
                    os.unlink(name)
        except Exception as e:  # an actor that refused a changed artifact surfaces as a task error: one line
            if "ArtifactChanged" in f"{type(e).__name__}: {e}":
                first = next((ln for ln in str(e).splitlines() if "changed since this run started" in ln), str(e))
                raise ArtifactChanged(first.split("ArtifactChanged: ")[-1].strip()) from None
            raise
        shutil.rmtree(self.work, ignore_errors=True)


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

    from toolkit.predict import EngineChoice, PredictionPath
    from toolkit.sources import open_source

    cfg, ray_cfg, warn = cfg or InferConfig(), ray_cfg or RayConfig(), warn or log
    if ray_cfg.actors < 1 or ray_cfg.cpus_per_actor < 0 or ray_cfg.gpus_per_actor < 0:
        raise ValueError("need --actors >= 1 and non-negative --cpus-per-actor / --gpus-per-actor")
    threads = ray_cfg.threads_per_actor or max(1, int(ray_cfg.cpus_per_actor))
    choice = EngineChoice(cfg.engine, cfg.precision, cfg.provider, threads)
    check_out(out)  # a bad --out is refused here, before the cluster starts
    path = PredictionPath(artifact, cfg.purify, choice, cfg.batch)  # verifies artifacts and kinds (no engine yet)
    if path.auto_reason:
        log(f"--engine auto: {path.auto_reason}")
    choice = path.choice  # auto resolved here, once, so every actor runs the same engine
    args = (str(path.detector.dir), str(path.purifier.dir) if path.purifier else None, asdict(choice), path.pins())
    src = open_source(source)
    warn_if_empty(src, source, warn)
    plog = open_output(out, path.identity(), src.root, cfg.overwrite)  # touches nothing until entered
    t0 = time.perf_counter()
    started = connect(ray_cfg, log)
    try:
        resources = {"num_cpus": ray_cfg.cpus_per_actor, "num_gpus": ray_cfg.gpus_per_actor}
        problem = ray.get(ray.remote(_preflight).options(**resources).remote(*args))
        if problem:
            raise RuntimeError(f"the prediction path does not open on the cluster: {problem}")
        t_ready = time.perf_counter()
        transport = RayTransport(plog.paths.work, args, cfg.batch, ray_cfg, resources, expected=len(src))
        tally, done_before = run_loop(src, plog, transport, "infer (ray)", progress, log)
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
        ray={**asdict(ray_cfg), **transport.timing},
    )

"""`toolkit bench`: parity and latency of every engine x precision of an artifact against PyTorch fp32.

Targets are (engine, precision) pairs; `torch/fp32` is always run, as the reference of every ratio
and parity figure. A target that cannot run here (no TensorRT, no CUDA provider) is reported with
its reason instead of stopping the run.

Latency (trtexec's conventions):
- engine-only: the input array is ready before the clock starts; each iteration is `infer` +
  `synchronize()`, so GPU clocks are read after synchronising. For CUDA engines `infer` takes numpy
  and returns numpy, so host->device and device->host copies ARE included (the report says so);
- end-to-end: files -> decode + preprocess (in `workers` processes, as `toolkit infer` does) ->
  engine, timed over a folder of images; throughput only, since decoding is pipelined.
Warm-up iterations are run and discarded; then a fixed count or a fixed duration.

Sized by the model (`size_run`): the reference's cost of one batch is measured first, and what the user left
unset (parity images, warm-up, iterations, end-to-end images) is chosen so the whole run fits `budget_s`; the
plan and its estimate are printed before the work starts, with what to pass to shorten it when even the
smallest sensible run does not fit. At the defaults a ViT-L/14 run on 2 cores was 35 minutes (issue 25).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

REFERENCE = ("torch", "fp32")


@dataclass
class BenchConfig:
    engines: tuple[str, ...] = ("torch", "onnxruntime")
    precisions: tuple[str, ...] | None = None  # None: every precision the artifact holds
    provider: str = "cpu"  # onnxruntime execution provider
    batches: tuple[int, ...] = (1, 8)
    warmup: int | None = None  # None: sized by the budget (at most 5)
    iterations: int | None = None  # None: sized by the budget (5 to 30)
    duration_s: float | None = None  # if set: iterate for this long per (target, batch) instead of a count
    parity_images: str | None = None  # labelled (0_real/1_fake) or plain folder; None: seeded noise
    parity_n: int | None = None  # None: sized by the budget (32 to 256)
    e2e_images: str | None = None  # folder for end-to-end throughput; None: skipped
    e2e_n: int | None = None  # None: sized by the budget (16 to 256)
    workers: int = 2
    build_plans: bool = False  # trt: build a missing/stale plan instead of reporting it
    no_reference: bool = False  # run without the PyTorch reference (parity against onnxruntime fp32 instead)
    budget_s: float = 600.0  # what the unset sizes are chosen to fit
    seed: int = 0
    notes: list[str] = field(default_factory=list)


PARITY_N, E2E_N, ITERATIONS, WARMUP = (32, 256), (16, 256), (5, 30), 5  # (least, most) when sized
PARITY_SHARE, E2E_SHARE = 0.4, 0.2  # of the budget, when unset; latency gets the rest


@dataclass(frozen=True)
class Sizing:
    """What a bench run will do, and about how long it takes: from the reference's measured cost per image."""

    per_image_s: float
    targets: int
    parity_n: int
    e2e_n: int
    warmup: dict[int, int]
    iterations: dict[int, int]
    estimate_s: float
    budget_s: float

    def line(self) -> str:
        lat = ", ".join(f"{self.warmup[b]}+{self.iterations[b]} at batch {b}" for b in self.iterations)
        head = (f"bench plan: {self.targets} target(s), parity on {self.parity_n} images, latency {lat} "
                f"(warm-up+timed)" + (f", end-to-end on {self.e2e_n} images" if self.e2e_n else "")
                + f": about {_minutes(self.estimate_s)} at {self.per_image_s * 1e3:.0f} ms per image")  # fmt: skip
        if self.estimate_s <= self.budget_s * 1.1:
            return head
        return (f"{head}, over the {_minutes(self.budget_s)} budget. To shorten it: fewer targets (--engine, "
                "--precision), fewer batches (--batch 1), --parity-n 32 --iterations 5; "
                "--max-minutes to accept it")  # fmt: skip


def size_run(cfg: BenchConfig, targets: int, per_image_s: float) -> Sizing:
    """Choose what `cfg` leaves unset so `targets` targets fit cfg.budget_s at `per_image_s` each; what the user
    set is kept, and counted. The estimate charges every target the reference's cost (onnxruntime fp16 on a CPU
    can be slower, int8 faster)."""
    c, budget, batches = max(per_image_s, 1e-6), cfg.budget_s, tuple(cfg.batches)

    def fit(value, share, bounds):
        return value if value is not None else _clamp(int(share * budget / (targets * c)), *bounds)

    parity_n = fit(cfg.parity_n, PARITY_SHARE, PARITY_N)
    e2e_n = fit(cfg.e2e_n, E2E_SHARE, E2E_N) if cfg.e2e_images else 0
    spent = targets * c * (parity_n + e2e_n * len(batches))
    # every point gets its least (1 warm-up + 5 timed) first, then an equal share of what is left of the budget
    least = ITERATIONS[0] + 1
    extra = max(budget - spent - targets * least * c * sum(batches), 0) / (targets * len(batches))
    warmup, iterations, latency = {}, {}, 0.0
    for b in batches:
        calls = least + extra / (b * c)
        it = cfg.iterations if cfg.iterations is not None else _clamp(int(calls / 1.2), *ITERATIONS)
        w = cfg.warmup if cfg.warmup is not None else _clamp(it // 5, 1, WARMUP)  # warm-up ~ a fifth of the timed
        warmup[b], iterations[b] = w, it
        timed = cfg.duration_s if cfg.duration_s else it * b * c
        latency += targets * (w * b * c + timed)
    return Sizing(per_image_s, targets, parity_n, e2e_n, warmup, iterations, spent + latency, budget)


def _clamp(v: int, lo: int, hi: int) -> int:
    return max(lo, min(hi, v))


def _minutes(s: float) -> str:
    return f"{s:.0f} s" if s < 90 else f"{s / 60:.1f} min"


def probe(engine, input_name: str, size: int, batch: int) -> float:
    """Seconds per image of `engine` at `batch`: one warm-up call, then one timed."""
    x = np.random.default_rng(0).standard_normal((batch, 3, size, size), np.float32)
    with engine:
        engine.infer({input_name: x})
        engine.synchronize()
        t = time.perf_counter()
        engine.infer({input_name: x})
        engine.synchronize()
        return (time.perf_counter() - t) / batch


def time_engine(
    engine, feed: dict, warmup: int, iterations: int, duration_s: float | None = None, min_iterations: int = 5
) -> dict:
    """Per-iteration wall time of infer + synchronize; -> p50/p90/p99/mean (ms) and throughput (images/s).

    `iterations` calls, or with `duration_s` calls for that long and at least `min_iterations` of them."""
    for _ in range(warmup):
        engine.infer(feed)
    engine.synchronize()
    times = []
    end = time.perf_counter() + duration_s if duration_s else None
    while (len(times) < iterations) if end is None else (time.perf_counter() < end or len(times) < min_iterations):
        t = time.perf_counter()
        engine.infer(feed)
        engine.synchronize()
        times.append(time.perf_counter() - t)
    ms = np.array(times) * 1e3
    b = next(iter(feed.values())).shape[0]
    return {
        "p50_ms": float(np.percentile(ms, 50)),
        "p90_ms": float(np.percentile(ms, 90)),
        "p99_ms": float(np.percentile(ms, 99)),
        "mean_ms": float(ms.mean()),
        "throughput_ips": float(b / ms.mean() * 1e3),
        "iterations": len(times),
    }


def targets(art, cfg: BenchConfig) -> list[tuple[str, str]]:
    precisions = cfg.precisions or tuple(art.precisions)
    missing = [p for p in precisions if p not in art.precisions]
    if missing:
        raise ValueError(f"the artifact has no {missing} variant (it has {sorted(art.precisions)})")
    ref = reference_target(cfg)
    out = [ref]
    for e in cfg.engines:
        if e in ("torch", "auto"):
            continue  # torch: the reference, fp32 only; auto: resolved per batch in run_bench
        runs_on = {p: art.precisions[p].get("engines") for p in precisions}  # bf16: openvino only
        out += [(e, p) for p in precisions if (e, p) != ref and (not runs_on[p] or e in runs_on[p])]
    return out


def reference_target(cfg: BenchConfig) -> tuple[str, str]:
    return ("onnxruntime", "fp32") if cfg.no_reference else REFERENCE


def _parity_inputs(art, cfg: BenchConfig, n: int) -> tuple[np.ndarray, np.ndarray | None, str]:
    """-> (inputs, labels or None, description). Noise is uniform pixels through the artifact's normalisation,
    so it lies in every kind's input domain."""
    from toolkit.data.loader import discover_images, load_batch, load_labelled, sample_labelled

    pre = art.preprocess
    size = pre["size"]
    if not cfg.parity_images:
        from toolkit.preprocess import noise_images

        return noise_images(pre, n, cfg.seed), None, f"{n} seeded noise images"
    root = Path(cfg.parity_images)
    try:
        paths, labels = sample_labelled(root, n, cfg.seed)
    except ValueError:  # not a labelled layout: parity only
        paths, labels = discover_images(root)[0][:n], None
    if labels is None:
        x = load_batch([str(p) for p in paths], pre).array
    else:  # one batch, decoded here, as the parity inputs always were
        arrays, labels = load_labelled(paths, labels, pre, batch_size=max(1, len(paths)))
        x = np.concatenate(arrays) if arrays else np.zeros((0, 3, size, size), np.float32)
    if len(x) < 2:
        raise ValueError(f"{root}: fewer than 2 readable images for the parity check")
    kind = "labelled" if labels is not None else "unlabelled"
    return x, labels, f"{len(x)} {kind} images from {root}"


def _open(art, engine: str, precision: str, cfg: BenchConfig):
    from toolkit.engines import open_engine

    if engine == "trt" and cfg.build_plans:
        from toolkit.engines.trt_engine import PlanError, find_plan, machine, unavailable_reason

        if unavailable_reason() is None:
            try:
                find_plan(art, precision, machine())
            except PlanError:
                raise _NeedPlans from None
    return open_engine(art, engine, precision, cfg.provider)


class _NeedPlans(Exception):
    pass


def run_bench(artifact: str | Path, cfg: BenchConfig | None = None, log=print, plan_builder=None) -> dict:
    """-> the report dict (environment, targets, parity, latency, end-to-end, notes)."""
    from benchmarks.environment import environment
    from toolkit import kinds
    from toolkit.artifact import Artifact
    from toolkit.compare import Comparator

    cfg = cfg or BenchConfig()
    art = Artifact.open(artifact)
    kind = kinds.for_artifact(art)
    if not cfg.no_reference:
        art.reference_run(kind.weights_file)  # a missing reference fails here, loudly, not as an empty parity table
    detects = kind.capabilities.detects
    size = art.preprocess["size"]
    ref_target = reference_target(cfg)
    report = {
        "reference_target": _name(*ref_target, cfg),
        "artifact": str(art.dir),
        "model": art.model_name,
        "kind": art.kind,
        "detects": detects,
        "parity_columns": [list(c) for c in kind.parity_columns],
        "reference": "/".join(ref_target),
        "environment": environment(),
        "config": asdict(cfg),
        "targets": {},
    }
    todo = targets(art, cfg)
    if "auto" in cfg.engines:  # the choice --engine auto makes at each batch, timed like any other target
        from toolkit.tuning import resolve

        report["auto"] = {}
        for b in cfg.batches:
            (engine, precision, _), why = resolve(art, b)
            report["auto"][str(b)] = {"engine": engine, "precision": precision, "why": why}
            log(f"--engine auto at batch {b}: {why}")
            if (engine, precision) not in todo:
                todo.append((engine, precision))
    ref = _open(art, *ref_target, cfg)  # the reference must run: its failure is the run's
    sizing = size_run(cfg, len(todo), probe(ref, kind.input_name, size, min(max(cfg.batches), 8)))
    log(sizing.line())
    report["sizing"] = asdict(sizing)
    x, labels, parity_desc = _parity_inputs(art, cfg, sizing.parity_n)
    report["parity_inputs"] = parity_desc
    e2e_paths = []
    if cfg.e2e_images:
        from toolkit.data.loader import discover_images

        e2e_paths = discover_images(cfg.e2e_images)[0][: sizing.e2e_n]
    chunk = max(cfg.batches)
    comparator = Comparator(kind, [x[i : i + chunk] for i in range(0, len(x), chunk)], art.threshold, labels)
    for engine_kind, precision in todo:
        name = _name(engine_kind, precision, cfg)
        log(f"{name}: parity on {parity_desc}, latency at batch {list(cfg.batches)} ...")
        try:
            try:
                eng = ref if (engine_kind, precision) == ref_target else _open(art, engine_kind, precision, cfg)
            except _NeedPlans:
                if plan_builder is None:
                    raise
                plan_builder(art.dir, (min(cfg.batches), max(cfg.batches), max(cfg.batches)), precision)
                eng = _open(art, engine_kind, precision, cfg)
        except (RuntimeError, ValueError, FileNotFoundError) as e:
            if (engine_kind, precision) == ref_target:
                raise
            report["targets"][name] = {
                "engine": engine_kind,
                "precision": precision,
                "status": "skipped",
                "reason": str(e),
            }
            log(f"{name}: skipped: {e}")
            continue
        entry = {"engine": engine_kind, "precision": precision, "status": "ok", "latency": {}}
        with eng:
            got = comparator.outputs(eng)
            if (engine_kind, precision) == ref_target:
                comparator.reference = got
            # each precision decides at the operating point its artifact sealed (the one every runner uses)
            stats = dict(comparator.compare(got, got_threshold=art.threshold_for(precision))["stats"])
            if "metrics" in stats:
                entry["accuracy"] = stats.pop("metrics")
                stats.pop("reference_metrics")
            entry["parity"] = stats
            for b in cfg.batches:
                u = np.random.default_rng(cfg.seed).standard_normal((b, 3, size, size), np.float32)
                entry["latency"][str(b)] = time_engine(
                    eng, {kind.input_name: u}, sizing.warmup[b], sizing.iterations[b], cfg.duration_s
                )
        if e2e_paths:
            entry["e2e"] = {str(b): _e2e(art, kind, engine_kind, precision, cfg, e2e_paths, b) for b in cfg.batches}
        report["targets"][name] = entry
    _ratios(report)
    on_gpu = [
        n
        for n, t in report["targets"].items()
        if t["status"] == "ok" and (t["engine"] == "trt" or (t["engine"] == "onnxruntime" and cfg.provider != "cpu"))
    ]
    report["copies_included"] = on_gpu  # engines whose timings include host<->device copies
    return report


def _name(engine: str, precision: str, cfg: BenchConfig) -> str:
    return f"{engine}/{precision}" + (f"/{cfg.provider}" if engine == "onnxruntime" else "")


def _e2e(art, kind, engine: str, precision: str, cfg: BenchConfig, paths: list[Path], batch: int) -> dict:
    """Files -> predictions through the prediction path and loader of `toolkit infer`; throughput over the folder."""
    from toolkit.data.loader import batches
    from toolkit.predict import EngineChoice, PredictionPath

    choice = EngineChoice(engine, precision, cfg.provider)
    kw = {"detector": art} if kind.capabilities.detects else {"purifier": art}
    with PredictionPath(choice=choice, **kw) as path:
        n = 0
        t = time.perf_counter()
        for b in batches(paths, path.preprocess, batch, cfg.workers):
            path.predict(b)
            n += len(b.paths)
        path.synchronize()
        wall = time.perf_counter() - t
    return {"images": n, "wall_s": wall, "throughput_ips": n / wall, "workers": cfg.workers}


def _ratios(report: dict) -> None:
    """Speed-up against the reference per batch (p50), e2e/engine-only throughput, accuracy deltas vs it."""
    ref = report["targets"].get(report["reference_target"])
    for t in report["targets"].values():
        if t["status"] != "ok":
            continue
        for b, lat in t["latency"].items():
            if ref and ref["status"] == "ok":
                lat["speedup_vs_reference_p50"] = ref["latency"][b]["p50_ms"] / lat["p50_ms"]
            if "e2e" in t:
                t["e2e"][b]["fraction_of_engine_only"] = t["e2e"][b]["throughput_ips"] / lat["throughput_ips"]
        if "accuracy" in t and ref and "accuracy" in ref:
            t["accuracy_delta"] = {
                k: (t["accuracy"][k] - ref["accuracy"][k]) if t["accuracy"][k] is not None else None
                for k in ("auc", "ap", "acc")
                if k in t["accuracy"]
            }

"""The GPU suite: one command on a lent GPU machine that always returns results inside its time budget.

On the device machine (Python 3.12, its own torch with CUDA; open_clip and diffusers carried as wheels, `make
gpu-wheels`; README "GPU"):
  python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
  PYTHONUNBUFFERED=1 python3 -m benchmarks.gpu_suite --out $OUT --budget-s 360
Stages run cheapest and most informative first, each guarded (an error is recorded, the next stage runs):
1. per model (random-weight ViT-L/14, then ViT-B/16 detectors): build it and its CPU fp32 reference on seeded
   inputs; torch fp16 and bf16 eager, then the same replayed from CUDA graphs, at batch 1/8/32/128, each with
   its parity gate against the CPU reference (fp16 / bf16: feature cosine >= 0.999, decisions >= 99.5% equal);
2. the one-step purifier UNet at 224 px (fp16, fp32), ms per image;
3. torch fp32 (TF32 off; gate: max |logit diff| <= 1e-4 and equal decisions) for each model;
4. end to end: JPEG bytes -> torchvision GPU decode or PIL -> model;
5. the product path, when onnxruntime-gpu or TensorRT is here: a ViT-B/16 head trained on toy images, `toolkit
   export` with its gates (+ TensorRT plans), then onnxruntime (TensorRT provider, then CUDA) and the trt engine
   on every precision, gated against the PyTorch reference; absent runtimes are recorded as skipped with why;
6. torch.compile (opt-in, `--compile`: one precision, dynamic shapes), last because it costs minutes.
Timing: warm-up, then as many calls as fit `--point-s` seconds per batch (CUDA events, synchronised; host
copies not included). A stage starts only when its estimate fits the budget left; a watchdog ends the process
at the budget plus a grace period, recording the stage it cut. gpu_suite.json / .md are rewritten after every
stage and everything printed goes to gpu_suite.log too, so a run killed at any point leaves what it finished.
`--plan` prints the stage list with its time estimates on the GPU and runs nothing heavy.
`--device cpu` runs the same stages on tiny presets (the CI smoke run).
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from benchmarks.environment import cpu_line, environment
from benchmarks.report import command_line
from toolkit.io import write_json, write_text

RESULTS = Path(__file__).parent / "results"
GPU_CORES = 16  # the lent machine's CPU cores (the CPU reference runs there, on the CPU)
# Throughput assumed for the estimates on an H200: 788 TFLOP/s was measured there for a bf16 8192^3 matmul
# (the notes of the workplace that lends it); a ViT reaches a fraction of it. fp32 without TF32 runs on the
# CUDA cores (67 TFLOP/s).
GPU_FLOPS = {"fp16": 788e12 * 0.3, "bf16": 788e12 * 0.3, "fp32": 67e12 * 0.5}
LAUNCH_S = {"eager": 3e-3, "graph": 0.4e-3}  # per call at small batch: kernel launches of a 24-layer ViT


@dataclass
class Stage:
    name: str
    run: Callable[[float], dict]  # deadline (monotonic seconds) -> result
    estimate: Callable[[], float]  # seconds on the target device, computed when the stage is about to start
    needs: Callable[[], str | None] = lambda: None  # -> why it cannot run here (skipped), or None


class Suite:
    """Runs stages inside a budget, recording each as done, skipped (with the reason), failed or cut."""

    def __init__(self, out: Path, budget_s: float, record: dict, log: Callable[[str], None], grace_s: float):
        self.out, self.budget_s, self.r, self.log, self.grace_s = out, budget_s, record, log, grace_s
        self.t0 = time.monotonic()
        self.deadline = self.t0 + budget_s
        self.lock = threading.RLock()
        self.r.update(budget_s=budget_s, stages=[], models={})
        self.current: dict | None = None
        self.finished = threading.Event()  # set when the run ends normally: the watchdog stands down

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def save(self) -> None:
        with self.lock:
            self.r["elapsed_s"] = round(time.monotonic() - self.t0, 2)
            write_json(self.out / "gpu_suite.json", self.r)
            write_text(self.out / "gpu_suite.md", markdown(self.r))

    def run(self, stage: Stage) -> None:
        entry = {"name": stage.name, "status": "running"}
        with self.lock:
            self.r["stages"].append(entry)
        reason = stage.needs()
        if reason is None:
            try:
                est = float(stage.estimate())
            except Exception as e:  # an estimate that needs an earlier stage's result that failed
                est, reason = 0.0, f"not estimable: {type(e).__name__}: {e}"
            entry["estimate_s"] = round(est, 1)
            if reason is None and est > self.left():
                reason = f"budget: about {est:.0f} s needed, {max(self.left(), 0):.0f} s left"
        if reason is not None:
            entry.update(status="skipped", reason=reason)
            self.log(f"[{stage.name}] skipped: {reason}")
            self.save()
            return
        self.log(f"[{stage.name}] start (estimate {entry['estimate_s']:.0f} s, {self.left():.0f} s left)")
        t = time.monotonic()
        stage_deadline = min(self.deadline, t + max(3 * entry["estimate_s"], 20.0))
        self.current = entry
        self.save()
        try:
            entry["result"] = stage.run(stage_deadline)
            entry["status"] = "done"
        except Exception as e:
            entry.update(status="failed", error=f"{type(e).__name__}: {e}"[:500])
        with self.lock:
            entry["seconds"] = round(time.monotonic() - t, 2)
            self.current = None
        self.log(f"[{stage.name}] {entry['status']} in {entry['seconds']:.1f} s" + _brief(entry))
        self.save()

    def start_watchdog(self) -> None:
        """At the budget + grace: record the stage it cuts, write the reports, end the process (exit 3)."""

        def watch() -> None:
            if self.finished.wait(max(0.0, self.deadline + self.grace_s - time.monotonic())):
                return
            with self.lock:
                if self.current is not None:
                    self.current.update(status="cut", reason=f"still running at the budget + {self.grace_s:.0f} s")
                self.r["cut_by_watchdog"] = True
                self.save()
            self.log(f"budget {self.budget_s:.0f} s + {self.grace_s:.0f} s grace reached: results so far are saved")
            os._exit(3)

        threading.Thread(target=watch, daemon=True, name="gpu-suite-watchdog").start()


def _brief(entry: dict) -> str:
    if entry["status"] == "failed":
        return f": {entry['error'][:200]}"
    res = entry.get("result") or {}
    if "parity" in res:
        return "; gate " + ("pass" if res["parity"]["passed"] else "FAIL " + "; ".join(res["parity"]["failures"]))
    return ""


# ---- timing ------------------------------------------------------------------------------------------------
def _sync(device: str) -> Callable[[], None]:
    import torch

    return torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)


def time_calls(fn: Callable[[], object], device: str, point_s: float, until: float, warmup: int = 2,
               min_iters: int = 3) -> dict | None:  # fmt: skip
    """Warm-up, then as many calls as fit `point_s` (at least `min_iters`, CUDA events on a GPU); None when even
    the warm-up does not fit before `until`."""
    import torch

    sync = _sync(device)
    t = time.perf_counter()
    fn()
    sync()
    one = time.perf_counter() - t
    if time.monotonic() + one * (warmup + min_iters) > until:
        return None
    for _ in range(warmup):
        fn()
    sync()
    iters = int(min(10_000, max(min_iters, point_s / max(one, 1e-6))))
    iters = max(min_iters, min(iters, int((until - time.monotonic()) / max(one, 1e-6)) - 1))
    if device.startswith("cuda"):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(iters):
            fn()
        end.record()
        end.synchronize()
        ms = start.elapsed_time(end) / iters
    else:
        t = time.perf_counter()
        for _ in range(iters):
            fn()
        ms = (time.perf_counter() - t) * 1e3 / iters
    return {"ms": ms, "iters": iters}


def sweep(call_at: Callable[[int], Callable[[], object]], batches: list[int], device: str, point_s: float,
          until: float) -> dict:  # fmt: skip
    """Time `call_at(b)` at each batch; batches that do not fit before `until` are listed as not timed."""
    out = {"ms_per_batch": {}, "throughput_ips": {}, "iters": {}, "not_timed": []}
    for b in batches:
        t = time_calls(call_at(b), device, point_s, until) if time.monotonic() < until else None
        if t is None:
            out["not_timed"].append(b)
            continue
        out["ms_per_batch"][str(b)] = t["ms"]
        out["throughput_ips"][str(b)] = b / t["ms"] * 1e3
        out["iters"][str(b)] = t["iters"]
    return out


# ---- models --------------------------------------------------------------------------------------------------
DTYPES = ("fp32", "fp16", "bf16")


def _torch_dtype(p: str):
    import torch

    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[p]


def build_detector(name: str, seed: int = 0):
    """A random-weight detector of the deployed shape: open_clip image tower -> normalise -> one Linear."""
    import torch

    from toolkit.models.backbone import BackboneConfig, load_backbone
    from toolkit.models.detector import DeployedDetector

    backbone = load_backbone(BackboneConfig(name=name, seed=seed))
    torch.manual_seed(seed)
    head = torch.nn.Linear(backbone.feature_dim, 1)
    return DeployedDetector(backbone.visual, head).eval().requires_grad_(False), backbone.preprocess_cfg.size


def parity(ref: dict, got: dict, precision: str) -> dict:
    from toolkit.compare import Fp32Gate, PrecisionGate, check
    from toolkit.kinds.detector import parity_stats

    stats = parity_stats(ref, got, 0.0)  # noise inputs, no labels: the policy's labelled bounds are not measured
    ok, fails = check(stats, Fp32Gate() if precision == "fp32" else PrecisionGate(), unlabelled_ok=True)
    return {**stats, "passed": ok, "failures": fails}


def _graphed(m, x):
    """Capture one forward at x's shape; -> replay function returning the static outputs."""
    import torch

    static_x = x.clone()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            m(static_x)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out = m(static_x)

    def replay(inp):
        static_x.copy_(inp)
        graph.replay()
        return static_out

    return replay


class ModelBench:
    """One model's stages: build + CPU reference, then variants (precision x eager / CUDA graph / compiled)."""

    def __init__(self, name: str, cfg: argparse.Namespace, suite: Suite):
        self.name, self.cfg, self.suite = name, cfg, suite
        self.model = self.size = self.ref = self.x_ref = None
        self.facts: dict = {}
        self.rec = suite.r["models"].setdefault(name, {"model": name, "variants": {}})

    def build(self, deadline: float) -> dict:
        import torch
        from torch.utils.flop_counter import FlopCounterMode

        t = time.perf_counter()
        self.model, self.size = build_detector(self.name)
        build_s = time.perf_counter() - t
        n = self.cfg.parity_n
        self.x_ref = torch.from_numpy(np.random.default_rng(0).standard_normal((n, 3, self.size, self.size),
                                                                                 dtype=np.float32))  # fmt: skip
        t = time.perf_counter()
        with torch.inference_mode():
            self.ref = {k: v.numpy() for k, v in zip(("logit", "feature"), self.model(self.x_ref), strict=True)}
        ref_s = time.perf_counter() - t
        with torch.inference_mode(), FlopCounterMode(display=False) as fc:
            self.model(self.x_ref[:1])
        gflop = fc.get_total_flops() / 1e9
        self.facts = {"input_size": self.size, "build_s": build_s, "cpu_reference_s": ref_s,
                      "cpu_threads": torch.get_num_threads(), "gflop_per_image": gflop}  # fmt: skip
        self.rec.update(self.facts)
        return self.facts

    def build_estimate(self) -> float:
        """Before the build: a model's size class decides (measured on 2 cores: ViT-L/14 build 14 s,
        reference of 16 images 25 s; on the GPU machine's 16 cores the reference takes about an eighth)."""
        big = "L-14" in self.name or "H-14" in self.name
        return 40.0 if big else 15.0

    def variant(self, precision: str, mode: str) -> Stage:
        vname = {"eager": f"torch {precision}", "graph": f"cuda graph {precision}",
                 "compile": f"torch.compile {precision} (dynamic)"}[mode]  # fmt: skip
        device = self.cfg.device

        def needs() -> str | None:
            if self.model is None:
                return "the model's build stage did not finish"
            if mode == "graph" and not device.startswith("cuda"):
                return "CUDA graphs need a CUDA device"
            if precision == "fp16" and not device.startswith("cuda"):
                return "fp16 on a CPU is not a deployment target (bf16 is)"
            return None

        def estimate() -> float:
            return self.estimate_variant(precision, mode)

        def run(deadline: float) -> dict:
            import copy

            import torch

            torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32: its gate is 1e-4 on the logits
            torch.backends.cudnn.allow_tf32 = False
            dtype = _torch_dtype(precision)
            m = copy.deepcopy(self.model).to(device=device, dtype=dtype)
            if mode == "compile":
                m = torch.compile(m, dynamic=True)
            entry = {"precision": precision, "mode": mode}
            with torch.inference_mode():
                got = m(self.x_ref.to(device=device, dtype=dtype))
                entry["parity"] = parity(
                    self.ref,
                    {"logit": got[0].float().cpu().numpy(), "feature": got[1].float().cpu().numpy()},
                    precision,
                )

                def call_at(b: int):
                    x = torch.randn(b, 3, self.size, self.size, device=device, dtype=dtype)
                    f = _graphed(m, x) if mode == "graph" else m
                    return lambda: f(x)

                entry.update(sweep(call_at, self.cfg.batches, device, self.cfg.point_s, deadline))
            m = None  # the device copy is freed before the next variant
            if device.startswith("cuda"):
                torch.cuda.empty_cache()
            self.rec["variants"][vname] = entry
            return entry

        return Stage(f"{self.name}: {vname}", run, estimate, needs)

    def estimate_variant(self, precision: str, mode: str) -> float:
        """Seconds for one variant: copy to the device, parity, then per batch a first call, warm-up and the timed
        window (at least 3 calls). On a CPU smoke run the same sum uses the CPU time measured in the build."""
        cuda = self.cfg.device.startswith("cuda")
        flop = self.facts["gflop_per_image"] * 1e9
        if cuda:
            per_image = flop / GPU_FLOPS[precision]
            launch = LAUNCH_S["graph" if mode == "graph" else "eager"]
        else:
            per_image = self.facts["cpu_reference_s"] / self.cfg.parity_n * (4 if precision != "fp32" else 1)
            launch = 0.0
        total = 2.0 if cuda else 0.2  # the copy to the device
        total += self.cfg.parity_n * per_image
        for b in self.cfg.batches:
            call = launch + b * per_image
            total += (1 + 2) * call + max(self.cfg.point_s, 3 * call)
            if mode == "graph":
                total += 4 * call  # capture: three warm-ups and the captured call
        if mode == "compile":
            total += 90.0  # Inductor's first compile of a ViT, dynamic shapes, on 16 cores
        return total


# ---- the other stages ----------------------------------------------------------------------------------------
def purifier_stage(cfg: argparse.Namespace, suite: Suite) -> Stage:
    size, batch = (224, 32) if cfg.device.startswith("cuda") else (32, 2)

    def run(deadline: float) -> dict:
        import torch

        from toolkit.models.purifier import OneStepPurifier, PurifierConfig, make_unet

        net = OneStepPurifier(make_unet(PurifierConfig(sample_size=size))).eval().to(cfg.device)
        x = torch.rand(batch, 3, size, size, device=cfg.device)
        out = {}
        for p in ("fp16", "fp32") if cfg.device.startswith("cuda") else ("fp32",):
            with torch.inference_mode():
                m, xi = net.to(_torch_dtype(p)), x.to(_torch_dtype(p))
                t = time_calls(lambda m=m, xi=xi: m(xi), cfg.device, cfg.point_s, deadline)
            out[p] = {"not timed": "budget"} if t is None else {
                "ms_per_image": t["ms"] / batch, "batch": batch, "size": size, "iters": t["iters"]}  # fmt: skip
        suite.r["purifier"] = out
        return out

    # the base UNet at 224: about 0.4 TFLOP per image (diffusers' UNet2DModel, 4 levels); CPU smoke: tiny
    return Stage("purifier UNet one step", run, lambda: 10.0 if cfg.device.startswith("cuda") else 5.0)


def e2e_stage(bench: ModelBench, cfg: argparse.Namespace, suite: Suite) -> Stage:
    def run(deadline: float) -> dict:
        res = end_to_end(bench.model, bench.size, cfg.device, max(cfg.batches), n=cfg.e2e_n)
        bench.rec["e2e"] = res
        return res

    needs = lambda: None if bench.model is not None else "the model's build stage did not finish"  # noqa: E731
    return Stage(f"{bench.name}: end to end (JPEG bytes -> predictions)", run, lambda: 15.0, needs)


def end_to_end(model, size: int, device: str, batch: int, n: int = 64) -> dict:
    """JPEG bytes -> predictions: GPU decode (torchvision on CUDA) against PIL, both feeding the same model."""
    import torch
    from PIL import Image

    from toolkit.preprocess import PreprocessConfig, preprocess

    rng = np.random.default_rng(1)
    jpegs = []
    for _ in range(n):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (256, 256, 3), dtype=np.uint8)).save(buf, "JPEG", quality=90)
        jpegs.append(buf.getvalue())
    m = model.to(device).float()
    cfg = PreprocessConfig(size=size)
    sync = _sync(device)
    out = {"batch": batch, "images": n}
    t = time.perf_counter()
    with torch.inference_mode():
        for i in range(0, n, batch):
            x = np.stack([preprocess(Image.open(io.BytesIO(j)), cfg) for j in jpegs[i : i + batch]])
            m(torch.from_numpy(x).to(device))
    sync()
    out["pil_in_process_ips"] = n / (time.perf_counter() - t)
    try:
        from torchvision.io import decode_jpeg
        from torchvision.transforms.v2 import functional as F

        mean = torch.tensor(cfg.mean, device=device).view(1, 3, 1, 1)
        std = torch.tensor(cfg.std, device=device).view(1, 3, 1, 1)
        t = time.perf_counter()
        with torch.inference_mode():
            for i in range(0, n, batch):
                data = [torch.frombuffer(bytearray(j), dtype=torch.uint8) for j in jpegs[i : i + batch]]
                imgs = decode_jpeg(data, device=device)
                imgs = torch.stack([F.center_crop(F.resize(im, size, antialias=True), size) for im in imgs])
                m((imgs.float() / 255 - mean) / std)
        sync()
        out["torchvision_decode_ips"] = n / (time.perf_counter() - t)
    except Exception as e:
        out["torchvision_decode"] = f"not run: {type(e).__name__}: {e}"[:300]
    return out


class ProductPath:
    """`toolkit export` of a trained ViT head and the engines a user deploys: onnxruntime (TensorRT provider ahead
    of CUDA; the CPU provider in a smoke run) and the native trt engine, each gated against the PyTorch reference."""

    def __init__(self, name: str, cfg: argparse.Namespace, suite: Suite, work: Path):
        self.name, self.cfg, self.suite, self.work = name, cfg, suite, work
        self.art: Path | None = None
        self.cuda = cfg.device.startswith("cuda")

    def providers(self) -> list[str]:
        import onnxruntime as ort

        have = ort.get_available_providers()
        if not self.cuda:
            return ["cpu"]
        return [p for p, ep in (("tensorrt", "TensorrtExecutionProvider"), ("cuda", "CUDAExecutionProvider"))
                if ep in have]  # fmt: skip

    def trt_reason(self) -> str | None:
        from toolkit.engines.trt_engine import unavailable_reason

        return unavailable_reason()

    def export_stage(self) -> Stage:
        def needs() -> str | None:
            if not self.providers() and self.trt_reason():
                return (f"neither onnxruntime-gpu (providers here: {self._ort_providers()}) nor TensorRT "
                        f"({self.trt_reason()}) is installed")  # fmt: skip
            return None

        def run(deadline: float) -> dict:
            import subprocess

            from toolkit.models.backbone import BackboneConfig
            from toolkit.pipelines.detector import train_detector
            from toolkit.training.detector import TrainConfig

            data = toy_folder(self.work / "toy", 16)
            run_dir = self.work / "run"
            train_detector(data, run_dir, backbone_cfg=BackboneConfig(name=self.name),
                           train_cfg=TrainConfig(epochs=5), cache_dir=None, progress=False)  # fmt: skip
            cmd = [sys.executable, "-c", "from toolkit.cli import main; main()", "export", str(run_dir), "--out",
                   str(self.work / "artifact"), "--verify-images", str(data)]  # fmt: skip
            if self.trt_reason() is None:
                cmd += ["--trt", "--opt-batch", "8", "--max-batch", str(max(self.cfg.batches))]
            res = subprocess.run(cmd, capture_output=True, text=True, timeout=max(10.0, deadline - time.monotonic()))
            if res.returncode != 0:
                raise RuntimeError(f"toolkit export exited {res.returncode}: {res.stderr.strip()[-400:]}")
            self.art = self.work / "artifact"
            from toolkit.artifact import Artifact

            return {"artifact": str(self.art), "gates": Artifact.open(self.art).gates}

        # ViT-B/16 on 16 cores: features of 32 images, the dynamo export, fp16, gates on 32 images (about 90 s);
        # TensorRT plans for two precisions add about 2 minutes
        est = (lambda: 90.0 + (0.0 if self.trt_reason() else 120.0)) if self.cuda else (lambda: 25.0)
        return Stage(f"{self.name}: train a head + toolkit export (gated)", run, est, needs)

    def _ort_providers(self) -> str:
        import onnxruntime as ort

        return ", ".join(ort.get_available_providers())

    def engine_stage(self, engine: str, provider: str | None) -> Stage:
        label = f"onnxruntime {provider}" if engine == "onnxruntime" else "trt"

        def needs() -> str | None:
            if self.art is None:
                return "no artifact (the export stage did not finish)"
            if engine == "trt":
                return self.trt_reason()
            if provider not in self.providers():
                return f"onnxruntime has no {provider} provider here ({self._ort_providers()}); carry onnxruntime-gpu"
            return None

        def run(deadline: float) -> dict:
            from toolkit import kinds
            from toolkit.artifact import Artifact
            from toolkit.compare import Comparator
            from toolkit.engines import open_engine, reference_engine

            art = Artifact.open(self.art)
            kind = kinds.for_artifact(art)
            feeds = [np.random.default_rng(2).standard_normal((self.cfg.parity_n, *art.inputs[0].shape[1:]),
                                                              dtype=np.float32)]  # fmt: skip
            comp = Comparator(kind, feeds, art.threshold)
            with reference_engine(art) as ref:
                comp.set_reference(ref)
            out = {}
            for precision in art.precisions:
                if art.precisions[precision].get("engines") and engine not in art.precisions[precision]["engines"]:
                    continue
                gate = kind.gates().get(precision)
                with open_engine(art, engine, precision, provider or "cpu") as eng:
                    res = comp.compare(eng, gate, label)
                    size = art.inputs[0].shape[1:]

                    def call_at(b: int, eng=eng, size=size):
                        x = np.random.default_rng(b).standard_normal((b, *size), dtype=np.float32)
                        return lambda: eng.infer({"images": x})

                    # host copies included: the engine's infer takes and returns numpy arrays
                    res.update(sweep(call_at, self.cfg.batches, "cpu", self.cfg.point_s, deadline))
                out[precision] = res
            self.suite.r.setdefault("product_path", {})[label] = out
            return out

        # the TensorRT provider builds its engines on first use (minutes); CUDA and plans built at export do not
        est = (lambda: 90.0 if provider == "tensorrt" else 30.0) if self.cuda else (lambda: 15.0)
        return Stage(f"{self.name} artifact: {label} (host copies included)", run, est, needs)


def toy_folder(root: Path, n: int) -> Path:
    """0_real (smooth gradients) / 1_fake (the same with a 2-pixel checkerboard): something a head can learn."""
    from PIL import Image

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:64, 0:64] / 64
    for label, sub in ((0, "0_real"), (1, "1_fake")):
        (root / sub).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            img = np.stack([yy * rng.uniform(60, 200), xx * rng.uniform(60, 200), (xx + yy) * 50], -1)
            img += rng.normal(0, 4, img.shape) + label * ((np.indices((64, 64)).sum(0) // 2) % 2)[..., None] * 90
            Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(root / sub / f"{i:03d}.png")
    return root


# ---- reports -------------------------------------------------------------------------------------------------
def markdown(r: dict) -> str:
    env = r.get("environment", {})
    gpu = env["gpu"]["name"] if env.get("gpu") else "none (CPU smoke run)"
    machine = cpu_line(env) if env else "not recorded"
    lines = ["# GPU suite", "", f"Command: `{r.get('command', '')}`  ", f"Machine: GPU {gpu}; {machine}.  ",
             f"Budget {r.get('budget_s', 0):.0f} s; elapsed {r.get('elapsed_s', 0):.0f} s"
             + (" (cut by the watchdog)" if r.get("cut_by_watchdog") else "") + ".", "",
             "| stage | status | estimate s | seconds | note |", "|---|---|---|---|---|"]  # fmt: skip
    for s in r.get("stages", []):
        note = s.get("reason") or s.get("error") or _brief(s).lstrip("; ")
        lines.append(f"| {s['name']} | {s['status']} | {s.get('estimate_s', '-')} | {s.get('seconds', '-')} | "
                     f"{note.replace('|', '/')[:160]} |")  # fmt: skip
    for m in r.get("models", {}).values():
        batches = sorted({b for v in m["variants"].values() for b in v.get("throughput_ips", {})}, key=int)
        if not m["variants"]:
            continue
        head = ["variant", "gate", "min cos feature", "max abs logit", *[f"b{b} img/s" for b in batches]]
        lines += ["", f"## {m['model']} ({m.get('input_size', '?')} px)", ""]
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for name, v in m["variants"].items():
            par = v.get("parity", {})
            gate = "pass" if par.get("passed") else "FAIL: " + "; ".join(par.get("failures", []))
            ips = [f"{v['throughput_ips'][b]:.1f}" if b in v.get("throughput_ips", {}) else "-" for b in batches]
            lines.append(f"| {name} | {gate} | {par.get('min_cosine_feature', float('nan')):.6f} | "
                         f"{par.get('max_abs_logit', float('nan')):.2e} | " + " | ".join(ips) + " |")  # fmt: skip
        if "e2e" in m:
            e = m["e2e"]
            parts = [f"PIL in process {e['pil_in_process_ips']:.1f} img/s"]
            parts.append(f"torchvision device decode {e['torchvision_decode_ips']:.1f} img/s"
                         if "torchvision_decode_ips" in e else e.get("torchvision_decode", ""))  # fmt: skip
            lines += ["", f"End to end (JPEG bytes -> predictions, fp32, batch {e['batch']}): " + "; ".join(parts)]
    if r.get("purifier"):
        pur = "; ".join(f"{p} {v['ms_per_image']:.3f} ms/image (batch {v['batch']}, {v['size']} px)"
                        if "ms_per_image" in v else f"{p} not timed" for p, v in r["purifier"].items())  # fmt: skip
        lines += ["", f"Purifier one-step UNet: {pur}."]
    for label, per in r.get("product_path", {}).items():
        lines += ["", f"## Product path: {label}", "", "| precision | gate | b1 img/s | largest batch img/s |",
                  "|---|---|---|---|"]  # fmt: skip
        for p, res in per.items():
            gate = "pass" if res.get("passed") else "FAIL: " + "; ".join(res.get("failures", []))
            tp = res.get("throughput_ips", {})
            big = max(tp, key=int) if tp else None
            lines.append(f"| {p} | {gate} | {tp.get('1', float('nan')):.1f} | "
                         + (f"{tp[big]:.1f} (b{big})" if big else "-") + " |")  # fmt: skip
    return "\n".join(lines) + "\n"


def plot(r: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from toolkit.io import atomic_path

    models = [m for m in r.get("models", {}).values() if m["variants"]]
    if not models:
        return
    fig, axes = plt.subplots(1, len(models), figsize=(6 * len(models), 4), squeeze=False)
    for ax, m in zip(axes[0], models, strict=True):
        for name, v in m["variants"].items():
            if v.get("throughput_ips"):
                bs = sorted(v["throughput_ips"], key=int)
                ax.plot([int(b) for b in bs], [v["throughput_ips"][b] for b in bs], marker="o", label=name)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("batch")
        ax.set_ylabel("images/s")
        ax.set_title(m["model"])
        ax.legend(fontsize=6)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)


# ---- the plan --------------------------------------------------------------------------------------------------
def stages(cfg: argparse.Namespace, suite: Suite, work: Path) -> list[Stage]:
    cuda = cfg.device.startswith("cuda")
    benches = [ModelBench(name, cfg, suite) for name in cfg.models]
    fast = ("fp16", "bf16") if cuda else ("bf16",)
    out: list[Stage] = []
    for b in benches:
        out.append(Stage(f"{b.name}: build + CPU fp32 reference", b.build, b.build_estimate))
        out += [b.variant(p, "eager") for p in fast] + [b.variant(p, "graph") for p in fast]
    out.append(purifier_stage(cfg, suite))
    out += [b.variant("fp32", "eager") for b in benches]
    out.append(e2e_stage(benches[-1], cfg, suite))
    product = ProductPath(cfg.product_model, cfg, suite, work)
    out.append(product.export_stage())
    for provider in ("tensorrt", "cuda") if cuda else ("cpu",):
        out.append(product.engine_stage("onnxruntime", provider))
    out.append(product.engine_stage("trt", None))
    compiled = benches[-1].variant(fast[0], "compile")
    if not cfg.compile:
        compiled.needs = lambda: "opt-in: --compile (Inductor's first build costs minutes per model)"
    out.append(compiled)
    return out


def defaults(args: argparse.Namespace) -> argparse.Namespace:
    cuda = args.device.startswith("cuda")
    args.models = args.models or (["ViT-L-14", "ViT-B-16"] if cuda else ["tiny-vit-64"])
    args.batches = args.batches or ([1, 8, 32, 128] if cuda else [1, 4])
    args.product_model = args.product_model or ("ViT-B-16" if cuda else "tiny-vit-32")
    args.point_s = args.point_s if args.point_s is not None else (0.3 if cuda else 0.05)
    args.parity_n = 16 if cuda else 8
    args.e2e_n = 64 if cuda else 8
    return args


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda", help="cuda (the suite) or cpu (a smoke run: tiny models)")
    ap.add_argument("--budget-s", type=float, default=360.0, help="the whole run's time budget (default 360)")
    ap.add_argument("--grace-s", type=float, default=None, help="past the budget before the watchdog ends the run")
    ap.add_argument("--models", nargs="+", default=None, help="open_clip names (default: ViT-L-14 ViT-B-16 on cuda)")
    ap.add_argument("--batches", nargs="+", type=int, default=None, help="default 1 8 32 128 (cpu: 1 4)")
    ap.add_argument("--point-s", type=float, default=None, help="timed window per batch (default 0.3 s; cpu 0.05)")
    ap.add_argument("--product-model", default=None, help="the model exported through toolkit export")
    ap.add_argument("--compile", action="store_true", help="also torch.compile one precision (minutes)")
    ap.add_argument("--plan", action="store_true", help="print the stages and their GPU estimates; run nothing")
    ap.add_argument("--out", type=Path, default=RESULTS / "gpu_suite")
    args = defaults(ap.parse_args(argv))
    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available() and not args.plan:
        raise SystemExit("--device cuda: no CUDA device is visible here; use --device cpu for the smoke run")
    args.out.mkdir(parents=True, exist_ok=True)
    logf = open(args.out / "gpu_suite.log", "a", buffering=1, encoding="utf-8")  # noqa: SIM115 - lives as long

    def log(msg: str) -> None:
        line = f"{time.strftime('%H:%M:%S')} {msg}"
        print(line, flush=True)
        logf.write(line + "\n")

    record = {"command": command_line("benchmarks.gpu_suite", argv), "device": args.device,
              "environment": environment()}  # fmt: skip
    grace = args.grace_s if args.grace_s is not None else min(30.0, 0.1 * args.budget_s)
    suite = Suite(args.out, args.budget_s, record, log, grace)
    import tempfile

    with tempfile.TemporaryDirectory(prefix="gpu-suite-") as work:
        plan = stages(args, suite, Path(work))
        if args.plan:
            return print_plan(plan, args, log)
        suite.start_watchdog()
        log(f"GPU suite on {args.device}: {len(plan)} stages, budget {args.budget_s:.0f} s (+{grace:.0f} s grace)")
        try:
            for stage in plan:
                suite.run(stage)
        finally:
            suite.finished.set()
    plot(suite.r, args.out / "gpu_suite.png")
    suite.save()
    print(markdown(suite.r), flush=True)
    return 0


def print_plan(plan: list[Stage], args: argparse.Namespace, log) -> int:
    """The stage list with each stage's estimate on the target device. Model stages are estimated from the
    model's FLOPs and build time measured here (each model is built once, on this CPU)."""
    rows, total = [], 0.0
    for stage in plan:
        reason = stage.needs() if not stage.name.endswith("CPU fp32 reference") else None
        if stage.name.endswith("CPU fp32 reference"):
            facts = stage.run(time.monotonic() + 3600)  # build here: FLOPs and times for the estimates below
            est = facts["build_s"] + facts["cpu_reference_s"] * facts["cpu_threads"] / GPU_CORES
        else:
            est = stage.estimate()
        if reason and reason.startswith("opt-in"):
            rows.append((stage.name, None, reason))
            continue
        total += est
        rows.append((stage.name, est, "runs only where onnxruntime-gpu or TensorRT is installed" if reason else ""))
    log("| stage | estimate s | cumulative s | note |\n|---|---|---|---|")
    cum = 0.0
    for name, est, note in rows:
        cum += est or 0.0
        log(f"| {name} | {'-' if est is None else f'{est:.0f}'} | {cum:.0f} | {note} |")
    log(f"total {total:.0f} s (budget {args.budget_s:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

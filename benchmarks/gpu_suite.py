"""The GPU suite: one command on a lent GPU machine (GPU.md), or `--device cpu` as a smoke run in CI.

On the device machine (Python 3.12, its own torch with CUDA; open_clip, diffusers and friends carried as
wheels, see `make gpu-wheels`):
  python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
  python3 -m benchmarks.gpu_suite --out $OUT
For each model (random-weight ViT-B/16 and ViT-L/14 detectors on CUDA; tiny-vit-64 on CPU):
1. the CPU fp32 reference on fixed seeded inputs;
2. torch on the device in fp32 (TF32 off), fp16 and bf16, eager (scaled-dot-product attention inside
   open_clip's attention), torch.compile, and CUDA graphs (a captured replay per batch); onnxruntime's CUDA
   provider when an onnxruntime-gpu wheel was staged (GPU.md);
3. parity of each against the CPU reference with the export gates (fp32: max |logit diff| <= 1e-4 and equal
   decisions; fp16 / bf16: feature cosine >= 0.999, decisions >= 99.5% equal);
4. throughput at each batch, warm-up then CUDA-event timing (synchronised); host copies not included;
5. end to end: JPEG bytes -> GPU decode (torchvision.io.decode_jpeg on CUDA) -> resize/normalise -> model,
   against PIL decoding in worker processes -> model;
6. the one-step purifier UNet at 224 px, batch 32, ms per image.
Writes gpu_suite.json, gpu_suite.md and gpu_suite.png to --out; prints the table last.
"""

from __future__ import annotations

import argparse
import io
import time
from pathlib import Path

import numpy as np

from benchmarks.environment import cpu_line, environment
from benchmarks.report import command_line
from toolkit.io import write_json, write_text

RESULTS = Path(__file__).parent / "results"


def _timer(device: str):
    import torch

    if device.startswith("cuda"):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)

        def run(fn, iters: int) -> float:
            start.record()
            for _ in range(iters):
                fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end) / iters  # ms

        return run

    def run_cpu(fn, iters: int) -> float:
        t = time.perf_counter()
        for _ in range(iters):
            fn()
        return (time.perf_counter() - t) * 1e3 / iters

    return run_cpu


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
    from toolkit.compare import Fp16Gate, Fp32Gate, check
    from toolkit.kinds.detector import parity_stats

    stats = parity_stats(ref, got, 0.0)
    ok, fails = check(stats, Fp32Gate() if precision == "fp32" else Fp16Gate())
    return {**stats, "passed": ok, "failures": fails}


def torch_variants(model, device: str, precisions: list[str], compile_: bool, graphs: bool):
    """name -> (precision, callable(x) -> (logit, feature)) for every torch variant asked for."""
    import copy

    import torch

    dtypes = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
    out = {}
    for p in precisions:
        m = copy.deepcopy(model).to(device=device, dtype=dtypes[p])
        out[f"torch {p}"] = (p, m)
        if compile_:
            out[f"torch.compile {p}"] = (p, torch.compile(m))
        if graphs and device.startswith("cuda"):
            out[f"cuda graph {p}"] = (p, ("graph", m))
    return out


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


def bench_model(name: str, device: str, batches: list[int], precisions: list[str], iters: int, compile_: bool,
                graphs: bool, n_parity: int = 16, log=print) -> dict:  # fmt: skip
    import torch

    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32: the fp32 gate is 1e-4 on logits
    torch.backends.cudnn.allow_tf32 = False
    model, size = build_detector(name)
    x_ref = torch.from_numpy(np.random.default_rng(0).standard_normal((n_parity, 3, size, size)).astype(np.float32))
    with torch.inference_mode():
        ref = {k: v.numpy() for k, v in zip(("logit", "feature"), model(x_ref), strict=True)}
    timer = _timer(device)
    res = {"model": name, "input_size": size, "variants": {}}
    for vname, (p, m) in torch_variants(model, device, precisions, compile_, graphs).items():
        log(f"{name}: {vname} ...")
        dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[p]
        entry = {"precision": p, "throughput_ips": {}, "ms_per_batch": {}}
        try:
            with torch.inference_mode():
                fn = m
                if isinstance(m, tuple):  # CUDA graph: captured per batch below; parity through eager replay
                    fn = m[1]
                got = fn(x_ref.to(device=device, dtype=dtype))
                entry["parity"] = parity(ref, {"logit": got[0].float().cpu().numpy(),
                                               "feature": got[1].float().cpu().numpy()}, p)  # fmt: skip
                for b in batches:
                    x = torch.randn(b, 3, size, size, device=device, dtype=dtype)
                    call = _graphed(m[1], x) if isinstance(m, tuple) else m
                    for _ in range(3):
                        call(x)
                    ms = timer(lambda call=call, x=x: call(x), iters)
                    entry["ms_per_batch"][str(b)] = ms
                    entry["throughput_ips"][str(b)] = b / ms * 1e3
        except Exception as e:
            entry["error"] = f"{type(e).__name__}: {e}"[:300]
        res["variants"][vname] = entry
    res["e2e"] = end_to_end(model, size, device, max(batches), log)
    return res


def end_to_end(model, size: int, device: str, batch: int, log=print, n: int = 64) -> dict:
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
    out = {}
    t = time.perf_counter()
    with torch.inference_mode():
        for i in range(0, n, batch):
            x = np.stack([preprocess(Image.open(io.BytesIO(j)), cfg) for j in jpegs[i : i + batch]])
            m(torch.from_numpy(x).to(device))
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    out["pil_in_process_ips"] = n / (time.perf_counter() - t)
    try:
        from torchvision.io import decode_jpeg
        from torchvision.transforms.v2 import functional as F

        mean = torch.tensor(cfg.mean, device=device).view(1, 3, 1, 1)
        std = torch.tensor(cfg.std, device=device).view(1, 3, 1, 1)
        t = time.perf_counter()
        with torch.inference_mode():
            for i in range(0, n, batch):
                data = [torch.frombuffer(j, dtype=torch.uint8) for j in jpegs[i : i + batch]]
                imgs = decode_jpeg(data, device=device)
                imgs = torch.stack([F.center_crop(F.resize(im, size, antialias=True), size) for im in imgs])
                m((imgs.float() / 255 - mean) / std)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        out["torchvision_decode_ips"] = n / (time.perf_counter() - t)
    except Exception as e:
        out["torchvision_decode"] = f"not run: {type(e).__name__}: {e}"[:300]
    return out


def purifier_ms(device: str, size: int, batch: int, iters: int) -> dict:
    """The one-step purifier UNet (base preset) at `size` px: ms per image at `batch`."""
    import torch

    from toolkit.models.purifier import OneStepPurifier, PurifierConfig, make_unet

    try:
        net = OneStepPurifier(make_unet(PurifierConfig(sample_size=size))).eval().to(device)
    except ImportError as e:
        return {"error": f"not run: {e}"}
    x = torch.rand(batch, 3, size, size, device=device)
    timer = _timer(device)
    out = {}
    for p, dtype in (("fp32", torch.float32), ("fp16", torch.float16)):
        if p == "fp16" and not device.startswith("cuda"):
            continue
        with torch.inference_mode():
            m, xi = net.to(dtype), x.to(dtype)
            for _ in range(3):
                m(xi)
            out[p] = {"ms_per_image": timer(lambda m=m, xi=xi: m(xi), iters) / batch, "batch": batch, "size": size}
    return out


def markdown(r: dict, command: str) -> str:
    env = r["environment"]
    gpu = env["gpu"]["name"] if env.get("gpu") else "none (CPU smoke run)"
    lines = ["# GPU suite", "", f"Command: `{command}`  ", f"Machine: GPU {gpu}; {cpu_line(env)}.", ""]
    for m in r["models"]:
        batches = sorted({b for v in m["variants"].values() for b in v.get("throughput_ips", {})}, key=int)
        head = ["variant", "gate", "b1 ms", *[f"b{b} img/s" for b in batches]]
        lines += [f"## {m['model']} ({m['input_size']} px)", ""]
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for name, v in m["variants"].items():
            if "error" in v:
                lines.append(f"| {name} | not run: {v['error'][:80]} |" + " |" * (len(batches) + 1))
                continue
            gate = "pass" if v["parity"]["passed"] else "FAIL: " + "; ".join(v["parity"]["failures"])
            b1 = f"{v['ms_per_batch']['1']:.2f}" if "1" in v["ms_per_batch"] else "-"
            ips = " | ".join(f"{v['throughput_ips'][b]:.1f}" for b in batches)
            lines.append(f"| {name} | {gate} | {b1} | {ips} |")
        e, b = m["e2e"], max(batches, key=int)
        engine = m["variants"].get("torch fp32", {}).get("throughput_ips", {}).get(b)
        parts = [f"PIL in process {e['pil_in_process_ips']:.1f} img/s"]
        if "torchvision_decode_ips" in e:
            parts.append(f"torchvision device decode {e['torchvision_decode_ips']:.1f} img/s")
        else:
            parts.append(e["torchvision_decode"])
        if engine:
            best = max(e.get("torchvision_decode_ips", 0), e["pil_in_process_ips"])
            parts.append(f"best end to end = {100 * best / engine:.0f}% of torch fp32 engine-only")
        lines += ["", f"End to end (JPEG bytes -> predictions, fp32, batch {b}): " + "; ".join(parts) + ".", ""]
    pur = "; ".join(
        f"{p} {v['ms_per_image']:.3f} ms/image (batch {v['batch']}, {v['size']} px)" if "ms_per_image" in v else str(v)
        for p, v in r["purifier"].items()
    )
    lines += [f"Purifier one-step UNet: {pur}.", ""]
    return "\n".join(lines) + "\n"


def plot(r: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from toolkit.io import atomic_path

    fig, axes = plt.subplots(1, len(r["models"]), figsize=(6 * len(r["models"]), 4), squeeze=False)
    for ax, m in zip(axes[0], r["models"], strict=True):
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


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda", help="cuda (the suite) or cpu (a smoke run: tiny model)")
    ap.add_argument("--models", nargs="+", default=None, help="open_clip names (default: ViT-B-16 ViT-L-14 on cuda)")
    ap.add_argument("--batches", nargs="+", type=int, default=None, help="default 1 8 32 128 256 (cpu: 1 4)")
    ap.add_argument("--iters", type=int, default=None, help="timed calls per point (default 20; cpu 2)")
    ap.add_argument("--no-compile", action="store_true", help="skip torch.compile (minutes per model on a GPU)")
    ap.add_argument("--out", type=Path, default=RESULTS / "gpu_suite")
    args = ap.parse_args(argv)
    import torch

    cuda = args.device.startswith("cuda")
    if cuda and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is visible here; use --device cpu for the smoke run")
    models = args.models or (["ViT-B-16", "ViT-L-14"] if cuda else ["tiny-vit-64"])
    batches = args.batches or ([1, 8, 32, 128, 256] if cuda else [1, 4])
    iters = args.iters or (20 if cuda else 2)
    precisions = ["fp32", "fp16", "bf16"] if cuda else ["fp32"]
    command = command_line("benchmarks.gpu_suite", argv)
    r = {"command": command, "environment": environment(), "device": args.device, "models": []}
    for name in models:
        r["models"].append(bench_model(name, args.device, batches, precisions, iters, not args.no_compile, cuda))
    r["purifier"] = purifier_ms(args.device, 224 if cuda else 32, 32 if cuda else 2, iters)
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "gpu_suite.json", r)
    md = markdown(r, command)
    write_text(args.out / "gpu_suite.md", md)
    plot(r, args.out / "gpu_suite.png")
    print(md)


if __name__ == "__main__":
    main()

"""How much memory a calibration will need, from the graph alone, and the batch that fits: checked before it starts.

A calibration runs three phases one after the other, each releasing the last (calibration/quantize.py):

1. collect: onnxruntime runs an augmented copy of the fp32 graph on each batch. MinMax adds ReduceMin/ReduceMax
   nodes (outputs of a few floats); the histogram methods (entropy, percentile) make every calibrated tensor a
   graph output, so one batch of all of them is held at once while it is merged into the histograms.
2. quantize: onnxruntime.quantization rewrites the fp32 model (one copy of the weights in memory, plus the
   quantized ones).
3. evaluate: fp32 and int8 sessions, one after the other, on the held-out images.

The activation sizes come from onnx shape inference with the batch set to 1: `peak_live` is the most bytes alive
at once when the nodes run in order (a tensor lives from its producer to its last consumer, as in onnxruntime's
sequential executor), `calibrated` the bytes a histogram calibration exposes per image.
"""

from __future__ import annotations

import errno
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from toolkit.layerwise import ITEMSIZE, tensor_bytes

GIB = 1 << 30
MIB = 1 << 20

# Fitted on the measured phases of `toolkit calibrate` at ViT-L/14 (1.13 GiB of weights), batch 16, on the 2-core
# Xeon (benchmarks/results/vitl_resources.md): the interpreter with torch, onnx and onnxruntime imported is
# ~0.6 GiB; a loaded session ~1.3x the weights (2.1 GiB before the first batch); a batch adds ~37 MiB per image in
# the calibration session (liveness walk: 13.7 MiB) and ~57 MiB in the fused evaluation session at batch 32
# (3.9 GiB); quantizing held 1.4-1.6 GiB; the evaluation peaked at 4.7 GiB while the fp32 session's memory was
# being returned as the int8 one loaded. The factors below round those up.
BASE_BYTES = 600 * MIB
SESSION_WEIGHTS = 1.3
LIVE_FACTOR = 4  # onnxruntime's kernel scratch and arena rounding over the liveness walk's figure
QUANTIZE_WEIGHTS = 1.5  # the fp32 ModelProto, its quantized initializers and the serialised output
EVALUATE_WEIGHTS = 2.2  # one session, and what the one before it has not yet returned (+ margin)
# The no-VNNI emulator's weight-pair tables (calibration/saturation.py): 1.2 GiB held for ViT-L/14's 1.13 GiB of
# fp32 weights, on top of its session (8.7 GiB peak at batch 2 when the tables were int64 and 4.0 GiB).
EMULATOR_TABLES = 1.1
# A histogram batch is copied about three times while merged (np.asarray over the list, flatten, absolute value).
HISTOGRAM_COPIES = 3
DEFAULT_BATCHES = (16, 8, 4, 2, 1)
ACTIVATION_BUDGET = 2 * GIB  # the automatic batch keeps the batch-dependent memory under this


@dataclass(frozen=True)
class GraphSizes:
    weights: int  # bytes of the initializers
    peak_live: int  # bytes per image alive at once, running the nodes in order
    calibrated: int  # bytes per image of the tensors a histogram calibration makes outputs
    largest: int  # the largest single activation per image


@dataclass(frozen=True)
class Estimate:
    method: str
    batch: int
    collect: int
    quantize: int
    evaluate: int
    sizes: GraphSizes
    emulate_batch: int = 1  # the no-VNNI emulation's batch (calibration/saturation.py holds every GEMM's input)
    emulate: int = 0

    @property
    def peak(self) -> int:
        return max(self.collect, self.quantize, self.evaluate, self.emulate)

    def as_dict(self) -> dict:
        return {"method": self.method, "batch": self.batch, "peak_bytes": self.peak, "collect_bytes": self.collect,
                "quantize_bytes": self.quantize, "evaluate_bytes": self.evaluate, "emulate_batch": self.emulate_batch,
                "emulate_bytes": self.emulate, **asdict(self.sizes)}  # fmt: skip


class DoesNotFit(OSError):
    """The machine's memory: exit 1 with one line (toolkit/cli/common.py), before anything is written."""

    def __init__(self, message: str):
        super().__init__(errno.ENOMEM, message)

    def __str__(self) -> str:
        return self.strerror


def graph_sizes(model_path: str | Path, op_types: tuple[str, ...]) -> GraphSizes:
    """Shape-infer `model_path` (weights not loaded) with a batch of 1 and measure what a calibration holds."""
    import onnx

    model = onnx.load(str(model_path), load_external_data=False)
    weights = sum(_numel(t.dims) * ITEMSIZE.get(t.data_type, 4) for t in model.graph.initializer)
    inferred = onnx.shape_inference.infer_shapes(model)
    g = inferred.graph
    init = {t.name for t in g.initializer} | {i.name for i in model.graph.initializer}
    size = tensor_bytes(g)
    const = set(init)  # weights and what is computed from weights alone (transposed copies): not per image
    for n in g.node:
        if n.op_type == "Constant" or all(t in const for t in n.input if t):
            const.update(n.output)
    size = {t: b for t, b in size.items() if t not in const}
    calibrated = set()
    for n in g.node:
        if n.op_type in op_types:
            calibrated.update(t for t in [*n.input, *n.output] if t in size)
    last_use = {}
    for i, n in enumerate(g.node):
        for t in n.input:
            last_use[t] = i
    outputs = {o.name for o in g.output}
    live = {i.name: size.get(i.name, 0) for i in g.input if i.name not in init}
    peak = sum(live.values())
    for i, n in enumerate(g.node):
        for t in n.output:
            live[t] = size.get(t, 0)
        peak = max(peak, sum(live.values()))
        for t in [*n.input, *n.output]:
            if t in live and last_use.get(t, -1) <= i and t not in outputs:
                del live[t]
    return GraphSizes(weights, peak, sum(size[t] for t in calibrated), max(size.values(), default=0))


def estimate(sizes: GraphSizes, method: str, batch: int, eval_batch: int = 32) -> Estimate:
    per_batch = LIVE_FACTOR * sizes.peak_live
    if method != "minmax":
        per_batch += HISTOGRAM_COPIES * sizes.calibrated
    collect = BASE_BYTES + int(SESSION_WEIGHTS * sizes.weights) + batch * per_batch
    quantize = BASE_BYTES + int(QUANTIZE_WEIGHTS * sizes.weights)
    evaluate = BASE_BYTES + int(EVALUATE_WEIGHTS * sizes.weights) + eval_batch * LIVE_FACTOR * sizes.peak_live
    # the emulation exposes every weighted GEMM's input and adds a correction to its output: about the calibrated set
    per_image = LIVE_FACTOR * sizes.peak_live + sizes.calibrated
    emulate_batch = next((b for b in DEFAULT_BATCHES if b * per_image <= ACTIVATION_BUDGET), 1)
    emulate = BASE_BYTES + int((EVALUATE_WEIGHTS + EMULATOR_TABLES) * sizes.weights) + emulate_batch * per_image
    return Estimate(method, batch, collect, quantize, evaluate, sizes, emulate_batch, emulate)


def available_bytes() -> int:
    """Memory this process may still take: MemAvailable, capped by a cgroup v2 limit when one is set."""
    avail = _meminfo("MemAvailable")
    for limit_file, usage_file in (("memory.max", "memory.current"),):
        try:
            limit = Path("/sys/fs/cgroup", limit_file).read_text().strip()
            usage = int(Path("/sys/fs/cgroup", usage_file).read_text())
        except (OSError, ValueError):
            continue
        if limit.isdigit():
            avail = min(avail, int(limit) - usage)
    return avail


def choose_batch(sizes: GraphSizes, method: str, batch: int | None, available: int | None = None,
                 eval_batch: int = 32) -> Estimate:  # fmt: skip
    """The calibration batch: `batch` when given, else the largest of 16, 8, 4, 2, 1 whose batch-dependent memory
    stays under ACTIVATION_BUDGET. Raises DoesNotFit, with the figure and what to change, when its estimated peak
    is above the memory available now."""
    available = available_bytes() if available is None else available
    if batch is None:
        fits = [b for b in DEFAULT_BATCHES if estimate(sizes, method, b, eval_batch).collect - estimate(
            sizes, method, 0, eval_batch).collect <= ACTIVATION_BUDGET]  # fmt: skip
        batch = fits[0] if fits else 1
    est = estimate(sizes, method, batch, eval_batch)
    if est.peak > available:
        smallest = estimate(sizes, method, 1, eval_batch)
        if smallest.peak <= available and batch > 1:
            fit = max(b for b in range(1, batch) if estimate(sizes, method, b, eval_batch).peak <= available)
            hint = f"pass --calib-batch {fit} (about {_gib(estimate(sizes, method, fit, eval_batch).peak)})"
        elif method != "minmax" and estimate(sizes, "minmax", 1, eval_batch).peak <= available:
            hint = "use --method minmax, which does not hold the activations, or free memory"
        else:
            hint = "free memory or use a machine with more (the weights alone need " + (
                f"{_gib(int(SESSION_WEIGHTS * sizes.weights) + BASE_BYTES)})"
            )
        raise DoesNotFit(
            f"calibration would need about {_gib(est.peak)} ({method}, batch {batch}: weights {_gib(sizes.weights)}, "
            f"{_mib(sizes.peak_live)} of live activations per image"
            + (f" + {_mib(sizes.calibrated)} of calibrated tensors" if method != "minmax" else "")
            + f") and {_gib(available)} is available: {hint}"
        )
    return est


def _numel(dims) -> int:
    n = 1
    for d in dims:
        n *= max(int(d), 1)
    return n


def _meminfo(key: str) -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


def _gib(n: int) -> str:
    return f"{n / GIB:.1f} GiB"


def _mib(n: int) -> str:
    return f"{n / MIB:.0f} MiB"

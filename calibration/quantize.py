"""INT8 as explicit Q/DQ in the ONNX graph, through onnxruntime.quantization (static, QDQ format).

TensorRT 11 has no implicit INT8 calibrators, so the quantisation lives in the graph: symmetric
int8 activations and weights (zero point 0, as TensorRT requires), per-channel weights, with Q/DQ on
the inputs of the weighted ops (MatMul, Gemm, Conv) and not on their outputs. The same file runs in
ONNX Runtime (any provider) and compiles in TensorRT's strongly typed mode.

Sensitive parts stay in higher precision by default, and any node can be named to stay so:
- the patch embedding (the first Conv of the graph),
- LayerNormalization and Softmax (not in the quantised op types),
- the final head: the last LayerNormalization and everything after it (projection, L2 norm, head).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

METHODS = ("minmax", "entropy", "percentile")
OP_TYPES = ("MatMul", "Conv", "Gemm")  # the compute; norms/softmax/elementwise stay in float


@dataclass
class QuantConfig:
    method: str = "minmax"
    percentile: float = 99.999  # for method=percentile
    per_channel: bool = True
    keep_patch_embedding: bool = True
    keep_head: bool = True
    exclude_nodes: list[str] = field(default_factory=list)  # more node names to keep in float
    weights_7bit: list[str] = field(default_factory=list)  # nodes whose weights alone are 7-bit (--repair)
    # nodes whose 8-bit weights give up what could saturate without VNNI (saturation.pair_safe; --repair)
    weights_pairsafe: list[str] = field(default_factory=list)
    # 7-bit weights: None chooses from this machine's CPU (choose_reduce_range); the int8 gate judges either way
    reduce_range: bool | None = None
    op_types: tuple[str, ...] = OP_TYPES

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"calibration method must be one of {METHODS}, got {self.method!r}")


def choose_reduce_range(cfg: QuantConfig, flags: list[str] | None = None) -> tuple[bool, str]:
    """-> (reduce_range, why). onnxruntime's x86 int8 GEMM without VNNI multiplies with VPMADDUBSW, whose
    pairwise int16 sums saturate when two large weights meet large activations; 7-bit weights (onnxruntime's
    `reduce_range`) keep those sums in range, at half a bit of weight resolution. With VNNI the products are
    summed in int32 and the full range is kept."""
    from toolkit.machine import int8_pairs_saturate

    if cfg.reduce_range is not None:
        return cfg.reduce_range, "set explicitly"
    if int8_pairs_saturate(flags):
        return True, "this CPU has AVX2 without VNNI: 7-bit weights avoid int16 saturation in onnxruntime's kernels"
    return False, "this CPU has VNNI (or is not x86 AVX2): full 8-bit weights"


def sensitive_nodes(model, cfg: QuantConfig) -> list[str]:
    """Node names kept in float by default: the patch embedding Conv and the post-LN head."""
    nodes = list(model.graph.node)
    names = []
    if cfg.keep_patch_embedding:
        convs = [n for n in nodes if n.op_type == "Conv"]
        names += [convs[0].name] if convs else []
    if cfg.keep_head:
        idx = [i for i, n in enumerate(nodes) if n.op_type == "LayerNormalization"]
        if idx:
            live = set(nodes[idx[-1]].output)
            for n in nodes[idx[-1] + 1 :]:
                if any(i in live for i in n.input):
                    live.update(n.output)
                    names.append(n.name)
    unknown = set(cfg.exclude_nodes) - {n.name for n in nodes}
    if unknown:
        raise ValueError(f"--exclude names nodes that are not in the graph: {sorted(unknown)}")
    return names + list(cfg.exclude_nodes)


def collect_ranges(fp32_path: str | Path, batches: Iterator[np.ndarray], input_name: str, cfg: QuantConfig,
                   workdir: Path, advance=lambda n: None):  # fmt: skip
    """-> onnxruntime's TensorsData for `fp32_path` from `batches`, one batch at a time: onnxruntime's own
    calibrators (MinMax merges ranges, Entropy/Percentile merge histograms), fed batch by batch, so memory
    depends on the batch and not on the number of images (quantize_static would hold its calibrator, the fp32
    ModelProto and a temporary directory in $TMPDIR for the whole run). The augmented model goes to `workdir`."""
    import io

    from onnxruntime.quantization.calibrate import EntropyCalibrater, MinMaxCalibrater, PercentileCalibrater

    # onnxruntime's calibrator classes with create_calibrator's settings, built without its session: that one runs
    # in onnxruntime's default order, a reverse depth-first walk from the graph outputs, so every added
    # ReduceMin/ReduceMax ran after the whole network and every calibrated tensor stayed alive to the end of the run
    # (ViT-B/16: 774 MiB for a batch of 4 against 71 MiB for the plain graph; ViT-L/14 at batch 16 passed 23 GiB and
    # was killed). `_session` follows the node order, where onnxruntime put each reduction just before the tensor's
    # first consumer: 88 MiB.
    cls = {"minmax": MinMaxCalibrater, "entropy": EntropyCalibrater, "percentile": PercentileCalibrater}[cfg.method]
    extra = {"percentile": cfg.percentile} if cfg.method == "percentile" else {}
    calibrator = cls(
        Path(fp32_path),
        list(cfg.op_types),
        augmented_model_path=str(workdir / "augmented.onnx"),
        symmetric=True,  # zero point 0 for activations (TensorRT)
        use_external_data_format=True,  # the augmented copy's weights in a file, not in this process's memory
        **extra,
    )
    calibrator.augment_graph()
    calibrator.model = None  # the ModelProto is not needed once the augmented copy is written
    calibrator.infer_session = _session(calibrator.augmented_model_path)
    n = 0
    for x in batches:
        with contextlib.redirect_stdout(io.StringIO()):  # onnxruntime prints a line per batch
            calibrator.collect_data(_OneBatch({input_name: x}))
        n += len(x)
        advance(len(x))
    if n == 0:
        raise ValueError("no calibration batches")
    with contextlib.redirect_stdout(io.StringIO()):
        ranges = calibrator.compute_data()
    calibrator.infer_session = None
    return ranges


@contextlib.contextmanager
def _quiet_preprocessing_advice():
    """onnxruntime.quantization logs "Please consider to run pre-processing before quantization" (twice) on the root
    logger for every call: the graph was already optimised at export (export/graph_passes.py)."""

    def keep(record: logging.LogRecord) -> bool:
        return "pre-processing before quantization" not in record.getMessage()

    root = logging.getLogger()
    root.addFilter(keep)
    try:
        yield
    finally:
        root.removeFilter(keep)


def _session(path: str):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # as onnxruntime's calibrators do
    so.execution_order = ort.ExecutionOrder.PRIORITY_BASED
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


class _OneBatch:
    """A CalibrationDataReader over one feed: collect_data reads it to the end, once per batch."""

    def __init__(self, feed: dict):
        self._feed = feed

    def get_next(self) -> dict | None:
        feed, self._feed = self._feed, None
        return feed


def weight_of(model, node_names: list[str]) -> dict[str, str]:
    """node name -> the initializer its weighted op multiplies by (MatMul/Gemm/Conv input 1); refused for a node that
    has none (an activation x activation MatMul cannot take 7-bit weights: keep it in float instead)."""
    inits = {t.name for t in model.graph.initializer}
    nodes = {n.name: n for n in model.graph.node}
    out = {}
    for name in node_names:
        n = nodes.get(name)
        if n is None or len(n.input) < 2 or n.input[1] not in inits:
            raise ValueError(f"node {name!r} has no weight initializer for 7-bit weights")
        out[name] = n.input[1]
    return out


def quantize(
    fp32_path: str | Path,
    int8_path: str | Path,
    batches: Iterator[np.ndarray] | None,
    input_name: str,
    cfg: QuantConfig,
    workdir: str | Path,
    advance=lambda n: None,
) -> dict:
    """Write `int8_path` (Q/DQ) calibrated on `batches`; -> summary (method, kept nodes, Q/DQ counts).
    Temporary files (the augmented model, the ranges) go to `workdir`, which the caller removes. `batches` None:
    the ranges of an earlier call are in `workdir` (`--repair` quantizes again with other nodes kept, not
    calibrating again)."""
    import gc

    import onnx
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.calibrate import CalibrationMethod, save_tensors_data

    from toolkit.io import atomic_path

    workdir = Path(workdir)
    graph = onnx.load(str(fp32_path), load_external_data=False)
    keep = sensitive_nodes(graph, cfg)
    weights_7bit = weight_of(graph, cfg.weights_7bit)
    del graph
    cache = workdir / "ranges.json"
    if batches is not None:
        ranges = collect_ranges(fp32_path, batches, input_name, cfg, workdir, advance)
        gc.collect()  # the calibration session goes before the quantizer loads the weights again
        save_tensors_data(ranges, cache)
        del ranges
    elif not cache.is_file():
        raise FileNotFoundError(f"{cache}: no ranges from an earlier calibration to quantize again from")
    method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
              "percentile": CalibrationMethod.Percentile}[cfg.method]  # fmt: skip
    extra = {
        "ActivationSymmetric": True,  # zero point 0 for activations (TensorRT)
        "WeightSymmetric": True,
        # Q/DQ on the inputs of weighted ops only, as TensorRT's placement advice has it. onnxruntime's
        # default also re-quantizes every MatMul/Gemm/Conv output: an extra int8 round trip of accuracy,
        # and in ORT a requantize + dequantize per GEMM plus QLinearSoftmax (ViT-B/16 batch 1 on the
        # 2-core CPU: 137 ms with output Q/DQ, 126 ms without; fp32 220 ms).
        "OpTypesToExcludeOutputQuantization": list(cfg.op_types),
    }
    if weights_7bit:  # per-layer 7-bit weights (--repair): only the layers whose int16 pair sums saturate without VNNI
        extra["TensorQuantOverrides"] = {w: [{"reduce_range": True}] for w in weights_7bit.values()}
    reduce_range, why = choose_reduce_range(cfg)
    with atomic_path(Path(int8_path)) as tmp, _quiet_preprocessing_advice():
        quantize_static(
            str(fp32_path),
            str(tmp),
            None,
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
            per_channel=cfg.per_channel,
            op_types_to_quantize=list(cfg.op_types),
            nodes_to_exclude=keep,
            calibrate_method=method,
            reduce_range=reduce_range,
            extra_options=extra,
            calibration_cache_path=cache,
        )
        q = onnx.load(str(tmp))
        pairs_changed = 0
        if cfg.weights_pairsafe:
            pairs_changed = _pair_safe_weights(q, cfg.weights_pairsafe)
            onnx.save(q, str(tmp))
        onnx.checker.check_model(q, full_check=True)
    zero_points = _zero_points(q)
    if any(z != 0 for z in zero_points):
        raise RuntimeError(f"{int8_path}: non-zero zero points in the Q/DQ graph; TensorRT needs symmetric int8")
    ops = [n.op_type for n in q.graph.node]
    return {
        "method": cfg.method,
        "config": asdict(cfg),
        "kept_in_float": keep,
        "weights_7bit": list(cfg.weights_7bit),
        "weights_pairsafe": list(cfg.weights_pairsafe),
        "pairsafe_pairs_changed": pairs_changed,
        "quantize_nodes": ops.count("QuantizeLinear"),
        "dequantize_nodes": ops.count("DequantizeLinear"),
        "zero_points_all_zero": True,
        "reduce_range": reduce_range,
        "reduce_range_reason": why,
    }


def _weights_of(model, nodes: list[str]):
    """-> [(name, the int8 weight's TensorProto, transposed: stored (N, K) as a Gemm with transB)] of `nodes`."""
    from calibration.saturation import stored_transposed

    g = model.graph
    inits = {t.name: t for t in g.initializer}
    producer = {o: n for n in g.node for o in n.output}
    by_name = {n.name: n for n in g.node}
    out = []
    for name in nodes:
        node = by_name.get(name)
        dq = producer.get(node.input[1]) if node is not None and len(node.input) > 1 else None
        if dq is None or dq.op_type != "DequantizeLinear" or dq.input[0] not in inits:
            raise ValueError(f"{name}: not a MatMul / Gemm with a quantized weight; cannot make its weights pair-safe")
        out.append((name, inits[dq.input[0]], stored_transposed(node)))
    return out


def _pair_safe_weights(model, nodes: list[str]) -> int:
    """Make the int8 weights of `nodes` (MatMul / Gemm of `model`, in place) pair-safe: nothing of theirs can
    saturate in the U8S8 kernel of x86 CPUs without VNNI (calibration/saturation.py). -> how many weight pairs
    changed."""
    from onnx import numpy_helper

    from calibration.saturation import pair_safe

    changed = 0
    for _, t, trans in _weights_of(model, nodes):
        q = numpy_helper.to_array(t)
        w, n = pair_safe(q.T if trans else q)  # the kernel pairs along K: (K, N)
        t.CopyFrom(numpy_helper.from_array((w.T if trans else w).astype(q.dtype), t.name))
        changed += n
    return changed


def pair_safe_errors(model, nodes: list[str]) -> dict[str, float]:
    """-> {node: the mean squared change per weight that pair-safe weights would make} (--repair's choice between
    pair-safe and 7-bit weights, calibration/saturation.py SEVEN_BIT_ADDED_ERROR)."""
    from onnx import numpy_helper

    from calibration.saturation import pair_safe_added_error

    out = {}
    for name, t, trans in _weights_of(model, nodes):
        q = numpy_helper.to_array(t)
        out[name] = pair_safe_added_error(q.T if trans else q)
    return out


def _zero_points(model) -> list[int]:
    from onnx import numpy_helper

    inits = {t.name: t for t in model.graph.initializer}
    out = []
    for n in model.graph.node:
        if n.op_type in ("QuantizeLinear", "DequantizeLinear") and len(n.input) > 2 and n.input[2] in inits:
            out += numpy_helper.to_array(inits[n.input[2]]).astype(np.int64).ravel().tolist()
    return out

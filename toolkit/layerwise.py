"""Which layer breaks under a reduced precision: `toolkit debug`, Polygraphy's "mark all outputs and compare" for
this toolkit's graphs, on onnxruntime (fp16, int8) and OpenVINO (bf16).

1. **Matching.** The fp32 graph and the reduced one are walked in node order. Casts (fp16) and Quantize/
   DequantizeLinear (int8) are what the reduced graph adds; every other computing node has a counterpart. A node
   is matched to the one of the same op type at the same position among that op type's float-valued nodes (the
   k-th MatMul to the k-th MatMul), not by name alone; the report says where the names also agree. Shape
   arithmetic (integer Add/Mul) and nodes computed from weights alone are left out.
2. **Running.** Both graphs run on the same inputs, a few images at a time, with the matched tensors made graph
   outputs (onnxruntime without graph optimisations, in node order, so nothing is fused away; OpenVINO with the
   tensors added as outputs). Statistics are accumulated per layer and the tensors dropped, so memory is bounded
   by one chunk of images whatever their number.
3. **Statistics per layer**, in graph order: cosine (per image: min and mean), SQNR in dB (signal power over
   error power, over all images), max |diff|; with the no-VNNI emulation, the share of the layer's GEMM sums that
   int16 saturation changed (calibration/saturation.py). The error a layer *adds* is its relative error power
   minus the largest of its matched inputs'; the ten largest are the layers that contribute most to the output's
   error (a first-order proxy; `calibrate --repair` verifies by keeping layers in float).
4. **The first layer that breaks**: the first, in graph order, whose SQNR falls below the precision's threshold
   (fp16 40 dB, bf16 25 dB, int8 15 dB, each overridable) or whose cosine falls below 0.99.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

FLOATS = {1, 10, 16}  # onnx TensorProto FLOAT, FLOAT16, BFLOAT16
ITEMSIZE = {1: 4, 10: 2, 16: 2, 11: 8, 7: 8, 6: 4, 9: 1, 2: 1, 3: 1}  # onnx TensorProto elem_type -> bytes
PASS_THROUGH = {"Cast", "QuantizeLinear", "DequantizeLinear"}
NOT_LAYERS = {"Constant", "Shape", "Size", "Identity", "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten",
              "Gather", "Slice", "Concat", "Split", "Expand", "ConstantOfShape", "Range"}  # fmt: skip
MIN_SQNR_DB = {"fp16": 40.0, "bf16": 25.0, "int8": 15.0}
MIN_COSINE = 0.99
EXPOSED_BUDGET = 1 << 30  # bytes of exposed tensors per chunk of images (both graphs together)


@dataclass(frozen=True)
class Pair:
    index: int  # position of the fp32 node in its graph's node order
    node: str  # the fp32 node's name
    op: str
    ref: str  # the fp32 tensor
    got: str  # the reduced graph's tensor
    same_name: bool  # the two nodes also share their name


@dataclass
class LayerStats:
    n: int = 0
    signal: float = 0.0  # sum of ref^2
    noise: float = 0.0  # sum of (ref - got)^2
    max_abs: float = 0.0
    cos: list[float] = field(default_factory=list)

    def add(self, r: np.ndarray, g: np.ndarray) -> None:
        r = r.astype(np.float64).reshape(len(r), -1)
        g = g.astype(np.float64).reshape(len(g), -1)
        d = r - g
        self.n += len(r)
        self.signal += float((r * r).sum())
        if np.all(np.isfinite(g)):
            self.noise += float((d * d).sum())
            self.max_abs = max(self.max_abs, float(np.abs(d).max(initial=0.0)))
        else:  # overflowed (fp16 past 65504) or undefined: infinitely wrong, never "nan", which compares as passing
            self.noise = self.max_abs = math.inf
        with np.errstate(invalid="ignore", over="ignore"):
            den = np.linalg.norm(r, axis=1) * np.linalg.norm(g, axis=1)
            cos = np.where(np.all(d == 0, axis=1), 1.0, (r * g).sum(1) / np.maximum(den, 1e-30))
        self.cos += np.where(np.isfinite(cos), cos, -1.0).tolist()  # an overflowed (inf/nan) tensor: broken

    @property
    def rel_noise(self) -> float:
        return self.noise / self.signal if self.signal > 0 else (0.0 if self.noise == 0 else math.inf)

    @property
    def sqnr_db(self) -> float:
        if self.noise == 0:
            return math.inf
        if math.isinf(self.noise) or self.signal <= 0:
            return -math.inf
        return 10 * math.log10(self.signal / self.noise)


def _float_nodes(model) -> list[tuple[int, object]]:
    """(position, node) of the nodes that compute float values from an input (not from weights alone)."""
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model)
    g = inferred.graph
    types = {vi.name: vi.type.tensor_type.elem_type for vi in [*g.input, *g.value_info, *g.output]}
    const = {t.name for t in g.initializer}
    out = []
    for i, n in enumerate(g.node):
        if n.op_type == "Constant" or all(t in const for t in n.input if t):
            const.update(n.output)
            continue
        if n.op_type in PASS_THROUGH or n.op_type in NOT_LAYERS or not n.output:
            continue
        if types.get(n.output[0]) in FLOATS:
            out.append((i, n))
    return out


def match_layers(ref_model, cand_model) -> list[Pair]:
    """Pair the float-computing nodes of the fp32 graph with the reduced graph's, by op type and position."""
    ref, cand = _float_nodes(ref_model), _float_nodes(cand_model)
    by_op: dict[str, list] = defaultdict(list)
    for _, n in cand:
        by_op[n.op_type].append(n)
    rc, cc = Counter(n.op_type for _, n in ref), Counter(n.op_type for _, n in cand)
    if rc != cc:
        diff = {op: (rc[op], cc[op]) for op in set(rc) | set(cc) if rc[op] != cc[op]}
        raise ValueError(f"the two graphs do not compute the same layers (op: fp32 count, reduced count): {diff}")
    producer = {o: n for n in cand_model.graph.node for o in n.output}
    seen: Counter = Counter()
    pairs = []
    for i, n in ref:
        c = by_op[n.op_type][seen[n.op_type]]
        seen[n.op_type] += 1
        got = c.output[0]
        after = producer.get(n.output[0])
        if got != n.output[0] and after is not None and after.op_type == "Transpose" and after.input[0] == got:
            got = n.output[0]  # a transpose moved below the node (export/graph_passes.py): compare in fp32's layout
        pairs.append(Pair(i, n.name, n.op_type, n.output[0], got, c.name == n.name))
    return pairs


def upstream(ref_model, pairs: list[Pair]) -> dict[str, list[str]]:
    """For each pair's fp32 tensor, the matched tensors that feed it (walking back through reshapes and the like)."""
    producer = {o: n for n in ref_model.graph.node for o in n.output}
    matched = {p.ref for p in pairs}
    out = {}
    for p in pairs:
        found, todo, seen = set(), list(producer[p.ref].input), set()
        while todo:
            t = todo.pop()
            if t in seen or not t:
                continue
            seen.add(t)
            if t in matched:
                found.add(t)
            elif t in producer and len(seen) < 64:
                todo += list(producer[t].input)
        out[p.ref] = sorted(found)
    return out


class OrtLayers:
    """An onnxruntime session of `model` (a ModelProto with its weights) that also returns `tensors`."""

    def __init__(self, model, tensors: Iterable[str], threads: int | None = None):
        import onnx
        import onnxruntime as ort

        model = onnx.ModelProto.FromString(model.SerializeToString())
        have = {o.name for o in model.graph.output}
        for t in tensors:
            if t not in have:
                model.graph.output.append(onnx.ValueInfoProto(name=t))
                have.add(t)
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # nothing fused away
        so.execution_order = ort.ExecutionOrder.PRIORITY_BASED  # tensors freed in node order
        if threads:
            so.intra_op_num_threads = threads
        self.session = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name
        self.names = [o.name for o in self.session.get_outputs()]

    def __call__(self, x: np.ndarray) -> dict[str, np.ndarray]:
        return dict(zip(self.names, self.session.run(None, {self.input: x}), strict=True))


class OpenVinoLayers:
    """An OpenVINO CPU model of `path` at `precision` ("f32" or "bf16") that also returns `tensors`."""

    def __init__(self, path: Path, tensors: Iterable[str], precision: str):
        import openvino as ov

        core = ov.Core()
        model = core.read_model(str(path))
        model.add_outputs(list(tensors))
        self.compiled = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": precision})
        self.ports = [(o, o.get_any_name()) for o in self.compiled.outputs]

    def __call__(self, x: np.ndarray) -> dict[str, np.ndarray]:
        res = self.compiled(x)
        return {name: np.asarray(res[port]) for port, name in self.ports}


def tensor_bytes(inferred_graph) -> dict[str, int]:
    """Bytes per image of every typed tensor of a shape-inferred graph (symbolic dimensions, the batch, as 1)."""
    out = {}
    for vi in [*inferred_graph.input, *inferred_graph.value_info, *inferred_graph.output]:
        tt = vi.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else 1 for d in tt.shape.dim]
        out[vi.name] = int(np.prod([max(int(d), 1) for d in dims])) * ITEMSIZE.get(tt.elem_type, 4)
    return out


def exposed_bytes_per_image(model, tensors: Iterable[str]) -> int:
    import onnx

    sizes = tensor_bytes(onnx.shape_inference.infer_shapes(model).graph)
    return sum(sizes.get(t, 0) for t in tensors)


def compare_layers(pairs: list[Pair], run_ref: Callable, run_got: Callable, feeds: list[np.ndarray],
                   advance=lambda n: None, outputs: Iterable[str] = ()) -> tuple[dict, dict, dict]:  # fmt: skip
    """Run both on every chunk of `feeds`, accumulate per-layer statistics; -> (stats by fp32 tensor, and the
    graph `outputs` of each, concatenated over the feeds)."""
    stats = {p.ref: LayerStats() for p in pairs}
    outs_ref, outs_got = defaultdict(list), defaultdict(list)
    for x in feeds:
        r, g = run_ref(x), run_got(x)
        for p in pairs:
            stats[p.ref].add(r[p.ref], g[p.got])
        for k in outputs:
            outs_ref[k].append(r[k])
            outs_got[k].append(g[k])
        advance(len(x))
    cat = {k: np.concatenate(v) for k, v in outs_ref.items()}, {k: np.concatenate(v) for k, v in outs_got.items()}
    return stats, *cat


def report(pairs: list[Pair], stats: dict[str, LayerStats], feeds_up: dict[str, list[str]], precision: str,
           min_sqnr_db: float, min_cosine: float, saturated: dict[str, float] | None = None) -> dict:  # fmt: skip
    """The per-layer table in graph order, the first layer below the thresholds, the ten that add the most error."""
    layers = []
    for depth, p in enumerate(pairs):
        s = stats[p.ref]
        before = max((stats[t].rel_noise for t in feeds_up.get(p.ref, [])), default=0.0)
        added = 0.0 if math.isinf(before) else max(s.rel_noise - before, 0.0)  # after an overflow: not its own
        row = {"depth": depth, "node": p.node, "op": p.op, "tensor": p.ref, "reduced_tensor": p.got,
               "same_name": p.same_name, "cosine_min": min(s.cos, default=1.0),
               "cosine_mean": float(np.mean(s.cos)) if s.cos else 1.0, "sqnr_db": s.sqnr_db, "max_abs": s.max_abs,
               "rel_error": s.rel_noise, "added_error": added}  # fmt: skip
        if saturated is not None:
            row["saturated_share"] = saturated.get(p.got)
        layers.append(row)
    first = next((r for r in layers if r["sqnr_db"] < min_sqnr_db or r["cosine_min"] < min_cosine), None)
    top = sorted(layers, key=lambda r: -r["added_error"])[:10]
    return {"precision": precision, "thresholds": {"min_sqnr_db": min_sqnr_db, "min_cosine": min_cosine},
            "layers": layers, "first_failing": first,
            "top_added_error": [{k: r[k] for k in ("depth", "node", "op", "added_error", "sqnr_db")} for r in top],
            "matched": len(pairs), "matched_by_name_too": sum(p.same_name for p in pairs)}  # fmt: skip


def markdown(rep: dict) -> str:
    def db(v: float) -> str:
        return "inf" if v == math.inf else f"{v:.1f}"

    first = rep["first_failing"]
    sat = any("saturated_share" in r for r in rep["layers"])
    lines = [
        f"# {rep['precision']} against fp32, layer by layer: {rep['artifact']}",
        "",
        f"Engine {rep['engine']}; {rep['inputs']}; {rep['matched']} layers matched by op type and position "
        f"({rep['matched_by_name_too']} also by name). Thresholds: SQNR >= {rep['thresholds']['min_sqnr_db']} dB, "
        f"cosine >= {rep['thresholds']['min_cosine']}.",
        "",
        ("**First layer below the thresholds:** " + (f"`{first['node']}` ({first['op']}, depth {first['depth']}): "
         f"SQNR {db(first['sqnr_db'])} dB, min cosine {first['cosine_min']:.4f}." if first else "none.")),
        "",
        f"Outputs: {rep['outputs']}",
        "",
        "## The ten layers that add the most error",
        "",
        "| depth | node | op | added relative error | SQNR dB |",
        "|---|---|---|---|---|",
        *[f"| {r['depth']} | `{r['node']}` | {r['op']} | {r['added_error']:.3g} | {db(r['sqnr_db'])} |"
          for r in rep["top_added_error"]],
        "",
        "## Every layer in graph order",
        "",
        "| depth | node | op | min cos | mean cos | SQNR dB | max abs diff |" + (" saturated |" if sat else ""),
        "|---|---|---|---|---|---|---|" + ("---|" if sat else ""),
    ]  # fmt: skip
    for r in rep["layers"]:
        s = r.get("saturated_share")
        extra = f" {'-' if s is None else f'{100 * s:.1f}%'} |" if sat else ""
        lines.append(f"| {r['depth']} | `{r['node']}` | {r['op']} | {r['cosine_min']:.5f} | {r['cosine_mean']:.5f} | "
                     f"{db(r['sqnr_db'])} | {r['max_abs']:.3g} |{extra}")  # fmt: skip
    return "\n".join(lines) + "\n"


def plot(rep: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from toolkit.io import atomic_path

    x = [r["depth"] for r in rep["layers"]]
    y = [min(r["sqnr_db"], 120.0) for r in rep["layers"]]
    fig, ax = plt.subplots(figsize=(10, 4))
    ax.plot(x, y, ".-", lw=0.8, ms=3, label="SQNR (dB, capped at 120)")
    ax.axhline(rep["thresholds"]["min_sqnr_db"], color="r", ls="--", lw=0.8, label="threshold")
    if rep["first_failing"]:
        f = rep["first_failing"]
        ax.axvline(f["depth"], color="r", lw=0.8, alpha=0.5)
        ax.annotate(f"first: {f['node']}", (f["depth"], rep["thresholds"]["min_sqnr_db"]), fontsize=7, rotation=90)
    if any(r.get("saturated_share") is not None for r in rep["layers"]):
        ax2 = ax.twinx()
        pts = [(r["depth"], 100 * r["saturated_share"]) for r in rep["layers"] if r.get("saturated_share") is not None]
        ax2.plot(*zip(*pts, strict=True), "x", color="tab:orange", ms=4, label="saturated GEMM sums (%)")
        ax2.set_ylabel("saturated (%)")
        ax2.legend(loc="lower right", fontsize=7)
    ax.set_xlabel("layer (graph order)")
    ax.set_ylabel("SQNR against fp32 (dB)")
    ax.set_title(f"{rep['precision']} vs fp32 per layer")
    ax.legend(loc="lower left", fontsize=7)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
    return path


def as_json(rep: dict) -> dict:
    """Infinite SQNR (identical tensors) as the string "inf", an undefined value as "nan": JSON has neither."""

    def fix(v):
        if isinstance(v, float) and not math.isfinite(v):
            return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf")
        if isinstance(v, dict):
            return {k: fix(x) for k, x in v.items()}
        if isinstance(v, list):
            return [fix(x) for x in v]
        return v

    return fix(rep)


def _feeds(art, images: Path | None, n: int, seed: int = 0) -> tuple[np.ndarray, str]:
    """n preprocessed images from `images` (labelled layout or any folder), or n seeded noise images."""
    pre = art.preprocess
    if images is None:
        from toolkit.preprocess import noise_images

        return noise_images(pre, n, seed), f"{n} seeded noise images"
    from toolkit.data.loader import discover_images, load_batch

    paths = discover_images(images)[0][:n]
    b = load_batch([str(p) for p in paths], pre)
    if not len(b.paths):
        raise ValueError(f"{images}: no readable images to debug on")
    return b.array, f"{len(b.paths)} images from {images}"


def debug_artifact(art, precision: str, engine: str = "onnxruntime", images: Path | None = None, n: int = 16,
                   no_vnni: Callable | None = None, out_dir: Path | None = None, min_sqnr_db: float | None = None,
                   min_cosine: float = MIN_COSINE, progress: bool = True, log=print) -> tuple[dict, list]:  # fmt: skip
    """`toolkit debug`: `precision` of the opened artifact `art` against its fp32 graph, layer by layer. `no_vnni`:
    a factory (int8 ModelProto -> emulator) to judge int8 as x86 CPUs without VNNI compute it (the CLI wires
    calibration/saturation.py). -> (report, the files written: JSON, Markdown, PNG)."""
    from toolkit import kinds
    from toolkit.io import write_json, write_text

    kind = kinds.for_artifact(art)
    if precision == "fp32":
        raise ValueError("toolkit debug compares a reduced precision (fp16, int8, bf16) with fp32")
    art.require(precision)
    runs_on = art.precisions[precision].get("engines")
    if runs_on and engine not in runs_on:
        raise ValueError(f"{art.dir}: {precision} runs on {', '.join(runs_on)} only, not {engine}")
    x, desc = _feeds(art, images, n)
    rep = compare_graphs(kind, art.onnx_path("fp32"), art.onnx_path(precision), x, precision, engine, no_vnni,
                         min_sqnr_db, min_cosine, progress, log, desc)  # fmt: skip
    # judged as a CPU without VNNI computes it, int8 is decided where such a CPU decides: at the map sealed for it
    got_threshold = art.threshold_for(precision, saturating=no_vnni is not None) if art.threshold is not None else None
    out_stats = kind.parity(rep.pop("ref_outputs"), rep.pop("got_outputs"), art.threshold,
                            got_threshold=got_threshold)  # fmt: skip
    rep.update(artifact=str(art.dir), output_stats=out_stats, outputs=_outputs_line(out_stats))
    out_dir = Path(out_dir) if out_dir else art.dir / "bench" / "debug"
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = out_dir / f"debug_{rep['precision']}"
    files = [write_json(stem.with_suffix(".json"), as_json(rep)), write_text(stem.with_suffix(".md"), markdown(rep)),
             plot(rep, stem.with_suffix(".png"))]  # fmt: skip
    return rep, files


def compare_graphs(kind, ref_path: Path, cand_path: Path, x: np.ndarray, precision: str,
                   engine: str = "onnxruntime", no_vnni: Callable | None = None, min_sqnr_db: float | None = None,
                   min_cosine: float = MIN_COSINE, progress: bool = True, log=print, desc: str = "",
                   cand_model=None) -> dict:  # fmt: skip
    """The reduced graph `cand_path` (or the ModelProto `cand_model`, with its weights) against the fp32 graph
    `ref_path`, layer by layer, on the preprocessed images `x`: the per-layer report (`report`) with both graphs'
    outputs under "ref_outputs" / "got_outputs". `toolkit debug` and `--repair` (which ranks layers by it)."""
    import onnx

    from toolkit.progress import progress_bar

    if engine not in ("onnxruntime", "openvino"):
        raise ValueError(f"toolkit debug runs onnxruntime or openvino, not {engine}")
    if no_vnni is not None and (precision != "int8" or engine != "onnxruntime"):
        raise ValueError("--cpu no-vnni judges int8 as onnxruntime runs it on x86 CPUs without VNNI: --precision int8")
    if cand_model is None and engine == "onnxruntime":
        cand_model = onnx.load(str(cand_path))
    # the structure once, without the external weights: matching, sizes and the layers feeding each layer
    ref_graph = onnx.load(str(ref_path), load_external_data=False)
    cand_graph = cand_model if cand_model is not None else onnx.load(str(cand_path), load_external_data=False)
    pairs = match_layers(ref_graph, cand_graph)
    feeds_up = upstream(ref_graph, pairs)
    ref_t, got_t = [p.ref for p in pairs], [p.got for p in pairs]
    per_image = exposed_bytes_per_image(ref_graph, ref_t) * 2
    del ref_graph, cand_graph
    chunk = max(1, min(8, EXPOSED_BUDGET // max(per_image, 1)))
    feeds = [x[i : i + chunk] for i in range(0, len(x), chunk)]
    saturated: dict[str, list] | None = None
    if engine == "openvino":
        hint = "bf16" if precision == "bf16" else "f32"
        run_ref = OpenVinoLayers(ref_path, ref_t, "f32")
        run_got = OpenVinoLayers(cand_path, got_t, hint)
    else:
        run_ref = OrtLayers(onnx.load(str(ref_path)), ref_t)
        if no_vnni is None:
            run_got = OrtLayers(cand_model, got_t)
        else:
            emulator, saturated = no_vnni(cand_model), defaultdict(list)
            outputs = [o.name for o in cand_model.graph.output]

            def run_got(xb: np.ndarray) -> dict:
                got, counts = emulator.run(kind.input_name, [xb], extra=tuple(got_t))
                for name, share in counts["per_layer"].items():
                    saturated[name].append((share, len(xb)))
                return {k: got[k] for k in [*outputs, *got_t]}

    del cand_model
    label = f"{precision}{'-no-vnni' if no_vnni else ''}"
    log(f"debug {label} against fp32 on {desc or f'{len(x)} images'}: {len(pairs)} layers, {chunk} image(s) at a "
        "time ...")  # fmt: skip
    with progress_bar(f"debug {label}", len(x), progress) as advance:
        stats, ro, go = compare_layers(pairs, run_ref, run_got, feeds, advance, kind.output_names)
    shares = None
    if saturated is not None:
        shares = {k: sum(s * m for s, m in v) / sum(m for _, m in v) for k, v in saturated.items()}
    rep = report(pairs, stats, feeds_up, label, MIN_SQNR_DB[precision] if min_sqnr_db is None else min_sqnr_db,
                 min_cosine, shares)  # fmt: skip
    rep.update(engine=engine + (" (x86 without VNNI, emulated)" if no_vnni else ""), inputs=desc or f"{len(x)} images",
               ref_outputs=ro, got_outputs=go)  # fmt: skip
    return rep


def ranked_layers(rep: dict, among: Iterable[str] | None = None) -> list[dict]:
    """The report's layers by the error they add, largest first (`among`: only these fp32 node names); layers that
    add nothing are left out. What `--repair` keeps in higher precision, in this order."""
    allowed = None if among is None else set(among)
    rows = [r for r in rep["layers"] if r["added_error"] > 0 and (allowed is None or r["node"] in allowed)]
    return sorted(rows, key=lambda r: -r["added_error"])


def _outputs_line(stats: dict) -> str:
    keys = [k for k in ("max_abs_logit", "min_cosine_feature", "decision_agreement", "min_psnr_db") if k in stats]
    return ", ".join(f"{k} {stats[k]:.4g}" for k in keys) or "-"

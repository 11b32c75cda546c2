"""onnxruntime's int8 GEMM on x86 CPUs without VNNI, emulated exactly on any CPU: is `reduce_range` needed?

What those CPUs run (onnxruntime's MLAS, read from its source):
- `QDQS8ToU8Transformer` turns the int8 *activations* of a Q/DQ graph into uint8 with zero point 128
  (u = q + 128, in [0, 255]); weights stay int8. The weighted MatMul / Gemm then runs MLAS's U8S8 kernel.
- Without VNNI (AVX2, or AVX-512 without VNNI) that kernel multiplies with VPMADDUBSW: u8 x s8 products of
  adjacent K elements are added in pairs *with int16 saturation*, p_j = sat16(u[2j] w[2j] + u[2j+1] w[2j+1]),
  then widened and summed in int32; the zero point is corrected exactly (- 128 * sum_k w[k]).
  With VNNI (VPDPBUSD) the products go to int32 directly and nothing saturates.
- A pair can leave int16 only if both weights have the same sign and |w_e| + |w_o| >= 129 (255 * 128 = 32640
  fits); 7-bit weights (`reduce_range`, |w| <= 64) can never saturate. Activation x activation products
  (attention) have no int8 weight and run U8U8 kernels that widen to 16 bits first: no saturation.

How `NoVnniEmulator.run` computes it. The int8 graph runs in onnxruntime with graph optimisations off, so no Q/DQ pair
is fused into this machine's int8 kernels: every MatMul multiplies the dequantized integers in float (the exact
sums, to float32 rounding, on any CPU). Each weighted GEMM gets an extra input `delta` added to its output, and
its activation is exposed as an output. The graph is cut before each of those Adds (`_Segments`) and the pieces
run in topological order: when piece i has run, every correction before layer i is final, so are layer i's uint8
activations, and `lost_to_saturation` computes what saturation takes from each of its outputs, sum_j (p_j -
sat16(p_j)) (exact, forming only the candidates a row's activations can push past int16); that correction is fed to
the next piece, which adds it and runs on. So a run costs one forward through the pieces plus the corrections.

Measured on ViT-B/16 with random weights and 8-bit weights (minmax): 24% of weight pairs are static candidates
and, for LayerNorm-ed activations, 94% of the first qkv projection's output sums lose something to saturation.
A first form that gathered every static candidate for every token inside the ONNX graph took 39 s and 9.9 GB of
memory per image. The second ran the whole graph again after each saturating layer (49 forwards) and corrected in
numpy: 19.3 s per image. This one gives the same outputs bit for bit (4 images, logit and features) in 2.1 s per
image on 2 cores (Xeon, AVX-512): 0.5 s of onnxruntime forward, 0.9 s of correction, the rest array conversion.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numba
import numpy as np

INT16_MIN, INT16_MAX = -32768, 32767
U8_OFFSET = 128  # QDQS8ToU8Transformer: u = q + 128


@dataclass
class WeightedGemm:
    """One int8 MatMul / Gemm of the graph, as the kernel sees it."""

    activation: str  # the DQ output feeding it (exposed as a graph output)
    delta: str  # the graph input added to its output
    sa: float  # activation scale
    sw: np.ndarray  # (N,) weight scales
    w: np.ndarray  # (K', N) int8 weights, K' even (MLAS pads K with a zero row)
    # the static candidates, sorted by pair j, then by s = |w_e| + |w_o| descending: (M,) each
    cand_j: np.ndarray
    cand_n: np.ndarray
    cand_we: np.ndarray
    cand_wo: np.ndarray
    cand_key: np.ndarray  # j * 512 - s, ascending: where a pair's candidates with s above a bound end
    cand_start: np.ndarray  # (K'/2 + 1,) where each pair's candidates begin
    output: str = ""  # the GEMM's output as the int8 graph names it (in the instrumented copy: after the correction)


def _static_candidates(w: np.ndarray) -> dict[str, np.ndarray]:
    """w (K', N) int64, K' even -> the (pair j, column n) that can saturate for some uint8 input, sorted for
    `lost_to_saturation` (by j, then by |w_e| + |w_o| descending)."""
    we, wo = w[0::2], w[1::2]  # (K'/2, N)
    size = np.abs(we) + np.abs(wo)
    can = (np.sign(we) == np.sign(wo)) & (size >= 129)
    j, n = np.nonzero(can)
    key = j * 512 - size[j, n]  # |w_e| + |w_o| <= 255 < 512
    order = np.argsort(key, kind="stable")
    j, n, key = j[order], n[order], key[order]
    # held for the emulator's life, so stored at their ranges' widths: ViT-L/14 has 37 M candidates (0.6 GB at 16
    # bytes each; 1.5 GB as int64) and 151 M weight pairs (the int8 weights themselves: 0.3 GB, 2.4 GB as int64)
    return {"cand_j": j.astype(np.int32), "cand_n": n.astype(np.int32), "cand_we": we[j, n].astype(np.int16),
            "cand_wo": wo[j, n].astype(np.int16), "cand_key": key.astype(np.int32),
            "cand_start": np.searchsorted(j, np.arange(we.shape[0] + 1)).astype(np.int64)}  # fmt: skip


def stored_transposed(node) -> bool:
    """Whether a MatMul / Gemm stores its weight (N, K) (a Gemm with transB), not in the kernel's (K, N)."""
    return node.op_type == "Gemm" and any(a.name == "transB" and a.i == 1 for a in node.attribute)


def pair_safe(w: np.ndarray) -> tuple[np.ndarray, int]:
    """Integer weights (K, N) (K the reduction axis, as the kernel pairs it) -> (the same weights with no pair that
    can saturate, how many pairs changed). A pair (w[2j], w[2j+1]) of one sign with |w_e| + |w_o| > 128 gives up the
    excess, split between its two weights (the larger gives the odd unit), so |w_e| + |w_o| = 128 and
    255 * 128 = 32640 fits int16: `_static_candidates` finds none. Every other weight keeps its 8 bits; 7-bit
    weights (reduce_range) halve the resolution of all of them to the same end (--repair gives a layer whichever of
    the two changes it less: SEVEN_BIT_ADDED_ERROR)."""
    w = np.asarray(w).astype(np.int64).copy()
    k = w.shape[0] - w.shape[0] % 2  # an odd last row pairs with MLAS's zero padding: it cannot saturate
    we, wo = w[0:k:2], w[1:k:2]  # views: written in place
    a, b = np.abs(we), np.abs(wo)
    over = (np.sign(we) == np.sign(wo)) & (a + b > 128)
    d = np.where(over, a + b - 128, 0)
    cut_a = np.where(a >= b, (d + 1) // 2, d // 2)  # each stays >= 0: d <= a + b - 128 and both are <= 128
    we[...] = np.sign(we) * (a - cut_a)
    wo[...] = np.sign(wo) * (b - (d - cut_a))
    return w, int(over.sum())


# What 7-bit weights add to a layer's weight error, per weight in 8-bit units: rounding to a step of 2 instead of 1
# (variance 4/12 against 1/12). pair_safe adds sum((w' - w)^2) / size; --repair gives a layer that must not saturate
# whichever of the two adds less. Measured (tests/test_saturation.py): uniform random-init weights, as this toolkit's
# random backbones have, 160 (a quarter of the pairs can saturate; the demo's tiny-vit-64 minmax int8 with all
# layers pair-safe: 68% decision agreement, against 93% with 7-bit); Gaussian weights with K = 1024 whose channel
# maximum is at 3 sigma 2.6, at 5 sigma 0.25, at 8 sigma 0.07. So pair-safe weights win only where outliers set the
# per-channel scale and most weights are small, as in trained transformers with outlier weights.
SEVEN_BIT_ADDED_ERROR = 0.25


def pair_safe_added_error(w: np.ndarray) -> float:
    """Mean squared change per weight (8-bit units) that `pair_safe` makes to `w` (K, N)."""
    safe, _ = pair_safe(w)
    return float(((safe - np.asarray(w).astype(np.int64)) ** 2).mean())


def instrument(model) -> tuple[object, list[WeightedGemm]]:
    """Q/DQ int8 ModelProto -> (a copy where each weighted MatMul / Gemm adds a graph input `delta` to its output and
    exposes its activation as a graph output, the layers). Only MatMul / Gemm fed by a DQ of an activation (input 0)
    and a DQ of an int8 initializer (input 1) are instrumented; the caller's model is not changed."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.ModelProto.FromString(model.SerializeToString())
    g = model.graph
    inits = {t.name: t for t in g.initializer}
    producer = {o: n for n in g.node for o in n.output}
    layers: list[WeightedGemm] = []
    ordered = []  # the graph's nodes, each Add right after its layer: a topological order stays one
    for node in g.node:
        ordered.append(node)
        if node.op_type not in ("MatMul", "Gemm"):
            continue
        dqs = [producer.get(i) for i in node.input[:2]]
        if not all(d is not None and d.op_type == "DequantizeLinear" for d in dqs):
            continue
        act_dq, w_dq = dqs
        if act_dq.input[0] in inits or w_dq.input[0] not in inits:
            continue  # activation x activation (attention), or an unexpected layout
        qw = numpy_helper.to_array(inits[w_dq.input[0]])
        if qw.dtype != np.int8 or qw.ndim != 2 or act_dq.input[1] not in inits:
            continue
        attrs = {a.name: a for a in node.attribute}
        if ("alpha" in attrs and attrs["alpha"].f != 1.0) or ("transA" in attrs and attrs["transA"].i == 1):
            continue  # not the layout quantize_static writes
        w = (qw.T if stored_transposed(node) else qw).astype(np.int64)
        if w.shape[0] % 2:
            w = np.concatenate([w, np.zeros((1, w.shape[1]), np.int64)])
        sw = numpy_helper.to_array(inits[w_dq.input[1]]).astype(np.float64).reshape(-1)
        sw = np.broadcast_to(sw, (w.shape[1],)).copy()
        i = len(layers)
        sa = float(numpy_helper.to_array(inits[act_dq.input[1]]))
        layer = WeightedGemm(act_dq.output[0], f"no_vnni_delta_{i}", sa, sw, w.astype(np.int8), **_static_candidates(w),
                             output=node.output[0])  # fmt: skip
        layers.append(layer)
        out = node.output[0]
        node.output[0] = f"no_vnni_exact_{i}"
        ordered.append(helper.make_node("Add", [node.output[0], layer.delta], [out], name=f"no_vnni_add_{i}"))
        g.input.append(helper.make_tensor_value_info(layer.delta, TensorProto.FLOAT, None))
        if layer.activation not in {o.name for o in g.output}:
            g.output.append(helper.make_tensor_value_info(layer.activation, TensorProto.FLOAT, None))
    del g.node[:]
    g.node.extend(ordered)
    return model, layers


def lost_to_saturation(u: np.ndarray, layer: WeightedGemm) -> np.ndarray:
    """u (R, K) uint8 activations as int64 (R rows = tokens) -> (R, N) float64: what the kernel's int16
    saturation takes from the exact int32 sums, sum over pairs of (p - sat16(p)).

    Exact and pruned: with m = max(u_e, u_o) of a row's pair, |p| <= m (|w_e| + |w_o|), so only the candidates
    with |w_e| + |w_o| > 32767 // m can saturate; they are the first ones of the pair's sorted segment, and the
    scan of a (row, pair) stops at the first that cannot. The work shrinks with the activations' magnitude: rows
    near zero (u near 128) leave only the largest weight pairs. A numba loop over rows in parallel: the numpy form
    before it gathered every (row, candidate) work item into index arrays and took 5.4 s per ViT-B/16 image (48
    layers, random weights, 87% of the sums saturating; 0.35 s for the onnxruntime forward beside it)."""
    lost = np.zeros((u.shape[0], layer.w.shape[1]), np.float64)
    if len(layer.cand_j):
        _lost_rows(np.ascontiguousarray(u, np.int64), layer.cand_start, layer.cand_key, layer.cand_n,
                   layer.cand_we, layer.cand_wo, lost)  # fmt: skip
    return lost


@numba.njit(parallel=True, nogil=True, cache=True)
def _lost_rows(u, cand_start, cand_key, cand_n, cand_we, cand_wo, lost):  # pragma: no cover (compiled)
    k = u.shape[1]
    for r in numba.prange(u.shape[0]):
        for j in range(len(cand_start) - 1):
            ue = u[r, 2 * j]
            uo = u[r, 2 * j + 1] if 2 * j + 1 < k else 0  # an odd K pairs its last element with MLAS's zero
            m = max(ue, uo)
            if m == 0:
                continue
            limit = INT16_MAX // m  # a candidate needs |w_e| + |w_o| > limit
            for c in range(cand_start[j], cand_start[j + 1]):
                if j * 512 - cand_key[c] <= limit:  # sizes descend: none after this one can saturate
                    break
                p = ue * cand_we[c] + uo * cand_wo[c]
                if p > INT16_MAX:
                    lost[r, cand_n[c]] += p - INT16_MAX
                elif p < INT16_MIN:
                    lost[r, cand_n[c]] += p - INT16_MIN


class NoVnniEmulator:
    """An int8 model instrumented once (`instrument`): `counts` without running anything, `run` for the outputs."""

    def __init__(self, int8_model):
        self.outputs = [o.name for o in int8_model.graph.output]
        self.model, self.layers = instrument(int8_model)

    @property
    def counts(self) -> dict:
        """How many weight pairs can saturate for some input (0 with 7-bit weights), of how many."""
        return {
            "weighted_gemms": len(self.layers),
            "candidate_pairs": int(sum(len(layer.cand_j) for layer in self.layers)),
            "pairs": int(sum(layer.w.size // 2 for layer in self.layers)),
        }

    def run(self, input_name: str, feeds: list[np.ndarray], advance=lambda n: None,
            extra: tuple[str, ...] = (), until: float | None = None) -> tuple[dict, dict]:  # fmt: skip
        """The int8 model's outputs as an x86 CPU without VNNI computes them, on any CPU (module docstring) ->
        (outputs concatenated over the feeds, as `compare.run_feeds`; `counts` + segments, saturated_fraction:
        the share of all (row, output) GEMM sums that lost something to saturation, and per_layer: that share
        for each weighted GEMM, by its output's name). `extra`: intermediate tensors of the int8 graph to return
        too, as the emulated CPU computes them (toolkit debug). `until`: a time.monotonic() deadline; the feeds
        after the one running when it passes are left out (counts["feeds_done"] says how many ran)."""
        import time

        layers = self.layers
        outputs = self.outputs + [e for e in extra if e not in self.outputs]
        segments = _Segments(self.model, layers, outputs)
        zero = np.zeros((1,), np.float32)
        got, saturated, formed = [], 0, 0
        per_layer = np.zeros((len(layers), 2), np.int64)  # (saturated, formed) sums of each layer
        for x in feeds:
            env = {input_name: x}
            # segment i ends with layer i's exact GEMM: every correction before it is final, so is its activation
            for i, layer in enumerate(layers):
                segments.run(i, env)
                a = env[layer.activation]
                rows = np.rint(a / layer.sa).astype(np.int64).reshape(-1, a.shape[-1]) + U8_OFFSET
                lost = lost_to_saturation(rows, layer)
                hits = int(np.count_nonzero(lost))
                per_layer[i] += (hits, lost.size)
                formed += lost.size
                saturated += hits
                env[layer.delta] = zero
                if hits:
                    delta = -(lost * (layer.sa * layer.sw)[None]).astype(np.float32)
                    env[layer.delta] = delta.reshape(*a.shape[:-1], layer.w.shape[1])
            segments.run(len(layers), env)
            got.append({k: env[k] for k in outputs})
            advance(len(x))
            if until is not None and time.monotonic() > until:
                break
        shares = {layer.output: float(s / max(f, 1)) for layer, (s, f) in zip(layers, per_layer, strict=True)}
        counts = {**self.counts, "segments": len(layers) + 1, "saturated_fraction": saturated / max(formed, 1),
                  "per_layer": shares, "feeds_done": len(got)}  # fmt: skip
        return {k: np.concatenate([o[k] for o in got]) for k in outputs}, counts


class _Segments:
    """The instrumented graph cut before each correction's Add, run one piece at a time: segment i (i < L) runs the
    nodes from layer i - 1's Add up to layer i's exact GEMM, segment L the rest. So one forward through the pieces,
    with each correction computed between them, gives what the kernel computes; before, the whole graph ran again
    after each layer that saturated (one forward per saturating layer: 49 on ViT-B/16, 19.3 s per image measured).
    A piece is its own onnxruntime session (graph optimisations off, as before: no Q/DQ fused) made when first
    run, its inputs typed from the arrays it is fed; `env` carries every tensor that crosses a cut and drops each
    after the last piece that reads it."""

    def __init__(self, model, layers: list[WeightedGemm], outputs: list[str]):
        g = model.graph
        nodes = list(g.node)
        cut = [next(i for i, n in enumerate(nodes) if layer.delta in n.input) for layer in layers]  # the Adds
        bounds = [0, *cut, len(nodes)]
        self.pieces = [nodes[a:b] for a, b in itertools.pairwise(bounds)]
        if any(a.type in (a.GRAPH, a.GRAPHS) for n in nodes for a in n.attribute):
            raise ValueError("the no-VNNI emulation does not cut graphs with subgraphs (If / Loop / Scan)")
        self.model = model
        self.inits = {t.name: t for t in g.initializer}
        produced = [{o for n in piece for o in n.output if o} for piece in self.pieces]
        last_read = {}  # tensor -> the last piece reading it
        for i, piece in enumerate(self.pieces):
            for n in piece:
                for t in n.input:
                    if t:
                        last_read[t] = i
        for i, layer in enumerate(layers):  # read here between piece i and piece i + 1: kept until then
            last_read[layer.activation] = max(last_read.get(layer.activation, -1), i + 1)
        self.needs, self.gives, self.drop = [], [], []
        for i, piece in enumerate(self.pieces):
            ins = dict.fromkeys(t for n in piece for t in n.input if t and t not in produced[i] and t not in self.inits)
            self.needs.append(list(ins))
            keep = {t for t in produced[i] if last_read.get(t, -1) > i or t in outputs}
            self.gives.append(sorted(keep))
            self.drop.append([t for t, j in last_read.items() if j == i and t not in outputs])
        self.sessions: dict[int, object] = {}

    def _session(self, i: int, env: dict):
        import onnx
        import onnxruntime as ort
        from onnx import helper

        if i not in self.sessions:
            piece = self.pieces[i]
            used = dict.fromkeys(t for n in piece for t in n.input if t in self.inits)
            ins = [helper.make_tensor_value_info(t, helper.np_dtype_to_tensor_dtype(env[t].dtype), None)
                   for t in self.needs[i]]  # fmt: skip
            outs = [onnx.ValueInfoProto(name=t) for t in self.gives[i]]
            g = helper.make_graph(piece, f"segment_{i}", ins, outs, [self.inits[t] for t in used])
            m = helper.make_model(g, opset_imports=self.model.opset_import, ir_version=self.model.ir_version)
            m.functions.extend(self.model.functions)
            opts = ort.SessionOptions()
            opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
            opts.execution_order = ort.ExecutionOrder.PRIORITY_BASED  # node order: tensors freed early (quantize.py)
            # the correction's numba threads run right after each piece: onnxruntime's threads spinning on after a
            # run took their cores (ViT-B/16, 8 images in 2 rounds: 1.15-1.41 s per image spinning, 0.94-1.02 not)
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
            self.sessions[i] = ort.InferenceSession(m.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        return self.sessions[i]

    def run(self, i: int, env: dict) -> None:
        """Run piece i on what `env` holds; its outputs go into `env`, and tensors no later piece reads leave it."""
        if self.gives[i]:
            res = self._session(i, env).run(self.gives[i], {t: env[t] for t in self.needs[i]})
            env.update(zip(self.gives[i], res, strict=True))
        for t in self.drop[i]:
            env.pop(t, None)


def u8s8_reference(q_act: np.ndarray, q_w: np.ndarray) -> np.ndarray:
    """The kernel's arithmetic written out directly, for tests: int8 activations (M, K) and weights (K, N)
    -> the int32 result of VPMADDUBSW pairs (int16-saturated) summed in int32, zero point corrected."""
    u = q_act.astype(np.int64) + U8_OFFSET
    w = q_w.astype(np.int64)
    if u.shape[1] % 2:
        u = np.concatenate([u, np.zeros((u.shape[0], 1), np.int64)], axis=1)
        w = np.concatenate([w, np.zeros((1, w.shape[1]), np.int64)])
    pairs = u[:, 0::2, None] * w[None, 0::2] + u[:, 1::2, None] * w[None, 1::2]  # (M, K/2, N)
    return np.clip(pairs, INT16_MIN, INT16_MAX).sum(axis=1) - U8_OFFSET * w.sum(axis=0)[None]

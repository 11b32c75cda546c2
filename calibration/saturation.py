"""onnxruntime's int8 GEMM on x86 CPUs without VNNI, emulated exactly on any CPU: is `reduce_range` needed?

What those CPUs run (onnxruntime's MLAS, read from its source):
- `QDQS8ToU8Transformer` turns the int8 *activations* of a Q/DQ graph into uint8 with zero point 128
  (u = q + 128, in [0, 255]); weights stay int8. The weighted MatMul / Gemm then runs MLAS's U8S8 kernel.
- Without VNNI (AVX2, or AVX-512 without VNNI) that kernel multiplies with VPMADDUBSW: u8 x s8 products of
  adjacent K elements are added in pairs *with int16 saturation*, p_j = sat16(u[2j] w[2j] + u[2j+1] w[2j+1]),
  then widened and summed in int32; the zero point is corrected exactly (- 128 * sum_k w[k]).
  With VNNI (VPDPBUSD) the products go to int32 directly and nothing saturates: this machine's result.
- A pair can leave int16 only if both weights have the same sign and |w_e| + |w_o| >= 129 (255 * 128 = 32640
  fits); 7-bit weights (`reduce_range`, |w| <= 64) can never saturate. Activation x activation products
  (attention) have no int8 weight and run U8U8 kernels that widen to 16 bits first: no saturation.

`emulate_u8s8_saturation` rewrites a Q/DQ model so each weighted MatMul / Gemm subtracts exactly what
saturation loses: for the few (output, pair) candidates of each layer it gathers the pair's activations,
forms p, and subtracts scale * sum(p - clip(p, -32768, 32767)). Run the result on onnxruntime anywhere and
it computes what an AVX2 machine computes (to float32 rounding), so the int8 gate judges every calibrated
file for those CPUs too, wherever it is calibrated (`calibration/pipeline.py`; the verdict is in the manifest).
"""

from __future__ import annotations

import numpy as np

INT16_MIN, INT16_MAX = -32768, 32767
U8_OFFSET = 128  # QDQS8ToU8Transformer: u = q + 128


def _pair_candidates(qw: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """qw (K, N) int8 weights -> per output column n, the pairs j (k = 2j, 2j+1) that can saturate:
    idx_even, idx_odd (N, C) int64 and w_even, w_odd (N, C) float32, padded with weight 0 (C >= 1)."""
    k, n = qw.shape
    w = qw.astype(np.int64)
    if k % 2:  # MLAS pads K with zeros to a multiple of the pair
        w = np.concatenate([w, np.zeros((1, n), np.int64)])
    we, wo = w[0::2], w[1::2]  # (K/2, N)
    can = (np.sign(we) == np.sign(wo)) & (np.abs(we) + np.abs(wo) >= 129)
    per_col = can.sum(axis=0)
    c = max(int(per_col.max()), 1)
    idx_e = np.zeros((n, c), np.int64)
    idx_o = np.zeros((n, c), np.int64)
    w_e = np.zeros((n, c), np.float32)
    w_o = np.zeros((n, c), np.float32)
    for col in np.nonzero(per_col)[0]:
        j = np.nonzero(can[:, col])[0]
        idx_e[col, : len(j)] = 2 * j
        idx_o[col, : len(j)] = np.minimum(2 * j + 1, k - 1)  # the padded odd element has weight 0
        w_e[col, : len(j)] = we[j, col]
        w_o[col, : len(j)] = wo[j, col]  # 0 for the padding element
    return idx_e, idx_o, w_e, w_o


def emulate_u8s8_saturation(model):
    """Q/DQ int8 ModelProto -> (a new ModelProto computing what onnxruntime computes on an x86 CPU without VNNI,
    per-layer summary). Only MatMul / Gemm fed by a DQ of an int8 initializer (the weight) and a DQ of an
    activation are changed; a layer with no candidate pair is left as it is."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.ModelProto.FromString(model.SerializeToString())  # never edit the caller's graph
    g = model.graph
    inits = {t.name: t for t in g.initializer}
    producer = {o: n for n in g.node for o in n.output}
    layers, new_nodes, new_inits = [], [], []

    def const(name: str, arr: np.ndarray) -> str:
        new_inits.append(numpy_helper.from_array(arr, name))
        return name

    for node in list(g.node):
        if node.op_type not in ("MatMul", "Gemm"):
            continue
        dqs = [producer.get(i) for i in node.input[:2]]
        if not all(d is not None and d.op_type == "DequantizeLinear" for d in dqs):
            continue
        weight_side = [d.input[0] in inits for d in dqs]
        if weight_side != [False, True]:
            continue  # activation x activation (attention), or an unexpected layout
        act_dq, w_dq = dqs
        qw = numpy_helper.to_array(inits[w_dq.input[0]])
        if qw.dtype != np.int8 or qw.ndim != 2:
            continue
        sw = numpy_helper.to_array(inits[w_dq.input[1]]).astype(np.float32)
        sa_name = act_dq.input[1]
        if sa_name not in inits or numpy_helper.to_array(inits[sa_name]).size != 1:
            continue
        trans_b = node.op_type == "Gemm" and any(a.name == "transB" and a.i == 1 for a in node.attribute)
        attrs = {a.name: a for a in node.attribute}
        if ("alpha" in attrs and attrs["alpha"].f != 1.0) or ("transA" in attrs and attrs["transA"].i == 1):
            continue  # not the layout quantize_static writes
        w_kn = qw.T if trans_b else qw  # (K, N)
        idx_e, idx_o, w_e, w_o = _pair_candidates(w_kn)
        n_cand = int((w_e != 0).sum())
        layers.append({"node": node.name, "k": int(w_kn.shape[0]), "n": int(w_kn.shape[1]), "candidates": n_cand,
                       "pairs": int(-(-w_kn.shape[0] // 2) * w_kn.shape[1])})  # fmt: skip
        if n_cand == 0:
            continue
        sa = float(numpy_helper.to_array(inits[sa_name]))
        col_scale = (sa * (sw if sw.size > 1 else np.full(w_kn.shape[1], float(sw), np.float32))).astype(np.float32)
        p = f"sat_{len(layers)}_"
        exact = node.output[0]
        node.output[0] = p + "exact"
        a = act_dq.output[0]
        # u = round(a / sa) + 128: the uint8 activation the kernel sees; a is q * sa exactly
        new_nodes += [
            helper.make_node("Div", [a, const(p + "sa", np.array(sa, np.float32))], [p + "q0"]),
            helper.make_node("Round", [p + "q0"], [p + "q"]),
            helper.make_node("Add", [p + "q", const(p + "off", np.array(U8_OFFSET, np.float32))], [p + "u"]),
            helper.make_node("Gather", [p + "u", const(p + "ie", idx_e)], [p + "ue"], axis=-1),  # (..., N, C)
            helper.make_node("Gather", [p + "u", const(p + "io", idx_o)], [p + "uo"], axis=-1),
            helper.make_node("Mul", [p + "ue", const(p + "we", w_e)], [p + "pe"]),
            helper.make_node("Mul", [p + "uo", const(p + "wo", w_o)], [p + "po"]),
            helper.make_node("Add", [p + "pe", p + "po"], [p + "pair"]),
            helper.make_node(
                "Clip",
                [
                    p + "pair",
                    const(p + "lo", np.array(INT16_MIN, np.float32)),
                    const(p + "hi", np.array(INT16_MAX, np.float32)),
                ],
                [p + "sat"],
            ),
            helper.make_node("Sub", [p + "pair", p + "sat"], [p + "lost"]),
            helper.make_node(
                "ReduceSum", [p + "lost", const(p + "ax", np.array([-1], np.int64))], [p + "lostsum"], keepdims=0
            ),
            helper.make_node("Mul", [p + "lostsum", const(p + "cs", col_scale)], [p + "corr"]),
            helper.make_node("Sub", [p + "exact", p + "corr"], [exact]),
        ]
    g.initializer.extend(new_inits)
    g.node.extend(new_nodes)
    _toposort(g)
    return model, layers


def _toposort(g) -> None:
    """Reorder g.node topologically (the inserted correction sits between a layer and its consumers)."""
    available = {i.name for i in g.input} | {t.name for t in g.initializer} | {""}
    pending, ordered = list(g.node), []
    while pending:
        rest = []
        for n in pending:
            if all(i in available for i in n.input):
                ordered.append(n)
                available.update(n.output)
            else:
                rest.append(n)
        if len(rest) == len(pending):
            raise RuntimeError(f"graph has a cycle or a missing input near {rest[0].name}")
        pending = rest
    del g.node[:]
    g.node.extend(ordered)


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


def no_vnni_outputs(int8_path, input_name: str, feeds: list[np.ndarray]) -> tuple[dict[str, np.ndarray], dict]:
    """The int8 file's outputs as an x86 CPU without VNNI computes them, on any CPU: the emulated graph run with
    onnxruntime's graph optimisations off, so no Q/DQ pair is fused into this machine's int8 kernels (every
    MatMul runs in float on the dequantized integers: the exact int32 sums, to float32 rounding) and the
    saturation is the rewrite's alone. -> (outputs concatenated over the feeds, as `compare.run_feeds`;
    {weighted_gemms, candidate_pairs, pairs}: how many weight pairs can saturate at all)."""
    import onnx
    import onnxruntime as ort

    emulated, layers = emulate_u8s8_saturation(onnx.load(str(int8_path)))
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(emulated.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    outs = [dict(zip(names, session.run(None, {input_name: x}), strict=True)) for x in feeds]
    counts = {"weighted_gemms": len(layers), "candidate_pairs": sum(x["candidates"] for x in layers),
              "pairs": sum(x["pairs"] for x in layers)}  # fmt: skip
    return {k: np.concatenate([o[k] for o in outs]) for k in names}, counts

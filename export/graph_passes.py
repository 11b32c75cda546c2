"""Semantics-preserving rewrites of the exported ONNX graph, run once on the fp32 export.

Every variant (fp16, int8) is derived from the rewritten graph, so all precisions and engines see the
same structure. Each pass returns how many places it changed; the export log prints it.
"""

from __future__ import annotations

import numpy as np


def _scalar(model_inits: dict, name: str) -> float | None:
    from onnx import numpy_helper

    t = model_inits.get(name)
    if t is None:
        return None
    a = numpy_helper.to_array(t)
    return float(a.reshape(-1)[0]) if a.size == 1 else None


def reorder_erf_gelu(model) -> int:
    """Write exact GELU as `(x * (1 + erf(x / sqrt2))) * 0.5` instead of `x * (0.5 * (1 + erf(...)))`.

    torch's ONNX exporter (opset 18) decomposes `nn.GELU()` into Div, Erf, Add, Mul(0.5, .), Mul(x, .).
    ONNX Runtime's GeluFusion recognises the half applied last (or to x), not to `1 + erf`, so the
    exported form runs as five elementwise passes. Moving the 0.5 to the end is the same function (the
    two multiplications commute; the result differs by float rounding, below 1e-7 on ViT-B/16's
    logits) and lets ORT run one (Bias)Gelu kernel: ViT-B/16 batch 1 on the 2-core CPU, fp32 ORT
    ~2% faster. TensorRT fuses the elementwise chain in either order. Returns the number rewritten.
    """
    inits = {t.name: t for t in model.graph.initializer}
    nodes = list(model.graph.node)
    producer = {o: n for n in nodes for o in n.output}
    consumers: dict[str, list] = {}
    for n in nodes:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    graph_outputs = {o.name for o in model.graph.output}

    def only_consumer(name: str):
        c = consumers.get(name, [])
        return c[0] if len(c) == 1 and name not in graph_outputs else None

    count = 0
    for erf in nodes:
        if erf.op_type != "Erf":
            continue
        div = producer.get(erf.input[0])
        add = only_consumer(erf.output[0])
        half = only_consumer(add.output[0]) if add is not None and add.op_type == "Add" else None
        mul_x = only_consumer(half.output[0]) if half is not None and half.op_type == "Mul" else None
        if div is None or div.op_type != "Div" or mul_x is None or mul_x.op_type != "Mul":
            continue
        x = div.input[0]
        one = [i for i in add.input if i != erf.output[0]]
        half_c = [i for i in half.input if i != add.output[0]]
        x_in = [i for i in mul_x.input if i != half.output[0]]
        if not (
            len(one) == 1
            and len(half_c) == 1
            and x_in == [x]
            and np.isclose(_scalar(inits, div.input[1]) or 0.0, np.sqrt(2.0), rtol=1e-6)
            and _scalar(inits, one[0]) == 1.0
            and _scalar(inits, half_c[0]) == 0.5
        ):
            continue
        # half: Mul(0.5, 1+erf) -> Mul(x, 1+erf); mul_x: Mul(x, half) -> Mul(x*(1+erf), 0.5)
        half.input[:] = [x, add.output[0]]
        mul_x.input[:] = [half.output[0], half_c[0]]
        count += 1
    return count

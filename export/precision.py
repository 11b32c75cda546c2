"""fp32 ONNX -> mixed fp16 ONNX, with named parts kept in fp32 (DESIGN: precision lives in the graph).

Why not onnxconverter-common / onnxruntime.transformers.float16: on the graphs our exporter writes,
both round-trip every value *between* two blocked nodes through fp16 (fp32 -> Cast fp16 -> Cast fp32),
so a "kept in fp32" head is not fp32 at all; onnxconverter-common also produces a graph the checker
rejects when a graph output feeds another node (our `feature` feeds the head), and the onnxruntime
copy emits duplicate Cast nodes when one initializer is shared by several blocked nodes (dynamo
deduplicates equal constants). This pass is the same idea, done per edge: every node runs in one
precision, and a Cast is inserted only on an edge whose producer and consumer differ.

Input/output types are kept (fp32 in, fp32 out), so an fp16 file is a drop-in for the fp32 one.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np

from export.graph_passes import sink_transpose_below_matmul
from export.onnx_export import EXTERNAL_DATA_BYTES, save_onnx

FLOAT, FLOAT16 = 1, 10  # onnx.TensorProto.FLOAT / FLOAT16
# ops that cannot take fp16 data, or whose output dtype is random/attribute-driven: always fp32
ALWAYS_FP32 = {"Range", "RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial"}
# inputs that the ONNX spec types as float32 whatever the data type (Resize roi/scales)
FP32_INPUTS = {"Resize": {1, 2}}
FP16_MAX = float(np.finfo(np.float16).max)


def tail_after_last(model, op_type: str) -> list[str]:
    """Names of the last `op_type` node and of every node downstream of it (e.g. post-LN projection + head)."""
    nodes = list(model.graph.node)
    idx = [i for i, n in enumerate(nodes) if n.op_type == op_type]
    if not idx:
        raise ValueError(f"graph has no {op_type} node to anchor the fp32 tail")
    start = nodes[idx[-1]]
    live, names = set(start.output), [start.name]
    for n in nodes[idx[-1] + 1 :]:
        if any(i in live for i in n.input):
            live.update(n.output)
            names.append(n.name)
    return names


def convert_to_fp16(model, keep_ops: Iterable[str] = (), keep_nodes: Iterable[str] = ()):
    """Return a new ModelProto: nodes in `keep_ops` / `keep_nodes` (and ALWAYS_FP32) compute in fp32, the rest fp16."""
    import onnx
    from onnx import helper, numpy_helper

    keep_ops, keep_nodes = set(keep_ops) | ALWAYS_FP32, set(keep_nodes)
    model = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    g = model.graph
    if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for n in g.node for a in n.attribute):
        raise ValueError("fp16 conversion does not handle control-flow subgraphs (If/Loop/Scan)")
    missing = keep_nodes - {n.name for n in g.node}
    if missing:
        raise ValueError(f"keep_nodes not in the graph: {sorted(missing)}")

    elem = {v.name: v.type.tensor_type.elem_type for v in [*g.input, *g.value_info, *g.output]}
    inits = {t.name: t for t in g.initializer}
    elem.update({name: t.data_type for name, t in inits.items()})
    now = {name: t for name, t in elem.items() if t == FLOAT and (name in inits or name in {i.name for i in g.input})}

    new_nodes, new_inits, casts = [], [], {}

    def as_type(name: str, want: int) -> str:
        if now.get(name, want) == want:
            return name
        key = (name, want)
        if key not in casts:
            suffix = "__fp16" if want == FLOAT16 else "__fp32"
            if name in inits and want == FLOAT16:  # convert the constant once instead of casting at run time
                arr = np.clip(numpy_helper.to_array(inits[name]), -FP16_MAX, FP16_MAX).astype(np.float16)
                new_inits.append(numpy_helper.from_array(arr, name + suffix))
            else:
                new_nodes.append(
                    helper.make_node("Cast", [name], [name + suffix], to=want, name=f"cast_{name}{suffix}")
                )
            now[name + suffix] = want
            casts[key] = name + suffix
        return casts[key]

    for node in g.node:
        fp32 = node.op_type in keep_ops or node.name in keep_nodes
        want = FLOAT if fp32 else FLOAT16
        for i, name in enumerate(node.input):
            if name and elem.get(name) == FLOAT:
                node.input[i] = as_type(name, FLOAT if i in FP32_INPUTS.get(node.op_type, ()) else want)
        if not fp32:
            for a in node.attribute:
                if node.op_type == "Cast" and a.name == "to" and a.i == FLOAT:
                    a.i = FLOAT16
                if node.op_type in ("Constant", "ConstantOfShape") and a.name == "value" and a.t.data_type == FLOAT:
                    a.t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(a.t).astype(np.float16), a.t.name))
        for name in node.output:
            if elem.get(name) == FLOAT:
                now[name] = want
        new_nodes.append(node)

    # graph outputs keep fp32: rename an fp16 producer's tensor and cast it back under the output's name
    for out in g.output:
        if now.get(out.name) == FLOAT16:
            inner = out.name + "__fp16out"
            for n in new_nodes:
                n.output[:] = [inner if o == out.name else o for o in n.output]
                n.input[:] = [inner if i == out.name else i for i in n.input]
            new_nodes.append(helper.make_node("Cast", [inner], [out.name], to=FLOAT, name=f"cast_{out.name}_out"))

    del g.node[:]
    g.node.extend(new_nodes)
    g.initializer.extend(new_inits)
    used = {i for n in g.node for i in n.input}
    keep = [t for t in g.initializer if t.name in used]
    del g.initializer[:]
    g.initializer.extend(keep)
    del g.value_info[:]
    return model  # save_onnx runs the full checker and strict shape inference on the written file


def fp16_nodes(model, keep_ops: Iterable[str] = (), tail_after: str | None = None) -> list[str]:
    """Names of the nodes `write_fp16` runs in fp16 with these settings (what `--repair` may keep in fp32)."""
    kept = set(keep_ops) | ALWAYS_FP32
    tail = set(tail_after_last(model, tail_after)) if tail_after else set()
    return [n.name for n in model.graph.node if n.op_type not in kept and n.name not in tail]


def write_fp16(
    src: str | Path,
    dst: str | Path,
    keep_ops: Iterable[str] = (),
    keep_nodes: Iterable[str] = (),
    tail_after: str | None = None,
    external_data_bytes: int = EXTERNAL_DATA_BYTES,
) -> dict:
    """Convert `src` and write `dst` (checked, external data when large); -> summary (node counts, what was kept)."""
    import onnx

    model = onnx.load(str(src))
    keep_nodes = list(keep_nodes) + (tail_after_last(model, tail_after) if tail_after else [])
    m16 = convert_to_fp16(model, keep_ops, keep_nodes)
    sunk = sink_transpose_below_matmul(m16)  # a default onnxruntime CPU session crashes otherwise (graph_passes.py)
    save_onnx(m16, dst, external_data_bytes)
    kept = {n.name for n in model.graph.node if n.op_type in set(keep_ops) | ALWAYS_FP32} | set(keep_nodes)
    return {
        "keep_ops": sorted(set(keep_ops)),
        "fp32_tail_after": tail_after,
        "nodes_fp32": len(kept),
        "nodes_fp16": len(model.graph.node) - len(kept),
        "transposes_sunk_below_matmul": sunk,
        "casts_added": sum(n.op_type == "Cast" for n in m16.graph.node)
        - sum(n.op_type == "Cast" for n in model.graph.node),
    }

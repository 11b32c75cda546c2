"""Generic PyTorch -> ONNX export (torch.onnx dynamo exporter) with the checks every model kind gets.

A model kind plugs in by giving a module, input/output names and an example; nothing here knows
about detectors. The example uses batch >= 2 with `dynamic_shapes`: with a batch-1 example the dynamo
exporter silently fixes the batch dimension to 1.
"""

from __future__ import annotations

from pathlib import Path

import torch

from toolkit.engines.base import TensorSpec
from toolkit.io import atomic_path

OPSET = 18


def export_onnx(
    module: torch.nn.Module,
    example: torch.Tensor,
    path: str | Path,
    input_name: str,
    output_names: list[str],
    max_batch: int = 1024,
) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """Export with a dynamic batch on dim 0; full onnx.checker + shape inference; -> (inputs, outputs) specs."""
    import onnx

    if example.shape[0] < 2:
        raise ValueError("export example needs batch >= 2 (a batch-1 example fixes the batch dimension)")
    batch = torch.export.Dim("batch", min=1, max=max_batch)
    prog = torch.onnx.export(
        module.eval(),
        (example,),
        dynamo=True,
        input_names=[input_name],
        output_names=output_names,
        dynamic_shapes={next(iter(_forward_args(module))): {0: batch}},
        opset_version=OPSET,
        verbose=False,
    )
    path = Path(path)
    with atomic_path(path) as tmp:
        prog.save(str(tmp))
        model = onnx.load(str(tmp))
        onnx.checker.check_model(model, full_check=True)
        model = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    inputs = [_spec(v) for v in model.graph.input]
    outputs = [_spec(v) for v in model.graph.output]
    for s in inputs + outputs:
        if not isinstance(s.shape[0], str):
            raise RuntimeError(f"{path}: {s.name} has a fixed batch dimension {s.shape[0]} after export")
    return inputs, outputs


def _forward_args(module: torch.nn.Module) -> list[str]:
    import inspect

    return [p for p in inspect.signature(module.forward).parameters if p != "self"]


def _spec(v) -> TensorSpec:
    from onnx import helper

    dims = tuple(d.dim_param if d.dim_param else d.dim_value for d in v.type.tensor_type.shape.dim)
    dtype = helper.tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type).name
    return TensorSpec(v.name, dims, dtype)

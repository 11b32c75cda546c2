"""Generic PyTorch -> ONNX export (torch.onnx dynamo exporter) with the checks every model kind gets.

A model kind plugs in by giving a module, input/output names and an example; nothing here knows
about detectors. The example uses batch >= 2 with `dynamic_shapes`: with a batch-1 example the dynamo
exporter silently fixes the batch dimension to 1.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch

from export.graph_passes import reorder_erf_gelu
from toolkit.engines.base import TensorSpec
from toolkit.io import umask

OPSET = 18
# weights go to one external-data file "<name>.onnx.data" above this size (protobuf's hard limit is 2 GiB)
EXTERNAL_DATA_BYTES = 1 << 30


def export_onnx(
    module: torch.nn.Module,
    example: torch.Tensor,
    path: str | Path,
    input_name: str,
    output_names: list[str],
    max_batch: int = 1024,
    external_data_bytes: int = EXTERNAL_DATA_BYTES,
    log=lambda msg: None,
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
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        prog.save(str(Path(tmp) / "model.onnx"), external_data=True)  # never hits the 2 GiB protobuf limit
        model = onnx.load(str(Path(tmp) / "model.onnx"))  # external weights loaded into memory
    n_gelu = reorder_erf_gelu(model)  # GELU in the operand order ONNX Runtime fuses (export/graph_passes.py)
    if n_gelu:
        log(f"graph pass: {n_gelu} GELU(s) written in the order ONNX Runtime fuses")
    save_onnx(model, path, external_data_bytes)
    model = onnx.load(str(path), load_external_data=False)
    inputs = [_spec(v) for v in model.graph.input]
    outputs = [_spec(v) for v in model.graph.output]
    for s in inputs + outputs:
        if not isinstance(s.shape[0], str):
            raise RuntimeError(f"{path}: {s.name} has a fixed batch dimension {s.shape[0]} after export")
    return inputs, outputs


def weight_bytes(model) -> int:
    return sum(len(t.raw_data) or t.ByteSize() for t in model.graph.initializer)


def save_onnx(model, path: str | Path, external_data_bytes: int = EXTERNAL_DATA_BYTES) -> list[Path]:
    """Write `model` to `path` (+ `<name>.data` when its weights exceed `external_data_bytes`), then run
    onnx.checker's full check and strict shape inference on the written file (path-based: works past 2 GiB).

    Written in a temporary directory beside `path` and renamed into place (data file first); -> files written.
    """
    import onnx

    path = Path(path)
    data = path.with_name(path.name + ".data")
    external = weight_bytes(model) > external_data_bytes
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        staged = Path(tmp) / path.name
        if external:
            onnx.save_model(
                model,
                str(staged),
                save_as_external_data=True,
                all_tensors_to_one_file=True,
                location=data.name,
                size_threshold=1024,
            )
        else:
            onnx.save_model(model, str(staged))
        onnx.checker.check_model(str(staged), full_check=True)
        onnx.shape_inference.infer_shapes_path(str(staged), str(Path(tmp) / "inferred.onnx"), strict_mode=True)
        mode = 0o666 & ~umask()
        if external:
            os.chmod(Path(tmp) / data.name, mode)
            os.replace(Path(tmp) / data.name, data)
        elif data.exists():
            data.unlink()  # a stale data file from an earlier, larger export
        os.chmod(staged, mode)
        os.replace(staged, path)
    return [path, data] if external else [path]


def _forward_args(module: torch.nn.Module) -> list[str]:
    import inspect

    return [p for p in inspect.signature(module.forward).parameters if p != "self"]


def _spec(v) -> TensorSpec:
    from onnx import helper

    dims = tuple(d.dim_param if d.dim_param else d.dim_value for d in v.type.tensor_type.shape.dim)
    dtype = helper.tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type).name
    return TensorSpec(v.name, dims, dtype)

"""A standard Triton model repository for the native backends, written from artifacts:
`toolkit triton-repo ARTIFACT [--purify PURIFIER] --out DIR`.

`toolkit serve` runs on PyTriton, whose bundled server has only the Python backend. NVIDIA's Triton container
(not on PyPI) has the native onnxruntime and TensorRT backends, which need no Python in the request path.
For it this writes:
- `detector_<precision>`: platform `onnxruntime_onnx`, one per precision file of the artifact (fp32, fp16, int8;
  bf16 is an OpenVINO execution precision, not a file, so it has no native model);
- `detector_<precision>_trt_<plan id>`: platform `tensorrt_plan`, one per TensorRT plan built into the artifact
  (`toolkit export --trt`); a plan loads only in the TensorRT version and GPU generation that built it, which
  its parameters record;
- with a purifier: `purifier_<precision>`, `normalise` (a two-node ONNX graph made here: [0, 1] pixels -> the
  detector's normalisation) and the ensembles `purify_detect_<precision>`: purifier -> normalise -> detector.

Every config is built as Triton's own protobuf (`tritonclient.grpc.model_config_pb2.ModelConfig`) from the
ONNX graph's input and output names, types and dims, and written with protobuf's text format, so it parses
with Triton's schema by construction. Triton conventions: with max_batch_size > 0 the batch dimension is left
out of dims; an output of shape [N] is declared dims [1] with reshape [] (Triton then hands out [N, 1]). The
detector's threshold, preprocessing and source hash travel as config parameters (clients need them to turn
logits into decisions and images into tensors).
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

MARKER = ".toolkit-triton-repo"  # written at the root; a directory without it is never replaced

ONNX_TO_TRITON = {1: "TYPE_FP32", 10: "TYPE_FP16", 16: "TYPE_BF16", 11: "TYPE_FP64", 6: "TYPE_INT32", 7: "TYPE_INT64",
                  3: "TYPE_INT8", 2: "TYPE_UINT8", 9: "TYPE_BOOL"}  # fmt: skip


@dataclass
class RepositoryConfig:
    max_batch: int = 64
    max_queue_delay_us: int = 2000
    instances: int = 1
    gpu: bool = False  # instance_group kind: KIND_GPU, else KIND_CPU (TensorRT plans are always KIND_GPU)
    tuned: bool = False  # --config auto: max_batch, max_queue_delay_us and instances from `loadtest --tune`


@dataclass(frozen=True)
class TensorIO:
    name: str
    data_type: str  # Triton's TYPE_*
    dims: tuple[int, ...]  # without the batch dimension


def onnx_io(path: str | Path) -> tuple[list[TensorIO], list[TensorIO]]:
    """(inputs, outputs) of an ONNX file, batch dimension dropped; a dynamic non-batch dimension is refused."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    init = {t.name for t in model.graph.initializer}

    def spec(v) -> TensorIO:
        t = v.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim]
        if not dims or any(d < 1 for d in dims[1:]):
            raise ValueError(f"{path}: {v.name} has shape {dims}: needs a batch dimension and fixed others")
        if t.elem_type not in ONNX_TO_TRITON:
            raise ValueError(f"{path}: {v.name} has ONNX element type {t.elem_type}, which has no Triton type here")
        return TensorIO(v.name, ONNX_TO_TRITON[t.elem_type], tuple(dims[1:]))

    inputs = [spec(v) for v in model.graph.input if v.name not in init]
    return inputs, [spec(v) for v in model.graph.output]


def _pb():
    try:
        from google.protobuf import text_format
        from tritonclient.grpc import model_config_pb2
    except ImportError:
        raise RuntimeError(
            "writing a Triton model repository needs tritonclient (pip install 'causal-deploy-toolkit[serve]')"
        ) from None
    return model_config_pb2, text_format


def _tensor(msg, io: TensorIO, reshape: bool = True) -> None:
    """`reshape`: declare an [N] tensor as dims [1] + reshape [] (a model's own IO); ensembles take plain [1] (a
    reshape on an ensemble's tensor is known to break its shape checks, triton-inference-server/server#5943)."""
    pb, _ = _pb()
    msg.name = io.name
    msg.data_type = pb.DataType.Value(io.data_type)
    if io.dims:
        msg.dims.extend(io.dims)
    else:  # [N] per batch: one value per item
        msg.dims.append(1)
        if reshape:
            msg.reshape.SetInParent()  # reshape { shape: [ ] }


def model_config(name: str, platform: str, inputs, outputs, cfg: RepositoryConfig, gpu: bool, params: dict):
    pb, _ = _pb()
    c = pb.ModelConfig(name=name, platform=platform, max_batch_size=cfg.max_batch)
    for io in inputs:
        _tensor(c.input.add(), io, platform != "ensemble")
    for io in outputs:
        _tensor(c.output.add(), io, platform != "ensemble")
    if platform != "ensemble":
        c.dynamic_batching.max_queue_delay_microseconds = cfg.max_queue_delay_us
        g = c.instance_group.add()
        g.count = cfg.instances
        g.kind = pb.ModelInstanceGroup.KIND_GPU if gpu else pb.ModelInstanceGroup.KIND_CPU
    for k, v in params.items():
        c.parameters[k].string_value = v if isinstance(v, str) else json.dumps(v, sort_keys=True)
    return c


def _copy_onnx(src: Path, version_dir: Path, name: str = "model.onnx") -> None:
    """The ONNX file as <version>/model.onnx, with any external-data file under the name the graph refers to."""
    import onnx

    version_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, version_dir / name)
    model = onnx.load(str(src), load_external_data=False)
    locations = {
        e.value
        for t in model.graph.initializer
        if t.data_location == onnx.TensorProto.EXTERNAL
        for e in t.external_data
        if e.key == "location"
    }
    for loc in locations:
        shutil.copyfile(src.parent / loc, version_dir / loc)


def normalise_model(size: int, mean, std):
    """[0, 1] pixels `purified` -> `images` = (x - mean) / std: the step between purifier and detector."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    m = numpy_helper.from_array(np.asarray(mean, np.float32).reshape(1, 3, 1, 1), "mean")
    s = numpy_helper.from_array(np.asarray(std, np.float32).reshape(1, 3, 1, 1), "std")
    graph = helper.make_graph(
        [
            helper.make_node("Sub", ["purified", "mean"], ["centred"]),
            helper.make_node("Div", ["centred", "std"], ["images"]),
        ],
        "normalise",
        [helper.make_tensor_value_info("purified", TensorProto.FLOAT, ["batch", 3, size, size])],
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 3, size, size])],
        [m, s],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="causal-deploy-toolkit")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def _ensemble(name: str, steps: list[tuple[str, dict, dict]], inputs, outputs, cfg: RepositoryConfig):
    """steps: (model, {model input: ensemble tensor}, {model output: ensemble tensor})."""
    c = model_config(name, "ensemble", inputs, outputs, cfg, False, {})
    for model, imap, omap in steps:
        s = c.ensemble_scheduling.step.add(model_name=model, model_version=-1)
        for k, v in imap.items():
            s.input_map[k] = v
        for k, v in omap.items():
            s.output_map[k] = v
    return c


def write_model_repository(detector, out: str | Path, purifier=None, cfg: RepositoryConfig | None = None, log=print):
    """Write the repository to `out` (staged beside it, then swapped in); -> the model names."""
    import tempfile

    from toolkit import kinds
    from toolkit.artifact import Artifact
    from toolkit.engines.trt_engine import PLANS
    from toolkit.io import read_json

    cfg = cfg or RepositoryConfig()
    if cfg.tuned:
        from toolkit.serving.sizing import tuned

        cfg = tuned(cfg, detector, ("max_batch", "max_queue_delay_us", "instances"), log)
    if cfg.max_batch < 1 or cfg.instances < 1 or cfg.max_queue_delay_us < 0:
        raise ValueError("need --max-batch >= 1, --instances >= 1 and --max-queue-delay-us >= 0")
    det = detector if isinstance(detector, Artifact) else Artifact.open(detector)
    kinds.for_artifact(det).require("detects", f"{det.dir}: a Triton detector model")
    pur = purifier if purifier is None or isinstance(purifier, Artifact) else Artifact.open(purifier)
    if pur is not None:
        kinds.for_artifact(pur).require("purifies", f"{pur.dir}: the ensemble's purifier")
        if pur.preprocess["size"] != det.preprocess["size"]:
            raise ValueError(
                f"{pur.dir} works at {pur.preprocess['size']} px, {det.dir} at {det.preprocess['size']} px"
            )
    out = Path(out)
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / MARKER).is_file())):
        raise ValueError(
            f"{out} exists and is not a model repository written by 'toolkit triton-repo': choose another --out"
        )
    _, text_format = _pb()
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    configs: dict[str, object] = {}
    try:

        def add(name: str, config, files: Path | None = None, plan: Path | None = None) -> None:
            d = stage / name
            d.mkdir()
            if files is not None:
                _copy_onnx(files, d / "1")
            if plan is not None:
                (d / "1").mkdir()
                shutil.copyfile(plan, d / "1" / "model.plan")
            (d / "config.pbtxt").write_text(text_format.MessageToString(config), encoding="utf-8")
            configs[name] = config

        def det_params(precision: str) -> dict:  # each precision decides at its own sealed operating point
            return {
                "threshold": repr(det.threshold_for(precision)),
                "preprocess": det.preprocess,
                "source_sha256": det.manifest.get("source_sha256") or "",
            }

        file_precisions = [p for p, v in det.precisions.items() if not v.get("execution")]
        for p, v in det.precisions.items():
            if v.get("execution"):
                log(
                    f"{p}: an execution precision of {v.get('engines')} on the {v['file']} file; no native Triton model"
                )
        for p in file_precisions:
            src = det.onnx_path(p)
            ins, outs = onnx_io(src)
            add(
                f"detector_{p}",
                model_config(f"detector_{p}", "onnxruntime_onnx", ins, outs, cfg, cfg.gpu, det_params(p)),
                src,
            )
        for meta_path in sorted((det.dir / PLANS).glob("*.json")):
            meta = read_json(meta_path)
            key, p = meta["key"], meta_path.name.split(".")[0]
            plan = meta_path.with_suffix(".plan")
            if p not in file_precisions or not plan.is_file():
                continue
            ins, outs = onnx_io(det.dir / meta["onnx"])
            top = min(cfg.max_batch, *(shape[2][0] for shape in key["profile"].values()))
            plan_cfg = RepositoryConfig(top, cfg.max_queue_delay_us, cfg.instances, True)
            name = f"detector_{p}_trt_{key['id'][:8]}"
            params = {**det_params(p), "tensorrt": key["tensorrt"], "compute_capability": key["compute_capability"]}
            add(name, model_config(name, "tensorrt_plan", ins, outs, plan_cfg, True, params), plan=plan)
        if pur is not None:
            pur_precisions = [p for p, v in pur.precisions.items() if not v.get("execution")]
            for p in pur_precisions:
                src = pur.onnx_path(p)
                ins, outs = onnx_io(src)
                add(
                    f"purifier_{p}", model_config(f"purifier_{p}", "onnxruntime_onnx", ins, outs, cfg, cfg.gpu, {}), src
                )
            pre = det.preprocess
            norm = normalise_model(pre["size"], pre["mean"], pre["std"])
            nd = stage / "normalise" / "1"
            nd.mkdir(parents=True)
            import onnx

            onnx.save(norm, str(nd / "model.onnx"))
            n_in, n_out = onnx_io(nd / "model.onnx")
            config = model_config("normalise", "onnxruntime_onnx", n_in, n_out, cfg, cfg.gpu, {})
            (stage / "normalise" / "config.pbtxt").write_text(text_format.MessageToString(config), encoding="utf-8")
            configs["normalise"] = config
            for p in file_precisions:
                pp = p if p in pur_precisions else "fp32"  # the purifier has no int8: it runs fp32 there
                p_in, p_out = onnx_io(pur.onnx_path(pp))
                d_in, d_out = onnx_io(det.onnx_path(p))
                name = f"purify_detect_{p}"
                steps = [
                    (f"purifier_{pp}", {p_in[0].name: "images"}, {p_out[0].name: "purified"}),
                    ("normalise", {"purified": "purified"}, {"images": "normalised"}),
                    (f"detector_{p}", {d_in[0].name: "normalised"}, {o.name: o.name for o in d_out}),
                ]
                ens_in = [TensorIO("images", p_in[0].data_type, p_in[0].dims)]
                add(name, _ensemble(name, steps, ens_in, d_out, cfg))
        (stage / MARKER).write_text(
            json.dumps({"detector": str(det.dir), "purifier": str(pur.dir) if pur else None, "models": sorted(configs)})
            + "\n"
        )
        if out.exists():
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            out.rename(old)
            stage.rename(out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            stage.rename(out)
    finally:
        if stage.exists():
            shutil.rmtree(stage, ignore_errors=True)
    return sorted(configs)

"""ONNX -> TensorRT plan (TensorRT 10 / 11 builder API), cached beside the artifact.

The network is strongly typed (TensorRT 11 has no other kind): each layer runs in the precision the
ONNX graph gives it, so fp32 / fp16 / int8 (Q/DQ) files need no precision flags. TF32 is cleared unless asked
for, as Polygraphy does: TensorRT enables it by default, and an fp32 file must run in fp32 (its gate is 1e-4 on
the logits; TF32 keeps 10 mantissa bits). One optimisation profile over the batch range, a timing cache shared
by every plan of the artifact, a workspace limit.
Plans go to <artifact>/plans/<precision>.<key id>.plan with a JSON key (toolkit.engines.trt_engine).
"""

from __future__ import annotations

from pathlib import Path

from toolkit.engines.trt_engine import PLANS, batch_profile, machine, plan_key, plan_paths, unavailable_reason

TIMING_CACHE = "timing.cache"


def build_plan(
    onnx_path: str | Path,
    plan_path: str | Path,
    profile: dict[str, list[list[int]]],
    workspace_mib: int = 4096,
    timing_cache: str | Path | None = None,
    log=print,
    tf32: bool = False,
) -> Path:
    """Parse `onnx_path` (external-data weights are read from beside it), build, write `plan_path` atomically."""
    import tensorrt as trt

    from toolkit.io import atomic_path

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    strongly_typed = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)  # implicit in TRT 11
    network = builder.create_network(0 if strongly_typed is None else 1 << int(strongly_typed))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):  # parse_from_file resolves external data by path
        errors = "; ".join(parser.get_error(i).desc() for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mib << 20)
    if not tf32:
        config.clear_flag(trt.BuilderFlag.TF32)
    opt = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        name = network.get_input(i).name
        if name not in profile:
            raise ValueError(f"{onnx_path}: input {name!r} has no profile shapes (profile has {sorted(profile)})")
        opt.set_shape(name, *[tuple(s) for s in profile[name]])
    config.add_optimization_profile(opt)
    cache_path = Path(timing_cache) if timing_cache else None
    cache = config.create_timing_cache(cache_path.read_bytes() if cache_path and cache_path.is_file() else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)
    log(f"building TensorRT plan for {onnx_path} (minutes for a full-size model) ...")
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"TensorRT failed to build a plan from {onnx_path} (see the TensorRT log above)")
    with atomic_path(Path(plan_path)) as tmp:
        tmp.write_bytes(bytes(serialized))
    if cache_path:
        with atomic_path(cache_path) as tmp:
            tmp.write_bytes(bytes(config.get_timing_cache().serialize()))
    return Path(plan_path)


def build_artifact_plans(
    artifact,
    batches: tuple[int, int, int] = (1, 8, 32),
    workspace_mib: int = 4096,
    precisions: tuple[str, ...] | None = None,
    log=print,
    tf32: bool = False,
) -> dict[str, Path]:
    """Build (or reuse, when the key matches) one plan per precision of the artifact (an opened `Artifact`, not
    verified again, or its directory); -> precision -> plan path."""
    from toolkit.artifact import Artifact
    from toolkit.io import sha256_file, write_json

    reason = unavailable_reason()
    if reason:
        raise RuntimeError(f"cannot build TensorRT plans: {reason}")
    lo, mid, hi = batches
    if not 1 <= lo <= mid <= hi:
        raise ValueError(f"TensorRT profile batches must satisfy 1 <= min <= opt <= max, got {batches}")
    art = artifact if isinstance(artifact, Artifact) else Artifact.open(artifact)
    d = art.dir
    here = machine()
    profile = batch_profile(art.manifest["inputs"], batches)
    (d / PLANS).mkdir(exist_ok=True)
    built = {}
    for precision in precisions or tuple(art.precisions):
        onnx_file = art.require(precision)["file"]
        key = plan_key(art.files[onnx_file], here, profile, tf32)
        plan, meta = plan_paths(d, precision, key)
        if plan.is_file() and meta.is_file():
            log(f"{precision}: cached plan {plan.name} matches this machine")
        else:
            build_plan(d / onnx_file, plan, profile, workspace_mib, d / PLANS / TIMING_CACHE, log, tf32)
            write_json(
                meta, {"key": key, "sha256": sha256_file(plan), "onnx": onnx_file, "workspace_mib": workspace_mib}
            )
        built[precision] = plan
    return built

"""A strict stand-in for the `tensorrt` Python module (TensorRT 10.x and 11.x), for tests on machines without it.

It defines exactly the calls this toolkit may use, with the parameter names and return types of the documented
bindings (docs.nvidia.com/deeplearning/tensorrt: Python API, Core/{Logger,Builder,BuilderConfig,Network,
OnnxParser,Runtime,Engine,ExecutionContext,TimingCache,OptimizationProfile}, and "Migrating from TensorRT 10.x
to 11.x": the precision flags BuilderFlag.FP16/INT8/BF16/FP8/INT4/FP4 are gone in 11, STRONGLY_TYPED is accepted
and ignored there). Nothing else exists: an invented or misspelled attribute raises AttributeError, a wrong
argument list raises TypeError, so such a mistake fails a test instead of passing silently.

The builder side records what it was asked (`Module.calls`); the runtime side executes a tiny known network on
CPU torch tensors found by their addresses (`CpuDevice` keeps the registry): output `logit` = sum over each
input row, `feature` = the input row's first four values, so a test can check shapes, addresses and slicing.
"""

from __future__ import annotations

import enum
import types

import numpy as np


class _Enum(enum.Enum):
    """pybind11 enums: members with `.name` and `int()`, not equal to plain ints."""

    def __int__(self) -> int:
        return self.value


def _dtype_enum(version: int):
    names = ["FLOAT", "HALF", "INT8", "INT32", "BOOL", "UINT8", "FP8", "BF16", "INT64", "INT4", "FP4", "E8M0"]
    return _Enum("DataType", {n: i for i, n in enumerate(names)})


def _builder_flags(version: int):
    common = ["GPU_FALLBACK", "REFIT", "DISABLE_TIMING_CACHE", "TF32", "SPARSE_WEIGHTS", "SAFETY_SCOPE",
              "VERSION_COMPATIBLE", "EXCLUDE_LEAN_RUNTIME", "STRIP_PLAN", "REFIT_IDENTICAL", "WEIGHT_STREAMING",
              "EDITABLE_TIMING_CACHE", "ERROR_ON_TIMING_CACHE_MISS"]  # fmt: skip
    removed_in_11 = ["FP16", "INT8", "BF16", "FP8", "INT4", "FP4", "OBEY_PRECISION_CONSTRAINTS",
                     "PREFER_PRECISION_CONSTRAINTS", "DIRECT_IO"]  # fmt: skip
    return _Enum("BuilderFlag", {n: i for i, n in enumerate(common + (removed_in_11 if version < 11 else []))})


def make_module(version: int = 10, network_inputs=(("images", (-1, 3, 32, 32)),), io=None):
    """A `tensorrt` module stand-in. `io`: the deserialized engine's tensors, [(name, mode, DataType name, shape,
    profile (min, opt, max) for inputs)]; default: images (fp32) -> logit (N,), feature (N, 4)."""
    calls: list[tuple[str, tuple, dict]] = []
    DataType = _dtype_enum(version)
    BuilderFlag = _builder_flags(version)
    pools = (
        "WORKSPACE",
        "DLA_MANAGED_SRAM",
        "DLA_LOCAL_DRAM",
        "DLA_GLOBAL_DRAM",
        "TACTIC_DRAM",
        "TACTIC_SHARED_MEMORY",
    )
    MemoryPoolType = _Enum("MemoryPoolType", {n: i for i, n in enumerate(pools)})
    flag_names = {"STRONGLY_TYPED": 1, "PREFER_AOT_PYTHON_PLUGINS": 2, "PREFER_JIT_PYTHON_PLUGINS": 3}
    if version < 11:
        flag_names["EXPLICIT_BATCH"] = 0
    NetworkDefinitionCreationFlag = _Enum("NetworkDefinitionCreationFlag", flag_names)
    TensorIOMode = _Enum("TensorIOMode", {"NONE": 0, "INPUT": 1, "OUTPUT": 2})
    io = io or [
        ("images", "INPUT", "FLOAT", (-1, 3, 32, 32), ((1, 3, 32, 32), (8, 3, 32, 32), (32, 3, 32, 32))),
        ("logit", "OUTPUT", "FLOAT", (-1,), None),
        ("feature", "OUTPUT", "FLOAT", (-1, 4), None),
    ]

    def record(name, *a, **k):
        calls.append((name, a, k))

    def nptype(trt_type):
        table = {"FLOAT": np.float32, "HALF": np.float16, "INT8": np.int8, "INT32": np.int32, "BOOL": np.bool_,
                 "UINT8": np.uint8, "INT64": np.int64}  # fmt: skip
        if trt_type.name not in table:
            raise TypeError(f"Could not resolve TensorRT datatype to an equivalent numpy datatype. ({trt_type})")
        return table[trt_type.name]

    class ILogger:
        pass

    class Logger(ILogger):
        INTERNAL_ERROR, ERROR, WARNING, INFO, VERBOSE = 0, 1, 2, 3, 4

        def __init__(self, min_severity=WARNING):
            if not isinstance(min_severity, int):
                raise TypeError("Logger(): min_severity must be a Logger.Severity")
            self.min_severity = min_severity

    class Dims(tuple):
        pass

    class ITensor:
        def __init__(self, name, shape, dtype):
            self.name, self.shape, self.dtype = name, Dims(shape), dtype

    class INetworkDefinition:
        def __init__(self, flags):
            self.flags = flags
            self._inputs = [ITensor(n, s, DataType.FLOAT) for n, s in network_inputs]

        @property
        def num_inputs(self) -> int:
            return len(self._inputs)

        def get_input(self, index: int) -> ITensor:
            return self._inputs[index]

        @property
        def num_outputs(self) -> int:
            return 2

    class ParserError:
        def __init__(self, desc):
            self._desc = desc

        def code(self):
            return 1

        def desc(self) -> str:
            return self._desc

        def file(self) -> str:
            return "ModelImporter.cpp"

        def line(self) -> int:
            return 0

        def func(self) -> str:
            return "parse"

        def node(self) -> int:
            return -1

    class OnnxParser:
        def __init__(self, network: INetworkDefinition, logger: ILogger):
            _typed("OnnxParser", network=(network, INetworkDefinition), logger=(logger, ILogger))
            self.network = network
            self._errors: list[ParserError] = []

        def parse_from_file(self, model: str) -> bool:
            record("OnnxParser.parse_from_file", model)
            with open(model, "rb") as f:
                bad = f.read() == b"not onnx"
            if bad:
                self._errors = [ParserError("Failed to parse ONNX model"), ParserError("no graph")]
                return False
            return True

        def parse(self, model: bytes, path: str | None = None) -> bool:
            record("OnnxParser.parse", model, path=path)
            return True

        @property
        def num_errors(self) -> int:
            return len(self._errors)

        def get_error(self, index: int) -> ParserError:
            return self._errors[index]

        def clear_errors(self) -> None:
            self._errors = []

    class IOptimizationProfile:
        def set_shape(self, input: str, min, opt, max) -> None:  # the binding's parameter names
            record("IOptimizationProfile.set_shape", input, min, opt, max)

        def get_shape(self, input: str):
            return []

    class IHostMemory(bytes):
        @property
        def nbytes(self) -> int:
            return len(self)

    class ITimingCache:
        def __init__(self, data: bytes):
            self._data = data

        def serialize(self) -> IHostMemory:
            return IHostMemory(b"TIMING" + self._data)

        def combine(self, input_cache, ignore_mismatch: bool) -> bool:
            return True

        def reset(self) -> bool:
            return True

    class IBuilderConfig:
        def __init__(self):
            self._flags = {BuilderFlag.TF32}  # TensorRT's default: TF32 allowed
            self._cache = None
            self.profiles = []

        def set_memory_pool_limit(self, pool, pool_size: int) -> None:
            if not isinstance(pool, MemoryPoolType):
                raise TypeError(f"set_memory_pool_limit: pool must be a MemoryPoolType, got {pool!r}")
            record("IBuilderConfig.set_memory_pool_limit", pool, pool_size)

        def get_memory_pool_limit(self, pool) -> int:
            return 0

        def set_flag(self, flag) -> None:
            if not isinstance(flag, BuilderFlag):
                raise TypeError(f"set_flag: not a BuilderFlag: {flag!r}")
            self._flags.add(flag)

        def clear_flag(self, flag) -> None:
            if not isinstance(flag, BuilderFlag):
                raise TypeError(f"clear_flag: not a BuilderFlag: {flag!r}")
            record("IBuilderConfig.clear_flag", flag)
            self._flags.discard(flag)

        def get_flag(self, flag) -> bool:
            return flag in self._flags

        @property
        def flags(self) -> int:
            return sum(1 << f.value for f in self._flags)

        def add_optimization_profile(self, profile: IOptimizationProfile) -> int:
            _typed("add_optimization_profile", profile=(profile, IOptimizationProfile))
            self.profiles.append(profile)
            record("IBuilderConfig.add_optimization_profile", profile)
            return len(self.profiles) - 1

        def create_timing_cache(self, serialized_timing_cache) -> ITimingCache:
            _typed("create_timing_cache", serialized_timing_cache=(serialized_timing_cache, (bytes, bytearray)))
            record("IBuilderConfig.create_timing_cache", bytes(serialized_timing_cache))
            return ITimingCache(bytes(serialized_timing_cache))

        def set_timing_cache(self, cache: ITimingCache, ignore_mismatch: bool) -> bool:
            record("IBuilderConfig.set_timing_cache", cache, ignore_mismatch=ignore_mismatch)
            self._cache = cache
            return True

        def get_timing_cache(self) -> ITimingCache:
            return self._cache

    class Builder:
        def __init__(self, logger: ILogger):
            _typed("Builder", logger=(logger, ILogger))
            self.logger = logger

        @property
        def platform_has_tf32(self) -> bool:
            return True

        def create_network(self, flags: int = 0) -> INetworkDefinition:
            record("Builder.create_network", flags)
            return INetworkDefinition(flags)

        def create_builder_config(self) -> IBuilderConfig:
            return IBuilderConfig()

        def create_optimization_profile(self) -> IOptimizationProfile:
            return IOptimizationProfile()

        def build_serialized_network(self, network: INetworkDefinition, config: IBuilderConfig):
            _typed("build_serialized_network", network=(network, INetworkDefinition), config=(config, IBuilderConfig))
            record("Builder.build_serialized_network", network, config, tf32=config.get_flag(BuilderFlag.TF32))
            if not config.profiles:
                return None
            return IHostMemory(b"PLAN")

    # ---- runtime ---------------------------------------------------------------------------------------
    memory: dict[int, object] = {}  # device address -> tensor (filled by CpuDevice.empty)

    class IExecutionContext:
        def __init__(self, engine):
            self.engine = engine
            self._shapes = {n: None for n, mode, *_ in io if mode == "INPUT"}
            self._addresses: dict[str, int] = {}

        def set_input_shape(self, name: str, shape) -> bool:
            record("IExecutionContext.set_input_shape", name, tuple(shape))
            lo, _, hi = self.engine._profiles[name]
            ok = len(shape) == len(lo) and all(a <= s <= b for a, s, b in zip(lo, shape, hi, strict=True))
            if ok:
                self._shapes[name] = tuple(shape)
            return ok

        def get_tensor_shape(self, name: str) -> Dims:
            if name in self._shapes:
                return Dims(self._shapes[name])
            n = next(iter(self._shapes.values()))[0]
            return Dims((n, *self.engine._shapes[name][1:]))

        def set_tensor_address(self, name: str, memory_: int) -> bool:
            if not isinstance(memory_, int):
                raise TypeError("set_tensor_address takes an int device address")
            self._addresses[name] = memory_
            return True

        def get_tensor_address(self, name: str) -> int:
            return self._addresses[name]

        def execute_async_v3(self, stream_handle: int) -> bool:
            if not isinstance(stream_handle, int):
                raise TypeError("execute_async_v3 takes the stream's handle (an int)")
            record("IExecutionContext.execute_async_v3", stream_handle)
            name_in = next(iter(self._shapes))
            x = memory[self._addresses[name_in]]
            n = self._shapes[name_in][0]
            rows = x.flatten()[: int(np.prod(self._shapes[name_in]))].view(self._shapes[name_in]).float()
            outs = {"logit": rows.reshape(n, -1).sum(1), "feature": rows.reshape(n, -1)[:, :4]}
            for name, out in outs.items():
                if name in self._addresses:
                    buf = memory[self._addresses[name]]
                    buf.flatten()[: out.numel()].copy_(out.flatten())  # flatten of a contiguous buffer is a view
            return True

    class ICudaEngine:
        def __init__(self):
            self._shapes = {n: s for n, _, _, s, _ in io}
            self._profiles = {n: p for n, mode, _, _, p in io if mode == "INPUT"}

        @property
        def num_io_tensors(self) -> int:
            return len(io)

        def get_tensor_name(self, index: int) -> str:
            return io[index][0]

        def get_tensor_dtype(self, name: str):
            return DataType[next(d for n, _, d, _, _ in io if n == name)]

        def get_tensor_shape(self, name: str) -> Dims:
            return Dims(self._shapes[name])

        def get_tensor_mode(self, name: str):
            return TensorIOMode[next(m for n, m, *_ in io if n == name)]

        def get_tensor_profile_shape(self, name: str, profile_index: int) -> list:
            if profile_index != 0:
                raise IndexError(profile_index)
            return [Dims(s) for s in self._profiles[name]]

        def create_execution_context(self, strategy=None) -> IExecutionContext:
            return IExecutionContext(self)

    class Runtime:
        def __init__(self, logger: ILogger):
            _typed("Runtime", logger=(logger, ILogger))
            self.logger = logger

        def deserialize_cuda_engine(self, serialized_engine):
            return ICudaEngine() if bytes(serialized_engine).startswith(b"PLAN") else None

    mod = types.ModuleType("tensorrt")
    mod.__version__ = "11.1.0" if version >= 11 else "10.13.0"
    for name, obj in dict(
        Logger=Logger, ILogger=ILogger, Builder=Builder, OnnxParser=OnnxParser, ParserError=ParserError,
        Runtime=Runtime, DataType=DataType, BuilderFlag=BuilderFlag, MemoryPoolType=MemoryPoolType,
        NetworkDefinitionCreationFlag=NetworkDefinitionCreationFlag, TensorIOMode=TensorIOMode, nptype=nptype,
        Dims=Dims, ITensor=ITensor, INetworkDefinition=INetworkDefinition, IBuilderConfig=IBuilderConfig,
        IOptimizationProfile=IOptimizationProfile, ITimingCache=ITimingCache, IHostMemory=IHostMemory,
        ICudaEngine=ICudaEngine, IExecutionContext=IExecutionContext,
    ).items():  # fmt: skip
        setattr(mod, name, obj)
    mod.calls = calls
    mod.memory = memory
    return mod


def _typed(call: str, **args) -> None:
    """The bindings check argument types (pybind11): None or another type raises TypeError."""
    for name, (value, kind) in args.items():
        if not isinstance(value, kind):
            raise TypeError(f"{call}(): incompatible {name} {value!r}")


class CpuDevice:
    """The trt engine's device side on CPU torch tensors: buffers are registered by address in the stand-in's
    memory, so the fake execution context can read and write them; the stream is a no-op with a handle."""

    def __init__(self, module):
        self.memory = module.memory
        self.name = "cpu"

    class _Stream:
        cuda_stream = 1234

        def synchronize(self) -> None:
            pass

    def stream(self):
        return self._Stream()

    def on(self, stream):
        import contextlib

        return contextlib.nullcontext()

    @staticmethod
    def handle(stream) -> int:
        return stream.cuda_stream

    def empty(self, shape, dtype: str):
        import torch

        t = torch.zeros(shape, dtype=getattr(torch, dtype))
        self.memory[t.data_ptr()] = t
        return t

"""The Engine contract (Polygraphy's runner shape): a context manager with `inputs`, `outputs`,
`infer(feed) -> dict` and `synchronize()`. Feed validation lives here, once, for every kind.
No timing inside engines: that is `benchmarks/`' job.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int | str, ...]  # str = symbolic dimension (e.g. "batch")
    dtype: str  # numpy dtype name

    def to_dict(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}

    @classmethod
    def from_dict(cls, d: dict) -> TensorSpec:
        return cls(d["name"], tuple(d["shape"]), d["dtype"])


class Engine(ABC):
    kind = "base"

    def __init__(self, inputs: list[TensorSpec], outputs: list[TensorSpec]):
        self.inputs, self.outputs = inputs, outputs
        self._active = False

    def __enter__(self) -> Engine:
        self.activate()
        self._active = True
        return self

    def __exit__(self, *exc) -> None:
        self._active = False
        self.deactivate()

    def activate(self) -> None:  # noqa: B027 - optional hook
        pass

    def deactivate(self) -> None:  # noqa: B027 - optional hook
        pass

    def synchronize(self) -> None:  # noqa: B027 - CPU engines are synchronous
        pass

    def infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if not self._active:
            raise RuntimeError(f"{self.kind} engine used outside its 'with' block")
        self._check_feed(feed)
        out = self._infer(feed)
        missing = [o.name for o in self.outputs if o.name not in out]
        if missing:
            raise RuntimeError(f"{self.kind} engine did not return outputs {missing}")
        return out

    def _check_feed(self, feed: dict[str, np.ndarray]) -> None:
        want = {s.name for s in self.inputs}
        if set(feed) != want:
            raise ValueError(f"feed has inputs {sorted(feed)}, the model takes {sorted(want)}")
        for spec in self.inputs:
            a = feed[spec.name]
            if not isinstance(a, np.ndarray):
                raise TypeError(f"input {spec.name!r} must be a numpy array, got {type(a).__name__}")
            if a.dtype != np.dtype(spec.dtype):
                raise ValueError(f"input {spec.name!r} has dtype {a.dtype}, the model takes {spec.dtype}")
            if a.ndim != len(spec.shape) or any(
                isinstance(d, int) and d != n for d, n in zip(spec.shape, a.shape, strict=True)
            ):
                raise ValueError(f"input {spec.name!r} has shape {a.shape}, the model takes {spec.shape}")

    @abstractmethod
    def _infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...

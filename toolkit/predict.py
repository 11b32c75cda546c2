"""The one prediction path under every runner: files or encoded bytes -> decode -> preprocess -> [purifier] -> detector.

`toolkit infer`, `toolkit purify`, bench's end-to-end column (and the Triton and Ray runners) build a
`PredictionPath` and call it; none of them decodes, preprocesses, picks engines or knows a model kind
itself. Decoding follows the policy of toolkit/data/images.py and runs wherever the runner wants it
(`toolkit.data.loader` worker processes for files, in process for bytes), producing the same `Batch`.
"""

from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass

import numpy as np

from toolkit.data.loader import Batch, decode_batch, load_batch

__all__ = ["Batch", "EngineChoice", "PredictionPath", "decode_batch", "load_batch"]


@dataclass(frozen=True)
class EngineChoice:
    engine: str = "onnxruntime"  # torch | onnxruntime | trt
    precision: str = "fp32"
    provider: str = "cpu"  # onnxruntime execution provider
    threads: int | None = None  # CPU threads per engine (None: the runtime's default, all cores); not in identity


def _open(artifact):
    from toolkit.artifact import Artifact

    return artifact if isinstance(artifact, Artifact) or artifact is None else Artifact.open(artifact)


class ArtifactChanged(RuntimeError):
    """An artifact is not the one the run started with (its seal differs): one line, the run stops."""


class PredictionPath:
    """detector and/or purifier artifacts + one engine choice; use as a context manager to open the engines."""

    def __init__(self, detector=None, purifier=None, choice: EngineChoice | None = None, batch: int | None = None,
                 pins: dict[str, str] | None = None):  # fmt: skip
        """`choice.engine == "auto"`: the fastest gated engine x precision recorded for this machine at `batch`
        (toolkit/tuning.py); `auto_reason` says what was chosen and why (or which fallback was taken).
        `pins`: {"detector": seal, "purifier": seal} of the artifacts a run started with; another process of
        the run (a Ray actor started or restarted later) refuses artifacts that have changed since."""
        from toolkit import kinds

        self.choice = choice or EngineChoice()
        self.detector, self.purifier = _open(detector), _open(purifier)
        if self.detector is None and self.purifier is None:
            raise ValueError("a prediction path needs a detector or a purifier artifact")
        for role, seal in (pins or {}).items():
            art = getattr(self, role)
            if art is not None and art.seal != seal:
                raise ArtifactChanged(
                    f"{art.dir} changed since this run started (manifest seal {art.seal[:12]}, the run's "
                    f"{seal[:12]}: re-exported, recalibrated or given a new threshold); the rows written so far "
                    "are kept; rerun with the original artifact, or start again with --overwrite"
                )
        self.auto_reason = None
        if self.choice.engine == "auto":
            from toolkit.tuning import resolve

            (engine, precision, provider), self.auto_reason = resolve(self.detector or self.purifier, batch or 1)
            self.choice = EngineChoice(engine, precision, provider, self.choice.threads)
        if self.detector is not None:
            kinds.for_artifact(self.detector).require("detects", f"{self.detector.dir}: predicting p(generated)")
            self.detector.require(self.choice.precision)
        if self.purifier is not None:
            kinds.for_artifact(self.purifier).require("purifies", f"{self.purifier.dir}: purifying")
            if self.detector is not None and self.purifier.preprocess["size"] != self.detector.preprocess["size"]:
                raise ValueError(
                    f"{self.purifier.dir} works at {self.purifier.preprocess['size']} px, the detector "
                    f"{self.detector.dir} at {self.detector.preprocess['size']} px: export them at one size"
                )
        # each reduced precision decides at its sealed operating point; int8 in onnxruntime on an x86 CPU without
        # VNNI at its own, judged under the exact emulation of that CPU. Derived once here, not per batch.
        self.operating_point, self._threshold = None, None
        if self.detector is not None:
            from toolkit.machine import int8_pairs_saturate

            c = self.choice
            saturating = (
                c.precision == "int8" and c.engine == "onnxruntime" and c.provider == "cpu" and int8_pairs_saturate()
            )
            self.operating_point = self.detector.operating_point(c.precision, saturating)
            self._threshold = self.detector.threshold_for(c.precision, saturating)
        self._stack: contextlib.ExitStack | None = None
        self._engines: dict = {}

    # ---- what runners need to know -----------------------------------------------------------------
    @property
    def purifier_precision(self) -> str:
        """The purifier runs at the path's precision when it has it (it has no int8), else fp32."""
        p = self.choice.precision
        return p if self.purifier is not None and p in self.purifier.precisions else "fp32"

    @property
    def preprocess(self) -> dict:
        """What decoding produces: the purifier's [0, 1] pixels when it runs first, else the detector's input."""
        return (self.purifier or self.detector).preprocess

    @property
    def threshold(self) -> float | None:
        """The detector's threshold at the path's precision (fixed when the path was made)."""
        return self._threshold

    def identity(self) -> dict:
        """Everything the outputs depend on (resume and servers compare it): artifact hashes, engine, threshold."""
        out = {k: v for k, v in asdict(self.choice).items() if k != "threads"}  # threads do not change outputs
        if self.detector is not None:
            out["detector"] = {
                "seal": self.detector.seal,  # the whole verified manifest: a changed artifact is another run
                "files": {
                    self.detector.require(self.choice.precision)["file"]: self.detector.onnx_sha256(
                        self.choice.precision
                    )
                },
                "source_sha256": self.detector.manifest.get("source_sha256"),
                "threshold": self.threshold,
            }
        if self.purifier is not None:
            p = self.purifier_precision
            out["purifier"] = {
                "seal": self.purifier.seal,
                "files": {self.purifier.require(p)["file"]: self.purifier.onnx_sha256(p)},
                "source_sha256": self.purifier.manifest.get("source_sha256"),
            }
        return out

    def pins(self) -> dict[str, str]:
        """The seals to pin the other processes of a run to (`pins` of their PredictionPath)."""
        return {r: a.seal for r, a in (("detector", self.detector), ("purifier", self.purifier)) if a is not None}

    # ---- engines --------------------------------------------------------------------------------------
    def __enter__(self) -> PredictionPath:
        from toolkit.engines import open_engine

        stack = contextlib.ExitStack()
        try:
            c = self.choice
            if self.purifier is not None:
                eng = open_engine(self.purifier, c.engine, self.purifier_precision, c.provider, threads=c.threads)
                self._engines["purifier"] = stack.enter_context(eng)
            if self.detector is not None:
                eng = open_engine(self.detector, c.engine, c.precision, c.provider, threads=c.threads)
                self._engines["detector"] = stack.enter_context(eng)
        except BaseException:
            stack.close()
            raise
        self._stack = stack
        return self

    def __exit__(self, *exc) -> None:
        self._engines.clear()
        if self._stack is not None:
            self._stack.close()
            self._stack = None

    def synchronize(self) -> None:
        for e in self._engines.values():
            e.synchronize()

    # ---- running --------------------------------------------------------------------------------------
    def run(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """Preprocessed batch (N,3,S,S) -> {purified?, logit, p_generated, is_generated}."""
        if not self._engines:
            raise RuntimeError("PredictionPath.run outside its 'with' block (engines not open)")
        out: dict[str, np.ndarray] = {}
        if self.purifier is not None:
            x = self._engines["purifier"].infer({"images": x})["purified"]
            out["purified"] = x
        if self.detector is not None:
            if self.purifier is not None:  # purified pixels in [0, 1] -> the detector's normalisation
                pre = self.detector.preprocess
                mean = np.asarray(pre["mean"], np.float32).reshape(1, 3, 1, 1)
                std = np.asarray(pre["std"], np.float32).reshape(1, 3, 1, 1)
                x = ((x - mean) / std).astype(np.float32)
            logit = self._engines["detector"].infer({"images": x})["logit"].astype(np.float32)
            out["logit"] = logit
            out["p_generated"] = sigmoid(logit)
            out["is_generated"] = logit > self.threshold
        return out

    def predict(self, batch: Batch) -> dict[str, np.ndarray]:
        """A decoded `Batch` -> outputs for its readable items (in `batch.paths` order); empty batches allowed."""
        if not len(batch.paths):
            return {}
        return self.run(batch.array)

    def predict_files(self, paths: list) -> tuple[Batch, dict[str, np.ndarray]]:
        batch = load_batch([str(p) for p in paths], self.preprocess)
        return batch, self.predict(batch)

    def predict_bytes(self, items: list[tuple[str, bytes]], pool=None) -> tuple[Batch, dict[str, np.ndarray]]:
        """(name, encoded bytes) items -> the decoded batch (bad items in `skipped`) and outputs; `pool`: a
        `DecodePool` that decodes them on several threads (the same batch)."""
        batch = pool.decode(items, self.preprocess) if pool is not None else decode_batch(items, self.preprocess)
        return batch, self.predict(batch)


def sigmoid(z: np.ndarray) -> np.ndarray:
    z = np.asarray(z, dtype=np.float64)
    e = np.exp(-np.abs(z))
    return np.where(z >= 0, 1.0 / (1.0 + e), e / (1.0 + e)).astype(np.float32)

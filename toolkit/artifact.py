"""The artifact type: a directory with `manifest.json`, opened and verified once (DESIGN.md: "An artifact is ...").

`Artifact.open(dir)` checks, before anything runs:
- the manifest protects itself: `integrity` holds the sha256 of every top-level field (and of every entry of
  the dict-valued ones) over canonical JSON; an edited threshold or a removed hash entry is refused, naming
  the field. It is a checksum, not a signature: it stops edits by hand and tools that do not know the format,
  while `Artifact.update` (the library's own writers: calibration, threshold) re-seals what it changes;
- every listed file exists and matches its sha256, and every file in the directory is listed (except the
  `plans/` cache, verified by its own keys, and `bench/` reports); names are relative to the artifact;
- the source run (the PyTorch reference) is recorded resolved; `reference_run()` fails loudly when it is gone.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from toolkit.engines.base import TensorSpec
from toolkit.io import read_json, sha256_file, write_json

MANIFEST = "manifest.json"
FORMAT = "causal-deploy-toolkit/artifact@2"  # @2: self-protecting manifest, resolved source run, every file listed
# written into an artifact after export and not part of its identity: TensorRT plans carry their own keys
# and hashes (toolkit/engines/trt_engine.py), bench reports are outputs, tuning records are per machine
UNLISTED_DIRS = ("plans", "bench", "tuning")
# the manifest fields that only the library writes and that `integrity` protects one level deep
_NESTED = ("files", "precisions", "gates")


class ArtifactError(ValueError):
    pass


class ReferenceMissing(ArtifactError):
    """The PyTorch reference (the source run) of an artifact cannot be found or no longer matches."""


class GateFailed(RuntimeError):
    """A precision variant missed its accuracy gate (export or calibration); the message has the numbers."""


TOOLS = ("causal-deploy-toolkit", "torch", "open_clip_torch", "onnx", "onnxruntime", "onnxscript")


def tool_versions(packages: tuple[str, ...] = TOOLS) -> dict[str, str | None]:
    """Installed version of each distribution (None where absent)."""
    from importlib import metadata

    out = {}
    for pkg in packages:
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = None
    return out


def _digest(value) -> str:
    canon = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canon.encode()).hexdigest()


def _field_digests(body: dict) -> dict[str, str]:
    out = {}
    for k, v in body.items():
        out[k] = _digest(v)
        if k in _NESTED and isinstance(v, dict):
            out.update({f"{k}/{sub}": _digest(sv) for sub, sv in v.items()})
    return out


def _seal(body: dict) -> dict:
    return {**body, "integrity": {"algorithm": "sha256 of canonical JSON", "fields": _field_digests(body)}}


def _check_seal(path: Path, m: dict) -> dict:
    integrity = m.pop("integrity", None)
    if not isinstance(integrity, dict) or not isinstance(integrity.get("fields"), dict):
        raise ArtifactError(f"{path} has no integrity record: refusing a manifest that was not written by the toolkit")
    want, got = integrity["fields"], _field_digests(m)
    changed = sorted(k for k in want.keys() & got.keys() if want[k] != got[k])
    removed, added = sorted(want.keys() - got.keys()), sorted(got.keys() - want.keys())
    inner = {k.split("/")[0] for k in changed + removed + added if "/" in k}  # name the entry, not its dict

    def name(k: str) -> str:
        return f"{k.split('/')[0]}[{k.split('/', 1)[1]!r}]" if "/" in k else repr(k)

    problems = [f"{name(k)} changed" for k in changed if k not in inner]
    problems += [f"{name(k)} removed" for k in removed if k not in inner]
    problems += [f"{name(k)} added" for k in added if k not in inner]
    if problems:
        raise ArtifactError(
            f"{path} was edited after the toolkit wrote it ({', '.join(problems)}): refusing to run it; "
            "re-export, or use the toolkit's own commands (calibrate, threshold) to change an artifact"
        )
    return m


def _safe_name(d: Path, name: str) -> Path:
    p = PurePosixPath(name)
    if p.is_absolute() or ".." in p.parts or not p.parts:
        raise ArtifactError(f"{d / MANIFEST} lists {name!r}, which is not a path inside the artifact")
    return d / p


@dataclass(frozen=True)
class Artifact:
    """A verified artifact directory. Fields mirror the manifest; `manifest` is the whole verified dict."""

    dir: Path
    manifest: dict

    # ---- opening and writing ------------------------------------------------------------------------
    @classmethod
    def open(cls, artifact_dir: str | os.PathLike, verify_files: bool = True) -> Artifact:
        d = Path(artifact_dir)
        path = d / MANIFEST
        if not d.is_dir():
            raise ArtifactError(f"{d} is not a directory; run 'toolkit export' first")
        if not path.is_file():
            raise ArtifactError(f"{d} has no {MANIFEST}; run 'toolkit export' first")
        m = read_json(path)
        if not isinstance(m, dict) or m.get("format") != FORMAT:
            fmt = m.get("format") if isinstance(m, dict) else None
            raise ArtifactError(f"{path}: unknown artifact format {fmt!r} (want {FORMAT}); re-export it")
        m = _check_seal(path, m)
        art = cls(d, m)
        if verify_files:
            art._verify_files()
        return art

    @classmethod
    def write(cls, artifact_dir: str | os.PathLike, body: dict, extra_files: tuple[str, ...] = ()) -> Artifact:
        """Hash every precision file (+ its external data) and `extra_files`, seal, write atomically; -> opened."""
        d = Path(artifact_dir)
        names = [n for v in body["precisions"].values() for n in (v["file"], v.get("data_file")) if n]
        names += list(extra_files)
        body = {k: v for k, v in body.items() if k not in ("format", "files", "integrity")}
        body = {"format": FORMAT, **body, "files": {n: sha256_file(_safe_name(d, n)) for n in names}}
        write_json(d / MANIFEST, _seal(body))
        return cls.open(d)

    def update(self, drop_files: tuple[str, ...] = (), extra_files: tuple[str, ...] = (), **fields) -> Artifact:
        """A new manifest with `fields` replaced (files re-hashed, re-sealed); -> the re-opened artifact.

        Files listed besides the precision files (reports) stay listed unless in `drop_files`."""
        body = {**self.manifest, **fields}

        def model_files(m: dict) -> set[str]:
            return {n for v in m["precisions"].values() for n in (v["file"], v.get("data_file")) if n}

        precision_files = model_files(self.manifest) | model_files(body)
        extras = [n for n in self.manifest["files"] if n not in precision_files and n not in drop_files]
        return Artifact.write(self.dir, body, tuple(dict.fromkeys(extras + list(extra_files))))

    def _verify_files(self) -> None:
        d, files = self.dir, self.manifest.get("files", {})
        for name, digest in files.items():
            f = _safe_name(d, name)
            if not f.is_file():
                raise ArtifactError(f"{f} is listed in {d / MANIFEST} but missing")
            if sha256_file(f) != digest:
                raise ArtifactError(f"{f} does not match the sha256 in {d / MANIFEST}: refusing to run a modified file")
        for root, dirs, names in os.walk(d):
            rel_root = Path(root).relative_to(d)
            if rel_root == Path("."):
                dirs[:] = [x for x in dirs if x not in UNLISTED_DIRS]
            for n in names:
                rel = (rel_root / n).as_posix()
                if rel != MANIFEST and rel not in files:
                    raise ArtifactError(
                        f"{d / rel} is in the artifact but not listed in {d / MANIFEST}: remove it, or re-export"
                    )

    # ---- typed access ---------------------------------------------------------------------------------
    @property
    def kind(self) -> str:
        return self.manifest["kind"]

    @property
    def preprocess(self) -> dict:
        return self.manifest["preprocess"]

    @property
    def inputs(self) -> list[TensorSpec]:
        return [TensorSpec.from_dict(s) for s in self.manifest["inputs"]]

    @property
    def outputs(self) -> list[TensorSpec]:
        return [TensorSpec.from_dict(s) for s in self.manifest["outputs"]]

    @property
    def precisions(self) -> dict[str, dict]:
        return self.manifest["precisions"]

    @property
    def files(self) -> dict[str, str]:
        return self.manifest["files"]

    @property
    def gates(self) -> dict:
        return self.manifest.get("gates", {})

    @property
    def threshold(self) -> float | None:
        t = self.manifest.get("threshold")
        return None if t is None else float(t)

    @property
    def model_name(self) -> str:
        return self.manifest.get("model_name") or self.kind

    def require(self, precision: str) -> dict:
        if precision not in self.precisions:
            raise ArtifactError(f"{self.dir} has no {precision} variant (it has {sorted(self.precisions)})")
        return self.precisions[precision]

    def onnx_path(self, precision: str) -> Path:
        return self.dir / self.require(precision)["file"]

    def onnx_sha256(self, precision: str) -> str:
        return self.files[self.require(precision)["file"]]

    def reference_run(self, weights_file: str) -> Path:
        """The source run holding the PyTorch reference, checked against the hash recorded at export."""
        run = Path(self.manifest["source_run"])
        hint = "pass --no-reference to run without the PyTorch reference"
        if not (run / weights_file).is_file():
            raise ReferenceMissing(
                f"the PyTorch reference of {self.dir} is {run / weights_file}, which does not exist "
                f"(moved or deleted?); {hint}"
            )
        if sha256_file(run / weights_file) != self.manifest["source_sha256"]:
            raise ReferenceMissing(
                f"{run / weights_file} changed since {self.dir} was exported: "
                f"it is not this artifact's reference; {hint}"
            )
        return run

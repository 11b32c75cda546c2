"""Artifact directories: model files + `manifest.json` (DESIGN.md "An artifact is a directory").

The manifest holds the model kind and config, preprocessing, input/output specs, precision variants,
the sha256 of every file, tool versions and the decision threshold. `bench` and `infer` read it and
never re-derive shapes; a file whose hash does not match is refused.
"""

from __future__ import annotations

from pathlib import Path

from toolkit.io import read_json, sha256_file, write_json

MANIFEST = "manifest.json"
FORMAT = "causal-deploy-toolkit/artifact@1"


class ArtifactError(ValueError):
    pass


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


def write_manifest(artifact_dir: str | Path, manifest: dict) -> Path:
    """Adds `format`, `files` (sha256 of every listed precision file) and writes atomically."""
    d = Path(artifact_dir)
    files = {}
    for variant in manifest["precisions"].values():
        for name in (variant["file"], variant.get("data_file")):
            if name:
                files[name] = sha256_file(d / name)
    return write_json(d / MANIFEST, {"format": FORMAT, **manifest, "files": files})


def read_manifest(artifact_dir: str | Path, verify: bool = True) -> dict:
    d = Path(artifact_dir)
    path = d / MANIFEST
    if not path.is_file():
        raise ArtifactError(f"{d} has no {MANIFEST}; run 'toolkit export' first")
    m = read_json(path)
    if m.get("format") != FORMAT:
        raise ArtifactError(f"{path}: unknown artifact format {m.get('format')!r} (want {FORMAT})")
    if verify:
        for name, digest in m["files"].items():
            f = d / name
            if not f.is_file():
                raise ArtifactError(f"{f} is listed in {path} but missing")
            if sha256_file(f) != digest:
                raise ArtifactError(f"{f} does not match the sha256 in {path}: refusing to run a modified file")
    return m

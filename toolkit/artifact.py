"""The artifact type: a directory with `manifest.json`, opened and verified once per command.

`Artifact.open(dir)` checks, before anything runs:
- the seal: `integrity` holds the sha256 of every top-level field (and of every entry of the dict-valued ones)
  over canonical JSON; an edited threshold or a removed hash entry is refused, naming the field. It is a
  checksum, not a signature: it stops edits by hand and tools that do not know the format, while the library's
  own writers (export, calibrate, bf16, threshold) re-seal what they change;
- the schema (toolkit/manifest.py): every field's type, every file name relative and inside the artifact, every
  precision file (and its external data) listed with its sha256;
- every listed file is a regular file reached without following a link and matches its sha256, and every entry
  of the directory is listed (except the `plans/` cache, verified by its own keys, `bench/` reports and
  `tuning/` records); a symbolic link anywhere in it is refused;
- the source run (the PyTorch reference) is recorded resolved; `reference_run()` fails loudly when it is gone.
Commands open an artifact once and pass the `Artifact` on; writers change it through `Artifact.edit()` (a
staged rewrite, toolkit/staging.py), which hashes only the files it adds.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from toolkit.engines.base import TensorSpec
from toolkit.io import sha256_file, sha256_inside, write_json
from toolkit.manifest import UNLISTED_DIRS, ManifestError, check_manifest
from toolkit.safe_paths import SymlinkRefused, open_nofollow

MANIFEST = "manifest.json"
FORMAT = "causal-deploy-toolkit/artifact@2"  # @2: self-protecting manifest, resolved source run, every file listed
# the manifest fields that only the library writes and that `integrity` protects one level deep
_NESTED = ("files", "precisions", "gates")

__all__ = ["FORMAT", "MANIFEST", "UNLISTED_DIRS", "Artifact", "ArtifactError", "GateFailed", "ReferenceMissing"]


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


def seal_digest(manifest: dict) -> str:
    """One digest of a whole verified manifest: what a run records to pin itself to this artifact."""
    return _digest(manifest)


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


def _read_manifest(d: Path) -> dict:
    path = d / MANIFEST
    try:
        fd = open_nofollow(path, os.O_RDONLY)
    except FileNotFoundError:
        raise ArtifactError(f"{d} has no {MANIFEST}; run 'toolkit export' first") from None
    except SymlinkRefused as e:
        raise ArtifactError(str(e)) from None
    except ValueError:
        raise ArtifactError(f"{path} is not a regular file") from None
    with os.fdopen(fd, "rb") as f:
        raw = f.read()
    try:
        return json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ArtifactError(f"{path} is not valid JSON: {e}") from None


@dataclass(frozen=True)
class Artifact:
    """A verified artifact directory. Fields mirror the manifest; `manifest` is the whole verified dict."""

    dir: Path
    manifest: dict

    # ---- opening --------------------------------------------------------------------------------------
    @classmethod
    def open(cls, artifact_dir: str | os.PathLike, verify_files: bool = True) -> Artifact:
        d = Path(artifact_dir)
        if not d.is_dir():
            raise ArtifactError(f"{d} is not a directory; run 'toolkit export' first")
        path = d / MANIFEST
        m = _read_manifest(d)
        if not isinstance(m, dict) or m.get("format") != FORMAT:
            fmt = m.get("format") if isinstance(m, dict) else None
            raise ArtifactError(f"{path}: unknown artifact format {fmt!r} (want {FORMAT}); re-export it")
        m = _check_seal(path, m)
        try:
            check_manifest(path, m)
        except ManifestError as e:
            raise ArtifactError(str(e)) from None
        art = cls(d, m)
        if verify_files:
            art._verify_files()
        return art

    def _verify_files(self) -> None:
        d, files = self.dir, self.files
        for name, digest in files.items():
            try:
                got = sha256_inside(d, name)
            except FileNotFoundError:
                raise ArtifactError(f"{d / name} is listed in {d / MANIFEST} but missing") from None
            except SymlinkRefused as e:
                raise ArtifactError(f"{e}: an artifact holds regular files only; re-export it") from None
            except (ValueError, NotADirectoryError) as e:
                raise ArtifactError(f"{d / name}: {e}") from None
            if got != digest:
                raise ArtifactError(f"{d / name} does not match the sha256 in {d / MANIFEST}: refusing to run it")
        for root, dirs, names in os.walk(d):  # never follows links: a link to a directory is in `dirs`, unopened
            rel_root = Path(root).relative_to(d)
            for n in dirs + names:
                p = Path(root) / n
                if stat.S_ISLNK(os.lstat(p).st_mode):
                    raise ArtifactError(
                        f"{p} is a symbolic link: an artifact holds regular files only (nothing outside it is "
                        "followed); remove it, or re-export"
                    )
            if rel_root == Path("."):
                dirs[:] = [x for x in dirs if x not in UNLISTED_DIRS]
            for n in names:
                rel = (rel_root / n).as_posix()
                if rel != MANIFEST and rel not in files:
                    raise ArtifactError(
                        f"{d / rel} is in the artifact but not listed in {d / MANIFEST}: remove it, or re-export"
                    )

    # ---- writing --------------------------------------------------------------------------------------
    @classmethod
    def write(cls, artifact_dir: str | os.PathLike, body: dict, known: dict[str, str] | None = None,
              extra_files: tuple[str, ...] = ()) -> Artifact:  # fmt: skip
        """Seal and write the manifest of the files in `artifact_dir` (a staging directory, usually); -> the
        Artifact, not re-verified (its files were just written or carried over). `known`: name -> sha256 of files
        whose hash is already known (carried over from a verified artifact); every other file is hashed once."""
        d, known = Path(artifact_dir), known or {}
        names = [n for v in body["precisions"].values() for n in (v["file"], v.get("data_file")) if n]
        names = list(dict.fromkeys(names + list(extra_files)))
        body = {k: v for k, v in body.items() if k not in ("format", "files", "integrity")}
        files = {n: known[n] if n in known else sha256_inside(d, n) for n in names}
        body = {"format": FORMAT, **body, "files": files}
        try:
            check_manifest(d / MANIFEST, body)
        except ManifestError as e:
            raise ArtifactError(f"refusing to write it: {e}") from None
        write_json(d / MANIFEST, _seal(body))
        return cls(d, body)

    @contextlib.contextmanager
    def edit(self, log=lambda msg: None):
        """A staged rewrite: `with art.edit() as ed:` add files under `ed.dir`, `ed.add(name)`, `ed.drop(name)`,
        `ed.set(field=value)`; on leaving the block the new artifact replaces this one atomically (`ed.result`).
        An error inside the block leaves this artifact as it was."""
        from toolkit.staging import Staging

        with Staging(self.dir, carry_dirs=UNLISTED_DIRS, log=log) as st:
            ed = ArtifactEdit(self, st)
            yield ed
            ed._commit()

    def update(self, **fields) -> Artifact:
        """A new manifest with `fields` replaced (staged, re-sealed, every file carried over); -> the new artifact."""
        with self.edit() as ed:
            ed.set(**fields)
        return ed.result

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
        """fp32's decision threshold (`logit > threshold`); each precision decides at `threshold_for(precision)`."""
        t = self.manifest.get("threshold")
        return None if t is None else float(t)

    def operating_point(self, precision: str, saturating: bool = False) -> dict | None:
        """The operating-point map `precision`'s gate sealed (toolkit.evaluation.fpr_matched_map: fp32's
        false-positive rate on the gate's real images), or None (fp32, or an artifact gated without labels).
        `saturating`: int8 in onnxruntime on an x86 CPU without VNNI, which computes other logits: the map judged
        for such CPUs."""
        record = self.precisions.get(precision, {})
        return (saturating and record.get("operating_point_no_vnni")) or record.get("operating_point") or None

    def threshold_for(self, precision: str, saturating: bool = False) -> float | None:
        """The threshold `precision` decides at: fp32's, moved by its operating-point map."""
        from toolkit.evaluation import map_threshold

        t, op = self.threshold, self.operating_point(precision, saturating)
        return t if t is None or op is None else map_threshold(t, op)

    @property
    def model_name(self) -> str:
        return self.manifest.get("model_name") or self.kind

    @property
    def seal(self) -> str:
        """The digest of the verified manifest (it covers every file's sha256): a run started on this artifact
        records it, and every process of the run checks it (toolkit/predict.py)."""
        return seal_digest(self.manifest)

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
        run = Path(self.manifest.get("source_run") or "")
        hint = "pass --no-reference to run without the PyTorch reference"
        if not self.manifest.get("source_run") or not (run / weights_file).is_file():
            raise ReferenceMissing(
                f"the PyTorch reference of {self.dir} is {run / weights_file}, which does not exist "
                f"(moved or deleted?); {hint}"
            )
        if sha256_file(run / weights_file) != self.manifest.get("source_sha256"):
            raise ReferenceMissing(
                f"{run / weights_file} changed since {self.dir} was exported: "
                f"it is not this artifact's reference; {hint}"
            )
        return run


class ArtifactEdit:
    """What a staged rewrite changes (see `Artifact.edit`): files carried over by hard link, new files hashed
    once when added, fields replaced; the manifest is sealed and swapped in on commit.

    The files carried over are linked into the staging directory only at commit: until then each has one link,
    so libraries that refuse multiply-linked external data (onnx >= 1.17 reading `.onnx.data`: "a potential
    hardlink attack") read them from the artifact itself (`self.base`), as every writer does."""

    def __init__(self, art: Artifact, staging):
        self.base, self.staging, self.dir = art, staging, staging.dir
        self.known = dict(art.files)  # verified when `art` was opened: carried without re-hashing
        self.body = {k: v for k, v in art.manifest.items() if k not in ("format", "files", "integrity")}
        self.result: Artifact | None = None
        self._carry = set(art.files)  # linked at commit unless written anew or dropped meanwhile

    def path(self, name: str) -> Path:
        """Where to write file `name` of the new artifact (read the current files from `self.base`)."""
        self._carry.discard(name)
        p = self.dir / name
        p.parent.mkdir(parents=True, exist_ok=True)
        return p

    def add(self, name: str) -> None:
        """List file `name` (written under `self.dir`), hashed now."""
        self.known[name] = sha256_inside(self.dir, name)

    def drop(self, name: str) -> None:
        self._carry.discard(name)
        (self.dir / name).unlink(missing_ok=True)
        self.known.pop(name, None)

    def set(self, **fields) -> None:
        self.body.update(fields)

    def _commit(self) -> None:
        for name in sorted(self._carry):
            if name in self.known:
                self.staging.link(self.base.dir, name)
        model = {n for v in self.body["precisions"].values() for n in (v["file"], v.get("data_file")) if n}
        extras = tuple(n for n in self.known if n not in model)
        for name in list(self.known):  # files dropped from the precisions and not kept as extras
            if not (self.dir / name).exists():
                self.known.pop(name)
        art = Artifact.write(self.dir, self.body, self.known, tuple(n for n in extras if n in self.known))
        keep = {*art.files, MANIFEST}
        for root, dirs, names in os.walk(self.dir):  # an unlisted leftover would make the artifact refuse itself
            rel = Path(root).relative_to(self.dir)
            if rel == Path("."):
                dirs[:] = [x for x in dirs if x not in (*UNLISTED_DIRS, "tmp")]
            for n in names:
                if (rel / n).as_posix() not in keep and not (rel == Path(".") and n.startswith(".owner")):
                    (Path(root) / n).unlink()
        final = self.staging.commit()
        self.result = Artifact(final, art.manifest)

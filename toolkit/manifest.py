"""The artifact manifest's schema, checked on open: every field's type and shape, every file name inside the
artifact and hashed. A malformed manifest is one line naming the file and the field, never a traceback later.

The seal (toolkit/artifact.py) stops hand edits; this check stops what a re-sealed manifest could still do: make
a reader follow a name outside the artifact (`precisions.<p>.file` absolute or with '..'), load a file nobody
hashed (a precision file not listed in `files`), or crash a command with a wrong type. Fields the toolkit does
not know are kept and ignored (a newer toolkit may add some); fields it reads must be what it expects.
"""

from __future__ import annotations

import math
import re

from toolkit.safe_paths import safe_name

HEX64 = re.compile(r"[0-9a-f]{64}")
DTYPES = ("float32", "float16", "bfloat16", "int64", "int32", "int8", "uint8", "bool")
# directories an artifact may hold besides its listed files (written after export; not part of its identity)
UNLISTED_DIRS = ("plans", "bench", "tuning")


class ManifestError(ValueError):
    pass


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


class _Checker:
    def __init__(self, path, manifest: dict):
        self.path, self.m = path, manifest

    def fail(self, field: str, problem: str):
        raise ManifestError(f"{self.path}: field {field}: {problem}; re-export the artifact")

    def need(self, field: str, value, kind: type | tuple, what: str):
        if not isinstance(value, kind):
            shown = repr(value) if not isinstance(value, (dict, list)) else type(value).__name__
            self.fail(field, f"must be {what}, got {shown[:80]}")
        return value

    def get(self, field: str, kind, what: str, required: bool = True):
        if field not in self.m:
            if required:
                self.fail(field, "is missing")
            return None
        return self.need(field, self.m[field], kind, what)

    def name(self, field: str, value) -> str:
        if safe_name(value) is None:
            self.fail(field, f"{value!r} is not a relative path inside the artifact")
        if value == "manifest.json" or value.split("/")[0] in UNLISTED_DIRS:
            self.fail(field, f"{value!r} names a file the manifest cannot list")
        return value

    def spec(self, field: str, value) -> None:
        self.need(field, value, dict, "a tensor spec {name, shape, dtype}")
        self.need(f"{field}.name", value.get("name"), str, "a name")
        shape = self.need(f"{field}.shape", value.get("shape"), list, "a list of dimensions")
        if not shape or not all((isinstance(d, int) and not isinstance(d, bool) and d > 0) or
                                (isinstance(d, str) and d) for d in shape):  # fmt: skip
            self.fail(f"{field}.shape", f"must be positive sizes or named dimensions, got {shape!r}"[:160])
        if value.get("dtype") not in DTYPES:
            self.fail(f"{field}.dtype", f"must be one of {', '.join(DTYPES)}, got {value.get('dtype')!r}")


def check_manifest(path, m: dict) -> None:
    """Raise ManifestError (one line: the file, the field, the problem) unless `m` has the artifact schema."""
    from toolkit import kinds
    from toolkit.preprocess import PreprocessConfig

    c = _Checker(path, m)
    kind = c.get("kind", str, "a model kind name")
    if kind not in kinds.names():
        c.fail("kind", f"{kind!r} is not a model kind this toolkit knows ({', '.join(kinds.names())})")
    files = c.get("files", dict, "a mapping of file name to sha256")
    for name, digest in files.items():
        c.name(f"files[{name!r}]", name)
        if not isinstance(digest, str) or not HEX64.fullmatch(digest):
            c.fail(f"files[{name!r}]", f"must be a sha256 (64 hex digits), got {digest!r}"[:160])
    precisions = c.get("precisions", dict, "a mapping of precision to its file")
    if not precisions:
        c.fail("precisions", "is empty (an artifact has at least its fp32 file)")
    for p, v in precisions.items():
        f = f"precisions.{p}"
        c.need(f, v, dict, "a mapping with 'file'")
        for key in ("file", "data_file"):
            if key == "data_file" and key not in v:
                continue
            name = c.name(f"{f}.{key}", v.get(key))
            if name not in files:
                c.fail(f"{f}.{key}", f"{name!r} is not listed (with its sha256) in 'files'")
        if not v["file"].endswith(".onnx"):
            c.fail(f"{f}.file", f"{v['file']!r} is not an .onnx file")
        if "engines" in v and not (isinstance(v["engines"], list) and all(isinstance(e, str) for e in v["engines"])):
            c.fail(f"{f}.engines", f"must be a list of engine names, got {v['engines']!r}"[:160])
        if "execution" in v and not isinstance(v["execution"], str):
            c.fail(f"{f}.execution", f"must be a name, got {v['execution']!r}")
    for key in ("inputs", "outputs"):
        specs = c.get(key, list, "a list of tensor specs")
        if not specs:
            c.fail(key, "is empty")
        for i, s in enumerate(specs):
            c.spec(f"{key}[{i}]", s)
    pre = c.get("preprocess", dict, "the preprocessing settings")
    size = pre.get("size")
    if not isinstance(size, int) or isinstance(size, bool) or size <= 0:
        c.fail("preprocess.size", f"must be a positive whole number of pixels, got {size!r}")
    for key in ("mean", "std"):
        v = pre.get(key)
        if not (isinstance(v, list) and len(v) == 3 and all(_is_number(x) for x in v)):
            c.fail(f"preprocess.{key}", f"must be three numbers, got {v!r}"[:160])
    if not all(x > 0 for x in pre["std"]):
        c.fail("preprocess.std", f"must be positive, got {pre['std']!r}")
    try:
        PreprocessConfig.from_dict(pre)
    except (TypeError, ValueError) as e:
        c.fail("preprocess", str(e))
    if m.get("threshold") is not None and not _is_number(m["threshold"]):
        c.fail("threshold", f"must be a number (or null for a kind without a decision), got {m['threshold']!r}"[:160])
    gates = c.get("gates", dict, "a mapping of precision to its gate record", required=False) or {}
    for p, g in gates.items():
        c.need(f"gates.{p}", g, dict, "a gate record")
        if "passed" in g and not isinstance(g["passed"], bool):
            c.fail(f"gates.{p}.passed", f"must be true or false, got {g['passed']!r}")
    c.get("source_run", str, "the source run's path", required=False)
    digest = m.get("source_sha256")
    if digest is not None and not (isinstance(digest, str) and HEX64.fullmatch(digest)):
        c.fail("source_sha256", f"must be a sha256 (64 hex digits), got {digest!r}"[:160])
    for key in ("model_config", "tool_versions", "threshold_provenance"):
        c.get(key, dict, "a mapping", required=False)
    for key in ("model_name", "verify_source"):
        c.get(key, str, "a string", required=False)

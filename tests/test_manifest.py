"""toolkit/manifest.py's schema check on its own: a valid manifest passes, and each way a field can be wrong is
refused with its own one-line message naming the file and the field. tests/test_artifact_safety.py re-seals
mutated manifests through the whole open path."""

from __future__ import annotations

import copy

import pytest

from toolkit.manifest import DTYPES, UNLISTED_DIRS, ManifestError, _is_number, check_manifest

H = "ab" * 32


def _valid() -> dict:
    return {
        "kind": "detector",
        "files": {"m.fp32.onnx": H, "m.int8.onnx": H, "m.data": H},
        "precisions": {
            "fp32": {"file": "m.fp32.onnx"},
            "int8": {"file": "m.int8.onnx", "data_file": "m.data", "engines": ["onnxruntime"], "execution": "qdq"},
        },
        "inputs": [{"name": "images", "shape": ["batch", 3, 32, 32], "dtype": "float32"}],
        "outputs": [{"name": "logit", "shape": ["batch"], "dtype": "float32"}],
        "preprocess": {"size": 32, "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]},
        "threshold": 0.0,
        "gates": {"fp32": {"passed": True}},
        "source_run": "/runs/x",
        "source_sha256": H,
        "model_config": {},
        "tool_versions": {},
        "threshold_provenance": {},
        "model_name": "tiny",
        "verify_source": "seeded noise",
    }


def test_a_valid_manifest_passes_and_optional_fields_may_be_absent():
    check_manifest("a/manifest.json", _valid())
    m = _valid()
    for key in (
        "threshold",
        "gates",
        "source_run",
        "source_sha256",
        "model_config",
        "tool_versions",
        "threshold_provenance",
        "model_name",
        "verify_source",
    ):
        del m[key]
    check_manifest("a/manifest.json", m)
    one = _valid()  # a dimension of 1 is a size like any other (a grayscale input, a one-unit output)
    one["inputs"][0]["shape"] = ["batch", 1, 32, 32]
    one["outputs"][0]["shape"] = ["batch", 1]
    check_manifest("a/manifest.json", one)
    check_manifest("a/manifest.json", {**_valid(), "threshold": None, "unknown_future_field": [1]})
    assert DTYPES == ("float32", "float16", "bfloat16", "int64", "int32", "int8", "uint8", "bool")
    assert UNLISTED_DIRS == ("plans", "bench", "tuning")


def _set(m, path, value):
    *head, last = path
    for k in head:
        m = m[k]
    if value is _DEL:
        del m[last]
    else:
        m[last] = value


class _Deleted:
    """The field is removed. Its repr is fixed: a test id holding an object's address changes in every process,
    and mutmut, which runs tests by the ids its stats pass saw, then failed on every manifest mutant."""

    def __repr__(self) -> str:
        return "<deleted>"


_DEL = _Deleted()
P = "a/manifest.json: field "
END = "; re-export the artifact"

CASES = [
    (("kind",), _DEL, "kind: is missing"),
    (("kind",), 3, "kind: must be a model kind name, got 3"),
    (("kind",), "other", "kind: 'other' is not a model kind this toolkit knows (detector, purifier)"),
    (("files",), [], "files: must be a mapping of file name to sha256, got list"),
    (("files", "../x.onnx"), H, "files['../x.onnx']: '../x.onnx' is not a relative path inside the artifact"),
    (("files", "manifest.json"), H, "files['manifest.json']: 'manifest.json' names a file the manifest cannot list"),
    (("files", "plans/a.plan"), H, "files['plans/a.plan']: 'plans/a.plan' names a file the manifest cannot list"),
    (("files", "bench/x"), H, "files['bench/x']: 'bench/x' names a file the manifest cannot list"),
    (("files", "tuning/x"), H, "files['tuning/x']: 'tuning/x' names a file the manifest cannot list"),
    (("files", "m.fp32.onnx"), "AB" * 32, "files['m.fp32.onnx']: must be a sha256 (64 hex digits), got '" + "AB" * 32),
    (("files", "m.fp32.onnx"), H + "0", "files['m.fp32.onnx']: must be a sha256 (64 hex digits)"),
    (("files", "m.fp32.onnx"), 5, "files['m.fp32.onnx']: must be a sha256 (64 hex digits), got 5"),
    (("precisions",), {}, "precisions: is empty (an artifact has at least its fp32 file)"),
    (("precisions",), _DEL, "precisions: is missing"),
    (("precisions", "fp32"), "m.fp32.onnx", "precisions.fp32: must be a mapping with 'file', got 'm.fp32.onnx'"),
    (("precisions", "fp32", "file"), "/abs.onnx", "precisions.fp32.file: '/abs.onnx' is not a relative path"),
    (("precisions", "fp32", "file"), "n.onnx", "precisions.fp32.file: 'n.onnx' is not listed (with its sha256)"),
    (("precisions", "int8", "data_file"), "n.data", "precisions.int8.data_file: 'n.data' is not listed"),
    (("precisions", "int8", "data_file"), "../d", "precisions.int8.data_file: '../d' is not a relative path"),
    (("precisions", "int8", "file"), "m.data", "precisions.int8.file: 'm.data' is not an .onnx file"),
    (("precisions", "int8", "engines"), "onnxruntime", "precisions.int8.engines: must be a list of engine names"),
    (("precisions", "int8", "engines"), [1], "precisions.int8.engines: must be a list of engine names, got [1]"),
    (("precisions", "int8", "execution"), 1, "precisions.int8.execution: must be a name, got 1"),
    (("inputs",), [], "inputs: is empty"),
    (("outputs",), _DEL, "outputs: is missing"),
    (("outputs",), {}, "outputs: must be a list of tensor specs, got dict"),
    (("inputs", 0), "images", "inputs[0]: must be a tensor spec {name, shape, dtype}, got 'images'"),
    (("inputs", 0, "name"), 1, "inputs[0].name: must be a name, got 1"),
    (("inputs", 0, "shape"), "b,3", "inputs[0].shape: must be a list of dimensions, got 'b,3'"),
    (("inputs", 0, "shape"), [], "inputs[0].shape: must be positive sizes or named dimensions, got []"),
    (("inputs", 0, "shape"), [0, 3], "inputs[0].shape: must be positive sizes or named dimensions, got [0, 3]"),
    (("inputs", 0, "shape"), [True], "inputs[0].shape: must be positive sizes or named dimensions, got [True]"),
    (("inputs", 0, "shape"), [""], "inputs[0].shape: must be positive sizes or named dimensions, got ['']"),
    (("inputs", 0, "shape"), [1.5], "inputs[0].shape: must be positive sizes or named dimensions, got [1.5]"),
    (
        ("outputs", 0, "dtype"),
        "float64",
        "outputs[0].dtype: must be one of float32, float16, bfloat16, int64, int32, int8, uint8, bool, got 'float64'",
    ),
    (("preprocess",), _DEL, "preprocess: is missing"),
    (("preprocess", "size"), 0, "preprocess.size: must be a positive whole number of pixels, got 0"),
    (("preprocess", "size"), True, "preprocess.size: must be a positive whole number of pixels, got True"),
    (("preprocess", "size"), 32.0, "preprocess.size: must be a positive whole number of pixels, got 32.0"),
    (("preprocess", "mean"), [0.5, 0.5], "preprocess.mean: must be three numbers, got [0.5, 0.5]"),
    (("preprocess", "std"), [0.5, 0.5, float("nan")], "preprocess.std: must be three numbers, got [0.5, 0.5, nan]"),
    (("preprocess", "mean"), "0.5", "preprocess.mean: must be three numbers, got '0.5'"),
    (("preprocess", "std"), [0.5, 0.0, 0.5], "preprocess.std: must be positive, got [0.5, 0.0, 0.5]"),
    (("preprocess", "interpolation"), "magic", "preprocess: interpolation must be one of ['bicubic', 'bilinear']"),
    (("preprocess",), [], "preprocess: must be the preprocessing settings, got list"),
    (("precisions",), [], "precisions: must be a mapping of precision to its file, got list"),
    (("threshold",), "0.5", "threshold: must be a number (or null for a kind without a decision), got '0.5'"),
    (("threshold",), float("inf"), "threshold: must be a number (or null for a kind without a decision), got inf"),
    (("threshold",), True, "threshold: must be a number (or null for a kind without a decision), got True"),
    (("gates",), [], "gates: must be a mapping of precision to its gate record, got list"),
    (("gates", "fp32"), True, "gates.fp32: must be a gate record, got True"),
    (("gates", "fp32", "passed"), "yes", "gates.fp32.passed: must be true or false, got 'yes'"),
    (("source_run",), 1, "source_run: must be the source run's path, got 1"),
    (("source_sha256",), "x", "source_sha256: must be a sha256 (64 hex digits), got 'x'"),
    (("source_sha256",), 7, "source_sha256: must be a sha256 (64 hex digits), got 7"),
    (("model_config",), [], "model_config: must be a mapping, got list"),
    (("tool_versions",), "x", "tool_versions: must be a mapping, got 'x'"),
    (("threshold_provenance",), 1, "threshold_provenance: must be a mapping, got 1"),
    (("model_name",), 1, "model_name: must be a string, got 1"),
    (("verify_source",), None, "verify_source: must be a string, got None"),
]


@pytest.mark.parametrize(
    "path, value, message", CASES, ids=[".".join(map(str, c[0])) + f"={c[1]!r}"[:30] for c in CASES]
)
def test_each_malformed_field_is_one_line_naming_file_and_field(path, value, message):
    """Bugs: any check dropped, loosened or aimed at the wrong field, or its message garbled."""
    m = copy.deepcopy(_valid())
    _set(m, path, value)
    with pytest.raises(ManifestError) as e:
        check_manifest("a/manifest.json", m)
    text = str(e.value)
    assert text.startswith(P + message) and text.endswith(END) and "\n" not in text


def test_long_values_are_cut_in_the_message():
    """Bug: a huge value copied whole into the one-line message."""
    m = _valid()
    m["kind"] = 10**200
    with pytest.raises(ManifestError) as e:
        check_manifest("m.json", m)
    assert len(str(e.value)) < 200
    m = _valid()
    m["inputs"][0]["shape"] = [0] * 200
    with pytest.raises(ManifestError) as e:
        check_manifest("m.json", m)
    assert len(str(e.value)) <= len("m.json: field inputs[0].shape: ") + 160 + len(END)


def test_is_number():
    assert _is_number(1) and _is_number(-2.5) and _is_number(0)
    assert not _is_number(True) and not _is_number(float("nan")) and not _is_number(float("-inf"))
    assert not _is_number("1") and not _is_number(None)

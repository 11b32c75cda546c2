"""Serving on Triton: a real tritonserver (PyTriton) on loopback, started as `toolkit serve` in a subprocess.

Covers: the served prediction equals the local prediction path (bytes and tensor models, with and without the
purifier); a bad item fails only itself and the next request is served; SIGTERM drains in-flight requests and
exits 0; `toolkit infer --server` keeps the local infer contract (one row per file, skipped listed, resumable,
a killed client resumes, a SIGKILLed server makes the client report and stop, and after a restart the rerun
completes); the native model repository parses with Triton's schema and matches the ONNX graphs. Everything
listens on 127.0.0.1 at ports picked at run time; every loop is bounded."""

from __future__ import annotations

import contextlib
import io
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("pytriton", reason="the serve extra is not installed (pip install '.[serve]')")
grpcclient = pytest.importorskip("tritonclient.grpc")

from conftest import kill_after_lines  # noqa: E402

from toolkit.serving.loadtest import _free_ports  # noqa: E402  (free loopback ports, as loadtest picks them)

CLI = [sys.executable, "-c", "from toolkit.cli import main; main()"]
ROOT = Path(__file__).resolve().parents[1]


class Server:
    """`toolkit serve` in its own session (so a test can kill it and all it started)."""

    def __init__(self, artifact: Path, log: Path, *extra: str, ports: list[int] | None = None):
        self.http, self.grpc, self.metrics = ports or _free_ports(3)
        ports = ["--http-port", str(self.http), "--grpc-port", str(self.grpc), "--metrics-port", str(self.metrics)]
        triton_log = ["--log-file", str(log.with_suffix(".triton.log"))]
        self.args = [*CLI, "serve", str(artifact), *ports, *triton_log, *extra]
        self.log = log
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"grpc://127.0.0.1:{self.grpc}"

    def start(self, timeout: float = 120) -> Server:
        self.proc = subprocess.Popen(self.args, stdout=open(self.log, "ab"), stderr=subprocess.STDOUT,  # noqa: SIM115
                                     start_new_session=True)  # fmt: skip
        client = grpcclient.InferenceServerClient(f"127.0.0.1:{self.grpc}")
        deadline = time.time() + timeout
        while time.time() < deadline:
            assert self.proc.poll() is None, f"toolkit serve exited: {self.log.read_text()[-2000:]}"
            try:
                if client.is_model_ready("detect") and client.is_model_ready("detect_tensor"):
                    return self
            except Exception:
                pass
            time.sleep(0.2)
        raise AssertionError(f"toolkit serve was not ready in {timeout} s: {self.log.read_text()[-2000:]}")

    def kill(self) -> None:
        """SIGKILL the whole session (server, tritonserver, stubs, watchdog) at teardown."""
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)


@pytest.fixture(scope="module")
def server(exported_artifact, tmp_path_factory):
    s = Server(exported_artifact, tmp_path_factory.mktemp("serve") / "serve.log").start()
    yield s
    s.kill()


def _png(seed: int, size: int = 40) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _detect(url: str, payloads: list[bytes]) -> dict[str, np.ndarray]:
    from toolkit.serving.client import ClientConfig, DetectClient

    c = DetectClient(ClientConfig(url=url, retry_s=0))
    c.connect()
    try:
        return c.detect(payloads)
    finally:
        c.close()


def _tensor(url: str, x: np.ndarray, dtype: str = "FP32"):
    c = grpcclient.InferenceServerClient(url.removeprefix("grpc://"))
    inp = grpcclient.InferInput("images", list(x.shape), dtype)
    inp.set_data_from_numpy(x)
    return c.infer("detect_tensor", [inp])


def _local(artifact, payloads: list[bytes], purifier=None) -> dict[str, np.ndarray]:
    from toolkit.predict import PredictionPath

    with PredictionPath(artifact, purifier) as path:
        _, out = path.predict_bytes([(str(i), b) for i, b in enumerate(payloads)])
    return out


# ---- item 1: the two models run the one prediction path ------------------------------------------------------
def test_detect_equals_the_local_prediction_path_and_bad_items_fail_alone(server, exported_artifact):
    good = [_png(i) for i in range(5)]
    payloads = [good[0], b"", good[1], b"not an image at all", good[2], good[3], good[4]]
    res = _detect(server.url, payloads)
    errors = [e.decode() for e in res["error"]]
    assert errors[1] == "empty file (0 bytes)" and errors[3] == "not a recognised image format"
    ok = [i for i, e in enumerate(errors) if not e]
    assert ok == [0, 2, 4, 5, 6]
    assert np.isnan(res["p_generated"][[1, 3]]).all() and not res["is_generated"][[1, 3]].any()
    local = _local(exported_artifact, good)
    np.testing.assert_allclose(res["p_generated"][ok], local["p_generated"], atol=1e-6)
    np.testing.assert_allclose(res["logit"][ok], local["logit"], atol=1e-5)
    assert (res["is_generated"][ok] == local["is_generated"]).all()


def test_detect_tensor_equals_detect_on_the_same_preprocessed_images(server, exported_artifact):
    from toolkit.artifact import Artifact
    from toolkit.data.loader import decode_batch

    payloads = [_png(i) for i in range(4)]
    x = decode_batch([(str(i), b) for i, b in enumerate(payloads)], Artifact.open(exported_artifact).preprocess).array
    r = _tensor(server.url, x)
    assert r.as_numpy("p_generated").shape == (4, 1) and r.as_numpy("is_generated").dtype == bool
    np.testing.assert_allclose(r.as_numpy("p_generated")[:, 0], _detect(server.url, payloads)["p_generated"], atol=1e-6)


# ---- item 5: faults, each an error for its item or request, and the next request is served -------------------
def _bomb() -> bytes:
    buf = io.BytesIO()
    Image.new("1", (10_000, 10_000)).save(buf, format="PNG")  # 100 MP in ~12 KB: over the 64 MP limit
    return buf.getvalue()


def _truncated_jpeg() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()[: len(buf.getvalue()) // 2]


FAULTS = {
    "empty bytes": (lambda: b"", "empty file"),
    "50 MB garbage": (lambda: np.random.default_rng(0).bytes(50 << 20), "not a recognised image format"),
    "decompression bomb": (_bomb, "decompression bomb refused"),
    "truncated jpeg": (_truncated_jpeg, "truncated"),
}


@pytest.mark.parametrize("fault", FAULTS)
def test_a_bad_item_fails_only_itself_and_the_server_goes_on(server, fault):
    make, reason = FAULTS[fault]
    res = _detect(server.url, [_png(0), make(), _png(1)])
    errors = [e.decode() for e in res["error"]]
    assert errors[0] == errors[2] == "" and reason in errors[1], errors
    assert np.isfinite(res["p_generated"][[0, 2]]).all()
    assert _detect(server.url, [_png(2)])["error"][0] == b""  # the next request is served


@pytest.mark.parametrize(
    "x, dtype, message",
    [
        (np.zeros((2, 3, 32, 32), np.int32), "INT32", "data-type is 'INT32'"),
        (np.zeros((2, 3, 33, 33), np.float32), "FP32", "unexpected shape"),
    ],
    ids=["wrong dtype", "wrong shape"],
)
def test_a_wrong_tensor_is_refused_and_the_next_request_is_served(server, exported_artifact, x, dtype, message):
    from tritonclient.utils import InferenceServerException

    with pytest.raises(InferenceServerException, match=message):
        _tensor(server.url, x, dtype)
    r = _tensor(server.url, np.zeros((1, 3, 32, 32), np.float32))
    assert np.isfinite(r.as_numpy("p_generated")).all()


# ---- health, metrics and the README's curl example -------------------------------------------------------------
def test_http_health_metrics_and_the_readme_curl_example(server, tmp_path):
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{server.http}/v2/health/ready", timeout=10) as r:
        assert r.status == 200
    with urllib.request.urlopen(f"http://127.0.0.1:{server.metrics}/metrics", timeout=10) as r:
        assert b"nv_inference_request_success" in r.read()
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"```bash\n(f=photo\.jpg.*?)```", readme, re.S)
    assert block, "the README's Serving section lost its curl example"
    (tmp_path / "photo.jpg").write_bytes(_png(7))
    script = block.group(1).replace("127.0.0.1:8000", f"127.0.0.1:{server.http}")
    done = subprocess.run(["bash", "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    import json

    outputs = {o["name"]: o["data"] for o in json.loads(done.stdout)["outputs"]}
    assert outputs["error"] == [""]
    assert abs(outputs["p_generated"][0] - _detect(server.url, [_png(7)])["p_generated"][0]) < 1e-6


# ---- toolkit loadtest against the real server -------------------------------------------------------------------
def test_loadtest_sweeps_grpc_and_http_with_the_servers_own_queue_and_compute_times(server, tmp_path):
    from toolkit.serving.loadtest import LoadConfig, loadtest, write_report

    (tmp_path / "imgs").mkdir()
    for i in range(6):
        (tmp_path / "imgs" / f"{i}.png").write_bytes(_png(20 + i))
    cfg = LoadConfig(concurrency=(1, 2), batch=(1, 4), requests=12, warmup_requests=2)
    r = loadtest(server.url, cfg, tmp_path / "imgs", progress=False, log=lambda *_: None)
    assert r["images"] == f"6 files of {tmp_path / 'imgs'}" and r["served_artifact"] is None
    assert [(c["concurrency"], c["images_per_request"]) for c in r["cells"]] == [(1, 1), (2, 1), (1, 4), (2, 4)]
    for c in r["cells"]:
        assert c["requests"] == 12 and c["errors"] == 0 and c["p50_ms"] <= c["p99_ms"]
        s = c["server"]  # the server saw the measured requests (not the warm-up), and batched what it was sent
        assert 12 <= s["requests"] <= 14 and s["queue_ms"] >= 0 and 0 < s["compute_ms"] < c["p99_ms"]
        assert s["mean_batch"] >= c["images_per_request"]
    http = loadtest(f"http://127.0.0.1:{server.http}", LoadConfig((1,), (2,), 6, warmup_requests=1),
                    progress=False, log=lambda *_: None)  # fmt: skip
    assert http["cells"][0]["errors"] == 0 and http["cells"][0]["server"]["requests"] >= 6
    files = write_report(r, tmp_path / "report", "toolkit loadtest ...", "test machine")
    assert files["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = files["md"].read_text()
    assert "| 2 | 4 | 12 | 0 |" in md and "server queue ms" in md


def _loadtest_processes() -> list[str]:
    """Processes whose command line holds loadtest's private serving directory (`toolkit serve`, tritonserver)."""
    found = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            with contextlib.suppress(OSError):
                cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                if "loadtest-" in cmd and "pytest" not in cmd:
                    found.append(f"{d.name}: {cmd[:200]}")
    return found


def _assert_no_loadtest_process_left(within_s: float = 30) -> None:
    deadline = time.time() + within_s  # each served session was SIGKILLed at the end; the kernel reaps it at once
    while _loadtest_processes() and time.time() < deadline:
        time.sleep(0.5)
    assert _loadtest_processes() == []


def test_loadtest_of_an_artifact_serves_it_on_loopback_and_leaves_no_process(exported_artifact, tmp_path):
    out = tmp_path / "lt"
    done = subprocess.run([*CLI, "loadtest", str(exported_artifact), "--concurrency", "2", "--batch", "2",
                           "--requests", "8", "--warmup", "2", "--out", str(out)],
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    import json

    r = json.loads((out / "loadtest.json").read_text())
    assert r["served_artifact"] == str(exported_artifact) and r["address"].startswith("grpc://127.0.0.1:")
    assert r["cells"][0]["requests"] == 8 and r["cells"][0]["errors"] == 0 and r["machine"]
    assert (out / "loadtest.md").exists() and (out / "loadtest.png").exists()
    _assert_no_loadtest_process_left()


def test_config_auto_applies_the_chosen_decode_threads_and_a_record_without_them_keeps_the_default(tmp_path):
    """`serve --config auto` takes every searched knob from the record, decode threads too; a record written before
    decode threads were searched gives serve's default for them (bug guarded: a KeyError on old records, or the
    knob silently dropped)."""
    from toolkit.io import write_json
    from toolkit.serving.server import TUNED_KNOBS, ServeConfig
    from toolkit.serving.sizing import record_path, tuned

    config = {"instances": 2, "max_batch": 8, "max_queue_delay_us": 0, "threads": 1}
    for recorded, expected in (({"decode_threads": 1}, 1), ({}, None)):
        write_json(record_path(tmp_path), {"p99_ms": 50, "engine": "onnxruntime", "precision": "fp32",
                                           "chosen": {"config": {**config, **recorded}}})  # fmt: skip
        cfg = tuned(ServeConfig(tuned=True, decode_threads=3), tmp_path, TUNED_KNOBS, lambda _: 0)
        assert (cfg.instances, cfg.threads, cfg.decode_threads, cfg.tuned) == (2, 1, expected, False)


def test_tune_measures_each_config_served_records_the_choice_and_config_auto_uses_it(exported_artifact, tmp_path):
    """`toolkit loadtest --tune` on a copy of the artifact: every config (and the default) served and measured,
    the choice within the budget recorded in tuning/; `triton-repo --config auto` writes it into config.pbtxt,
    and `serve --config auto` without a record for this machine is one line."""
    import json
    import shutil

    art = tmp_path / "art"
    shutil.copytree(exported_artifact, art)
    out = tmp_path / "tune"
    done = subprocess.run([*CLI, "loadtest", str(art), "--tune", "--p99-ms", "5000", "--concurrency", "2",
                           "--batch", "2", "--requests", "8", "--warmup", "2", "--tune-instances", "1",
                           "--tune-max-batch", "4", "--tune-queue-delay-us", "0", "--tune-decode-threads", "1",
                           "--tune-repeats", "1", "--out", str(out)],
                          capture_output=True, text=True, timeout=400)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    record = json.loads((out / "tune.json").read_text())
    configs = [p["config"] for p in record["points"]]
    assert configs == [
        {"instances": 1, "max_batch": 4, "max_queue_delay_us": 0, "threads": None, "decode_threads": 1},
        {"instances": 1, "max_batch": 64, "max_queue_delay_us": 2000, "threads": None, "decode_threads": None},
    ]
    assert all(p["cell"]["requests"] == 8 and p["cell"]["errors"] == 0 for p in record["points"])
    assert record["chosen"] is not None and record["chosen"]["cell"]["p99_ms"] <= 5000
    assert list((art / "tuning").glob("serve-*.json")) and "| chosen" in (out / "tune.md").read_text()
    repo = tmp_path / "repo"
    done = subprocess.run([*CLI, "triton-repo", str(art), "--out", str(repo), "--config", "auto"],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    pbtxt = next(repo.glob("detector_fp32/config.pbtxt")).read_text()
    assert f"max_batch_size: {record['chosen']['config']['max_batch']}" in pbtxt
    done = subprocess.run([*CLI, "serve", str(exported_artifact), "--config", "auto"], capture_output=True,
                          text=True, timeout=120)  # fmt: skip
    assert done.returncode == 2 and "no serving tuning record for this machine" in done.stderr
    assert "Traceback" not in done.stderr
    _assert_no_loadtest_process_left()


# ---- item 3: toolkit infer --server --------------------------------------------------------------------------------
def _folder(root: Path, n: int) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        (root / f"{i:04d}.png").write_bytes(_png(i, 24))
    return root


def _csv(path: Path) -> list[dict]:
    import csv

    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _rows(out: Path) -> list[str]:
    return [r["path"] for r in _csv(out)]


def test_infer_server_equals_local_infer_with_the_same_contract(server, exported_artifact, tmp_path):
    from toolkit.pipelines.infer import run_inference
    from toolkit.pipelines.server_infer import ClientConfig, run_server_inference

    imgs = _folder(tmp_path / "imgs", 30)
    (imgs / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    (imgs / "empty.jpg").write_bytes(b"")
    os.mkfifo(imgs / "fifo.png")
    quiet = dict(progress=False, log=lambda *_: None)
    s = run_server_inference(imgs, tmp_path / "s.csv", 4, ClientConfig(url=server.url, concurrency=4), **quiet)
    run_inference(imgs, exported_artifact, tmp_path / "l.csv", **quiet)
    srv = {r["path"]: r for r in _csv(tmp_path / "s.csv")}
    loc = {r["path"]: r for r in _csv(tmp_path / "l.csv")}
    assert len(srv) == s["rows_total"] == 30 and srv.keys() == loc.keys()
    assert max(abs(float(srv[k]["p_generated"]) - float(loc[k]["p_generated"])) for k in srv) <= 1e-5
    assert all(srv[k]["prediction"] == loc[k]["prediction"] for k in srv)
    skipped = {r["path"]: r["reason"] for r in _csv(tmp_path / "s.csv.skipped.csv")}
    assert set(skipped) == {"broken.png", "empty.jpg", "fifo.png"}
    assert "not a regular file" in skipped["fifo.png"] and "empty" in skipped["empty.jpg"]
    # resumable: a rerun does nothing; a second run on the same --out is refused while one holds it
    again = run_server_inference(imgs, tmp_path / "s.csv", 4, ClientConfig(url=server.url), **quiet)
    assert again["predicted_now"] == 0 and again["already_done"] == 33


def test_infer_server_refuses_local_engine_options_and_bad_urls(server, tmp_path):
    from typer.testing import CliRunner

    from toolkit.cli import app

    imgs = _folder(tmp_path / "imgs", 2)
    r = CliRunner().invoke(app, ["infer", str(imgs), "--server", server.url, "--engine", "openvino"])
    assert r.exit_code == 2 and "--engine cannot be used with --server" in r.output
    r = CliRunner().invoke(
        app, ["infer", str(imgs), "--server", "http://127.0.0.1:1", "--out", str(tmp_path / "x.csv")]
    )
    assert r.exit_code == 2 and "grpc://HOST:PORT" in r.output and not (tmp_path / "x.csv").exists()


def test_a_killed_client_resumes_with_exactly_one_row_per_file(server, tmp_path):
    imgs = _folder(tmp_path / "imgs", 300)
    out = tmp_path / "p.csv"
    cmd = [*CLI, "infer", str(imgs), "--server", server.url, "--batch", "2", "--concurrency", "2", "--out", str(out)]
    assert kill_after_lines(cmd, out, 40, timeout=120), "the client finished before it could be killed"
    assert 40 <= len(_rows(out)) < 300
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    rows = _rows(out)
    assert len(rows) == len(set(rows)) == 300


def test_a_sigkilled_server_stops_the_client_and_a_restart_completes_the_run(exported_artifact, tmp_path):
    imgs = _folder(tmp_path / "imgs", 300)
    out = tmp_path / "p.csv"
    s = Server(exported_artifact, tmp_path / "serve.log").start()
    try:
        cmd = [*CLI, "infer", str(imgs), "--server", s.url, "--batch", "1", "--concurrency", "2",
               "--retry-for", "3", "--out", str(out)]  # fmt: skip
        client = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.time() + 120
        while (
            time.time() < deadline and len(out.read_bytes().splitlines() if out.is_file() else []) < 31
        ):  # header + 30 rows
            time.sleep(0.01)
        s.proc.send_signal(signal.SIGKILL)  # the server process only: its tritonserver must not outlive it
        t_kill = time.time()
        _, err = client.communicate(timeout=90)
        assert client.returncode != 0 and time.time() - t_kill < 60
        lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
        assert lines and "did not answer" in lines[0], err[-2000:]
        kept = _rows(out)
        assert 30 <= len(kept) < 300 and len(kept) == len(set(kept))
        s.proc.wait(10)
        s.start()  # the same ports again: nothing of the killed server holds them
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        rows = _rows(out)
        assert len(rows) == len(set(rows)) == 300
    finally:
        s.kill()


def test_sigterm_drains_in_flight_requests_and_exits_0_with_the_purifier_in_front(
    exported_artifact, purifier_artifact, tmp_path
):
    s = Server(exported_artifact, tmp_path / "serve.log", "--purify", str(purifier_artifact)).start()
    try:
        payloads = [_png(i) for i in range(3)]
        res = _detect(s.url, payloads)
        local = _local(exported_artifact, payloads, purifier_artifact)
        np.testing.assert_allclose(res["p_generated"], local["p_generated"], atol=1e-6)
        no_purifier = _local(exported_artifact, payloads)
        assert not np.allclose(res["logit"], no_purifier["logit"], atol=1e-6)  # the purifier did run
        # an in-flight request: 32 flat 3000 x 3000 PNGs are small to send (~30 KB each) and slow to decode
        flat = io.BytesIO()
        Image.new("RGB", (3000, 3000), (90, 120, 200)).save(flat, format="PNG")
        big = [flat.getvalue()] * 32
        c = grpcclient.InferenceServerClient(f"127.0.0.1:{s.grpc}")
        arr = np.empty((len(big), 1), dtype=object)
        arr[:, 0] = big
        inp = grpcclient.InferInput("image", list(arr.shape), "BYTES")
        inp.set_data_from_numpy(arr)
        results = []
        c.async_infer("detect", [inp], callback=lambda result, error: results.append((result, error)))
        time.sleep(1.0)
        assert not results, "the request finished before SIGTERM: make it slower"
        t0 = time.time()
        s.proc.send_signal(signal.SIGTERM)
        assert s.proc.wait(60) == 0, s.log.read_text()[-2000:]
        deadline = time.time() + 10
        while not results and time.time() < deadline:
            time.sleep(0.05)
        r, e = results[0]
        assert e is None, f"the in-flight request failed: {e}"
        assert (r.as_numpy("error") == b"").all() and r.as_numpy("p_generated").shape == (32, 1)
        assert time.time() - t0 < 60
    finally:
        s.kill()


def test_serve_refuses_a_taken_port_in_one_line(exported_artifact, tmp_path):
    from typer.testing import CliRunner

    from toolkit.cli import app

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        http, metrics = _free_ports(2)
        r = CliRunner().invoke(app, ["serve", str(exported_artifact), "--grpc-port", str(port),
                                     "--http-port", str(http), "--metrics-port", str(metrics)])  # fmt: skip
    assert r.exit_code == 2 and f"--grpc-port {port} on 127.0.0.1 is not available" in r.output


# ---- item 2: the native model repository ------------------------------------------------------------------------
def _parse(path: Path):
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def test_triton_repo_configs_parse_with_tritons_schema_and_match_the_onnx_graphs(
    exported_artifact, purifier_artifact, tmp_path
):
    import onnx
    import onnxruntime as ort
    from tritonclient.grpc import model_config_pb2 as pb

    from toolkit.predict import PredictionPath
    from toolkit.serving.repository import write_model_repository

    repo = tmp_path / "repo"
    models = write_model_repository(exported_artifact, repo, purifier_artifact, log=lambda *_: None)
    assert {"detector_fp32", "detector_fp16", "purifier_fp32", "normalise", "purify_detect_fp32"} <= set(models)
    configs = {m: _parse(repo / m / "config.pbtxt") for m in models}
    types = {onnx.TensorProto.FLOAT: pb.TYPE_FP32, onnx.TensorProto.FLOAT16: pb.TYPE_FP16}
    for name, c in configs.items():
        assert c.name == name and c.max_batch_size == 64
        if c.platform == "ensemble":
            continue
        assert c.platform == "onnxruntime_onnx" and c.dynamic_batching.max_queue_delay_microseconds == 2000
        assert c.instance_group[0].kind == pb.ModelInstanceGroup.KIND_CPU
        g = onnx.load(str(repo / name / "1" / "model.onnx"), load_external_data=False).graph
        for cfg_io, graph_io in ((c.input, g.input), (c.output, g.output)):
            assert [t.name for t in cfg_io] == [v.name for v in graph_io]
            for t, v in zip(cfg_io, graph_io, strict=True):
                dims = [d.dim_value for d in v.type.tensor_type.shape.dim][1:]  # batch dimension left out
                assert t.data_type == types[v.type.tensor_type.elem_type]
                if dims:
                    assert list(t.dims) == dims and not t.HasField("reshape")
                else:  # an [N] output: dims [1] + reshape []
                    assert list(t.dims) == [1] and t.HasField("reshape") and list(t.reshape.shape) == []
    assert "threshold" in configs["detector_fp32"].parameters
    # the ensemble: every step names a model of the repository and tensors it has; run it step by step
    ens = configs["purify_detect_fp32"]
    x = np.random.default_rng(0).random((3, 3, 32, 32), dtype=np.float32)
    tensors = {ens.input[0].name: x}
    for step in ens.ensemble_scheduling.step:
        sub = configs[step.model_name]
        assert set(step.input_map) == {t.name for t in sub.input} and set(step.output_map) <= {
            t.name for t in sub.output
        }
        sess = ort.InferenceSession(str(repo / step.model_name / "1" / "model.onnx"))
        feeds = {k: tensors[v] for k, v in step.input_map.items()}
        res = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds), strict=True))
        tensors.update({v: res[k] for k, v in step.output_map.items()})
    assert {t.name for t in ens.output} <= set(tensors)
    with PredictionPath(exported_artifact, purifier_artifact) as path:
        want = path.run(x)["logit"]
    np.testing.assert_allclose(tensors["logit"], want, atol=1e-5)


def test_triton_repo_writes_plans_as_tensorrt_models_and_never_replaces_a_foreign_directory(
    exported_artifact, tmp_path
):
    import shutil

    from toolkit.io import write_json
    from toolkit.serving.repository import write_model_repository

    art = tmp_path / "art"
    shutil.copytree(exported_artifact, art)
    (art / "plans").mkdir()
    key = {"id": "0123456789abcdef", "tensorrt": "10.9.0", "compute_capability": "9.0",
           "profile": {"images": [[1, 3, 32, 32], [8, 3, 32, 32], [16, 3, 32, 32]]}}  # fmt: skip
    (art / "plans" / "fp16.0123456789abcdef.plan").write_bytes(b"plan bytes")
    write_json(art / "plans" / "fp16.0123456789abcdef.json", {"key": key, "onnx": "detector.fp16.onnx"})
    repo = tmp_path / "repo"
    models = write_model_repository(art, repo, log=lambda *_: None)
    trt = _parse(repo / "detector_fp16_trt_01234567" / "config.pbtxt")
    assert "detector_fp16_trt_01234567" in models and trt.platform == "tensorrt_plan"
    assert trt.max_batch_size == 16 and trt.parameters["tensorrt"].string_value == "10.9.0"
    assert (repo / "detector_fp16_trt_01234567" / "1" / "model.plan").read_bytes() == b"plan bytes"
    write_model_repository(art, repo, log=lambda *_: None)  # its own repository is replaced
    foreign = tmp_path / "home"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="not a model repository written by 'toolkit triton-repo'"):
        write_model_repository(art, foreign, log=lambda *_: None)
    assert (foreign / "notes.txt").read_text() == "keep me"


class _FlakyTriton:
    """Stands in for one thread's tritonclient: answers with the given errors first, then a real result."""

    def __init__(self, errors: list[Exception]):
        self.errors, self.calls = list(errors), 0

    def infer(self, model, inputs, outputs=None, client_timeout=None):
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        n = inputs[0].shape()[0]

        class Res:
            def as_numpy(self, name):
                return {"error": np.full((n, 1), b"", object)}.get(name, np.zeros((n, 1), np.float32))

        return Res()

    def is_model_ready(self, model):
        return True

    def get_server_metadata(self):
        return type("M", (), {"name": "causal-deploy-toolkit/abc"})()

    def get_model_config(self, model):
        return type("C", (), {"config": type("X", (), {"max_batch_size": 8})()})()

    def close(self):
        pass


def test_an_unloading_model_is_retried_and_a_refusal_is_one_line(monkeypatch):
    """Found by CI under load: SIGKILLing `toolkit serve` leaves tritonserver up for a moment with its model
    unloaded; the client got NOT_FOUND "... has no available versions" and died with a traceback."""
    from tritonclient.utils import InferenceServerException

    from toolkit.serving.client import ClientConfig, DetectClient, ServerError

    unloading = InferenceServerException(
        "Request for unknown model: 'detect' has no available versions", status="StatusCode.NOT_FOUND"
    )
    fake = _FlakyTriton([unloading, unloading])
    client = DetectClient(ClientConfig("grpc://127.0.0.1:1", retry_s=10))
    monkeypatch.setattr(client, "_client", lambda: fake)
    monkeypatch.setattr(client, "_reset", lambda: None)
    client.server_id = "causal-deploy-toolkit/abc"
    out = client.detect([b"x", b"y"])
    assert fake.calls == 3 and out["logit"].shape == (2,)
    fake.errors = [InferenceServerException("unexpected shape for input 'image'", status="StatusCode.INVALID_ARGUMENT")]
    with pytest.raises(ServerError, match=r"refused infer: .*unexpected shape") as e:
        client.detect([b"x"])
    assert "\n" not in str(e.value)


def test_detect_decodes_on_several_threads_as_on_one_and_diagnostic_stages_answer_nan(exported_artifact):
    """Bugs: the threaded decode reordering items or dropping a bad one, its batch not the one-thread batch bit for
    bit; a diagnostic stage answering scores (a client could take them for predictions) or losing decode errors."""
    from toolkit.data.loader import DecodePool, decode_batch
    from toolkit.predict import PredictionPath
    from toolkit.serving.server import detect_items

    good = [_png(i) for i in range(7)]
    items = [(str(i), b) for i, b in enumerate([good[0], b"", good[1], good[2], b"junk", good[3], *good[4:]])]
    with PredictionPath(exported_artifact) as path, DecodePool(3) as pool, DecodePool(1) as one:
        ref = decode_batch(items, path.preprocess)
        got = pool.decode(items, path.preprocess)
        assert got.paths == ref.paths and got.skipped == ref.skipped and np.array_equal(got.array, ref.array)
        assert pool.decode(items[1:2], path.preprocess).skipped == ref.skipped[:1]  # all bad: an empty batch
        assert pool.decode([], path.preprocess).array.shape[0] == 0
        full = detect_items(path, pool, items)
        for k, v in detect_items(path, one, items).items():
            assert np.array_equal(v, full[k]) if v.dtype == object else np.array_equal(v, full[k], equal_nan=True)
        errors = [e.decode() for e in full["error"][:, 0]]
        assert [i for i, e in enumerate(errors) if e] == [1, 4] and not np.isnan(full["p_generated"][0, 0])
        decoded = detect_items(path, pool, items, stage="decode")
        assert [e.decode() for e in decoded["error"][:, 0]] == errors
        nothing = detect_items(path, pool, items, stage="none")
        for out in (decoded, nothing):
            assert np.isnan(out["p_generated"]).all() and np.isnan(out["logit"]).all() and not out["is_generated"].any()
        assert not any(e for e in nothing["error"][:, 0])

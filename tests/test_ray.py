"""`toolkit infer --ray` on a real local Ray cluster (started once, 2 CPUs, as CI has): the same rows as local
`infer`, bad files listed alike, resume after a killed driver, a killed actor restarted with no row lost or
doubled, file lists and Parquet parts. Actors get fractional CPUs (whole ones back-pressure the driver here)."""

from __future__ import annotations

import contextlib
import csv
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")

from conftest import kill_after_lines, noise_images  # noqa: E402

from toolkit.pipelines.infer import InferConfig, run_inference  # noqa: E402
from toolkit.pipelines.ray_infer import RayConfig, run_ray_inference  # noqa: E402

CLI = [sys.executable, "-c", "from toolkit.cli import main; main()"]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """`ray start --head` on a free port: drivers connect with --ray auto and may be killed without taking it down."""
    ray_bin = Path(sys.executable).with_name("ray")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    tmp = tmp_path_factory.mktemp("ray")
    # a throwaway cluster on this machine: no token authentication (Ray 2.60's default), for its drivers here too
    saved = os.environ.get("RAY_AUTH_MODE")
    os.environ["RAY_AUTH_MODE"] = "disabled"
    env = {**os.environ, "RAY_ADDRESS": ""}
    start = [str(ray_bin), "start", "--head", f"--port={port}", "--node-ip-address=127.0.0.1", "--num-cpus=2",
             f"--object-store-memory={512 << 20}", "--include-dashboard=false", f"--temp-dir={tmp}",
             "--disable-usage-stats"]  # fmt: skip
    # its own session, so that its process group is the cluster's and nothing else's (see the teardown)
    res = subprocess.run(start, capture_output=True, text=True, env=env, timeout=120, start_new_session=True)
    assert res.returncode == 0, res.stderr
    address = f"127.0.0.1:{port}"
    yield address
    # stop this cluster only (`ray stop` would stop every Ray cluster on the machine): kill the process groups
    # of the processes whose command lines carry this session's temp dir (Ray's agents set their own titles)
    groups = set()
    for d in Path("/proc").iterdir():
        try:
            if d.name.isdigit() and str(tmp).encode() in (d / "cmdline").read_bytes():
                groups.add(os.getpgid(int(d.name)))
        except (OSError, ProcessLookupError):
            pass
    for g in groups - {os.getpgrp()}:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(g, signal.SIGKILL)
    if saved is None:
        os.environ.pop("RAY_AUTH_MODE", None)
    else:
        os.environ["RAY_AUTH_MODE"] = saved


def _cfg(address: str, **kw) -> RayConfig:
    return RayConfig(address=address, actors=2, cpus_per_actor=0.5, **kw)


def _images(root: Path, n: int) -> Path:
    return noise_images(root, n)


def _rows(path: Path) -> list[dict]:
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in path.read_text().splitlines()]
    with open(path, newline="", encoding="utf-8", errors="surrogateescape") as f:
        return list(csv.DictReader(f))


def test_same_rows_as_local_infer_and_bad_files_listed_alike(cluster, exported_artifact, tmp_path, monkeypatch):
    """... and the driver turns result blocks into rows a bounded slice at a time (whole blocks, which grow with
    the number of inputs, made its memory grow with N), with good and bad files mixed inside a slice."""
    from test_infer import bad_file_matrix

    from toolkit.pipelines import ray_infer

    monkeypatch.setattr(ray_infer, "RESULT_SLICE", 3)
    sizes, real_map = [], ray_infer.RayTransport.map

    def recording_map(self, chunks):
        for res in real_map(self, chunks):
            sizes.append(len(res.keys) + len(res.skipped))
            yield res

    monkeypatch.setattr(ray_infer.RayTransport, "map", recording_map)

    bad_file_matrix(tmp_path / "imgs")
    _images(tmp_path / "imgs" / "more", 30)
    # the rest of the hostile corpus: a name that is not UTF-8, a FIFO and a device behind image names
    shutil.copy(
        tmp_path / "imgs" / "more" / "0000.png", os.fsdecode(os.fsencode(tmp_path / "imgs") + b"/\xff-latin1-\xe9.png")
    )
    os.mkfifo(tmp_path / "imgs" / "fifo.png")
    (tmp_path / "imgs" / "zero.png").symlink_to("/dev/zero")
    local = run_inference(tmp_path / "imgs", exported_artifact, tmp_path / "local.csv", InferConfig(workers=0),
                          progress=False)  # fmt: skip
    cfg = InferConfig(batch=4)
    s = run_ray_inference(
        tmp_path / "imgs", exported_artifact, tmp_path / "ray.csv", cfg, _cfg(cluster), progress=False
    )
    key = lambda r: r["path"]  # noqa: E731
    assert sorted(_rows(tmp_path / "ray.csv"), key=key) == sorted(_rows(tmp_path / "local.csv"), key=key)
    ray_skipped = sorted(_rows(tmp_path / "ray.csv.skipped.csv"), key=key)
    assert ray_skipped == sorted(_rows(tmp_path / "local.csv.skipped.csv"), key=key) and len(ray_skipped) == 8
    assert s["rows_total"] == local["rows_total"] == 39 and s["skipped_total"] == 8
    assert "\udcff-latin1-\udce9.png" in {r["path"] for r in _rows(tmp_path / "ray.csv")}
    assert sum(sizes) == 47 and max(sizes) == 3, sizes  # whole blocks came back before (up to 7 rows here)


def test_resume_after_the_driver_is_killed(cluster, exported_artifact, tmp_path):
    imgs = _images(tmp_path / "imgs", 300)
    out = tmp_path / "p.jsonl"
    cmd = [*CLI, "infer", str(imgs), "--artifact", str(exported_artifact), "--out", str(out), "--ray", "auto",
           "--batch", "2", "--cpus-per-actor", "0.5"]  # fmt: skip
    env = {**os.environ, "RAY_ADDRESS": cluster}
    killed = kill_after_lines(cmd, out, 20, timeout=180, env=env)
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr
    rows = _rows(out)
    assert sorted(r["path"] for r in rows) == sorted(p.name for p in imgs.iterdir())  # one row per file
    if killed:
        assert "already done" in res.stdout


def _actor_pids() -> set[int]:
    pids = set()
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if b"MapWorker" in (d / "cmdline").read_bytes():
                    pids.add(int(d.name))
            except OSError:
                pass
    return pids


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds the actor's process in /proc")
def test_a_killed_actor_is_restarted_and_no_row_is_lost_or_doubled(cluster, exported_artifact, tmp_path):
    imgs = _images(tmp_path / "imgs", 240)
    out = tmp_path / "p.csv"
    killed: list[int] = []

    def killer() -> None:
        deadline = time.time() + 120
        while time.time() < deadline and not killed:
            pids = _actor_pids()
            if pids and out.is_file() and out.read_bytes().count(b"\n") >= 10:
                victim = sorted(pids)[0]
                os.kill(victim, signal.SIGKILL)
                killed.append(victim)
            time.sleep(0.01)

    t = threading.Thread(target=killer, daemon=True)
    t.start()
    s = run_ray_inference(imgs, exported_artifact, out, InferConfig(batch=2), _cfg(cluster), progress=False)
    t.join(5)
    assert killed, "no actor was found to kill"
    rows = _rows(out)
    assert sorted(r["path"] for r in rows) == sorted(p.name for p in imgs.iterdir()) and s["rows_total"] == 240


def test_file_lists_and_parquet_parts(cluster, exported_artifact, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    imgs = _images(tmp_path / "imgs", 20)
    names = sorted(p.name for p in imgs.iterdir())
    (tmp_path / "list.txt").write_text("".join(f"imgs/{n}\n" for n in names) + "\nimgs/missing.png\n")
    pq.write_table(pa.table({"path": [str(imgs / n) for n in names]}), tmp_path / "list.parquet")
    out = tmp_path / "parts"
    s = run_ray_inference(tmp_path / "list.txt", exported_artifact, out, InferConfig(batch=4), _cfg(cluster),
                          progress=False)  # fmt: skip
    assert s["rows_total"] == 20 and s["skipped_total"] == 1  # the missing file is listed, not fatal
    manifest = json.loads((out / "_manifest.json").read_text())
    table = pa.concat_tables([pq.read_table(out / p) for p in manifest["parts"]])
    assert sorted(table.column("path").to_pylist()) == [f"imgs/{n}" for n in names]
    local = run_inference(tmp_path / "list.parquet", exported_artifact, tmp_path / "l.csv", InferConfig(workers=0),
                          progress=False)  # fmt: skip
    assert local["rows_total"] == 20 and sorted(r["path"] for r in _rows(tmp_path / "l.csv")) == [
        str(imgs / n) for n in names
    ]
    # a torn part (written, never committed) is dropped on resume; committed keys are not predicted again
    shutil.copy(out / manifest["parts"][0], out / "part-999999.parquet")
    again = run_ray_inference(tmp_path / "list.txt", exported_artifact, out, InferConfig(batch=4), _cfg(cluster),
                              progress=False)  # fmt: skip
    assert again["already_done"] == 21 and again["predicted_now"] == 0
    assert not (out / "part-999999.parquet").exists()


def test_a_path_that_cannot_open_on_the_cluster_is_one_error_before_any_output(cluster, exported_artifact, tmp_path):
    from typer.testing import CliRunner

    from toolkit.cli import app

    imgs = _images(tmp_path / "imgs", 3)
    out = tmp_path / "o" / "p.csv"
    args = ["infer", str(imgs), "--artifact", str(exported_artifact), "--out", str(out), "--ray", cluster,
            "--engine", "trt", "--cpus-per-actor", "0.5"]  # fmt: skip
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 2 and "does not open on the cluster" in res.output, res.output
    assert not (tmp_path / "o").exists()


def test_r1_every_actor_is_pinned_to_the_artifact_the_run_started_with(cluster, exported_artifact, tmp_path,
                                                                        monkeypatch):  # fmt: skip
    """R1: `toolkit threshold` during a --ray run, then a restarted actor, labelled rows with the new threshold
    while the meta kept the old one (2,315 of 17,820 rows), and resume could not tell. Here the threshold changes
    after the driver opened the artifact and before any actor does: every actor refuses, the run stops in one
    line, no row carries the new threshold, and a resume is refused (the seal is part of the output's identity)."""
    from toolkit.artifact import Artifact
    from toolkit.pipelines import ray_infer
    from toolkit.predict import ArtifactChanged
    from toolkit.row_log import ResumeError

    art = tmp_path / "art"
    shutil.copytree(exported_artifact, art)
    with pytest.raises(ArtifactChanged, match="changed since this run started"):
        ray_infer.Predictor(str(art), None, {"engine": "onnxruntime", "precision": "fp32", "provider": "cpu",
                                              "threads": 1}, {"detector": "0" * 64})  # fmt: skip
    imgs = _images(tmp_path / "imgs", 12)
    real = ray_infer.RayTransport._write_todo

    def then_change_the_threshold(self, chunks):
        n = real(self, chunks)
        Artifact.open(art).update(threshold=0.977)  # what `toolkit threshold` does, while the run goes on
        return n

    monkeypatch.setattr(ray_infer.RayTransport, "_write_todo", then_change_the_threshold)
    out = tmp_path / "p.csv"
    with pytest.raises(ArtifactChanged, match="changed since this run started"):
        run_ray_inference(imgs, art, out, InferConfig(batch=4), _cfg(cluster), progress=False)
    assert not out.exists() or _rows(out) == []
    monkeypatch.setattr(ray_infer.RayTransport, "_write_todo", real)
    with pytest.raises(ResumeError, match=r"detector\.seal"):
        run_ray_inference(imgs, art, out, InferConfig(batch=4), _cfg(cluster), progress=False)

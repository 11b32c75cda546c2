"""`toolkit loadtest`'s closed loop and its figures, on stand-in transports whose latency is known, and the
refusal of targets outside loopback. The sweep against a real server is in test_serving.py."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from toolkit.serving.loadtest import Address, check_target, parse_address, run_cell


def _sleeper(slow_every: int = 10, fast_ms: float = 5.0, slow_ms: float = 40.0):
    """A stand-in server: request k (its first image's first byte) takes slow_ms when k % slow_every ==
    slow_every - 1, else fast_ms."""

    def new_sender():
        def send(payloads):
            time.sleep((slow_ms if payloads[0][0] % slow_every == slow_every - 1 else fast_ms) / 1e3)
            return 0

        return send

    return new_sender


POOL = [bytes([k]) for k in range(100)]


# request k of 200 takes PLATEAUS[k] ms: every percentile asked for lies inside a plateau (p50 rank 99.5 in the
# 5 ms block, p90 179.1 in the 15 ms one, p95 189.05 in the 25 ms one, p99 197.01 in the 40 ms one), so one request
# delayed by a loaded machine moves no percentile out of its block
PLATEAUS = [5.0] * 120 + [15.0] * 66 + [25.0] * 8 + [40.0] * 6


def test_percentiles_and_rates_match_a_known_latency_distribution():
    def new_sender():
        def send(payloads):
            time.sleep(PLATEAUS[payloads[0][0]] / 1e3)
            return 0

        return send

    pool = [bytes([k]) for k in range(200)]
    c = run_cell(new_sender, pool, concurrency=1, per_request=1, requests=200)
    want = np.percentile(PLATEAUS, [50, 90, 95, 99])
    assert list(want) == pytest.approx([5.0, 15.0, 25.0, 40.0])
    got = [c["p50_ms"], c["p90_ms"], c["p95_ms"], c["p99_ms"]]
    for g, w in zip(got, want, strict=True):
        assert w <= g <= w + 4.0, (got, list(want))  # sleeping never ends early; a loaded CI adds a little
    assert c["mean_ms"] == pytest.approx(np.mean(PLATEAUS), abs=3.0)
    assert c["requests"] == 200 and c["stopped_by"] == "requests" and c["errors"] == 0
    ideal = 1e3 / np.mean(PLATEAUS)  # requests per second with no overhead
    assert 0.75 * ideal <= c["requests_per_s"] <= ideal and c["images_per_s"] == c["requests_per_s"]


def test_concurrency_and_images_per_request_scale_the_rates():
    one = run_cell(_sleeper(slow_every=1000), POOL, concurrency=1, per_request=1, requests=40)
    four = run_cell(_sleeper(slow_every=1000), POOL, concurrency=4, per_request=8, requests=160)
    assert four["requests_per_s"] > 3.0 * one["requests_per_s"]  # four sleepers in flight at once
    assert four["images_per_s"] == pytest.approx(8 * four["requests_per_s"])
    assert four["p50_ms"] == pytest.approx(5.0, abs=4.0)


def test_failed_requests_and_items_are_counted_and_the_cell_goes_on():
    def new_sender():
        def send(payloads):
            k = payloads[0][0]
            if k % 4 == 0:
                raise ConnectionError(f"request {k} refused")
            return 1 if k % 4 == 1 else 0

        return send

    c = run_cell(new_sender, POOL, concurrency=2, per_request=1, requests=100, warmup_requests=3)
    assert c["requests"] == 100 and c["failed_requests"] == 25 and c["failed_items"] == 25 and c["errors"] == 50
    assert c["first_error"].startswith("ConnectionError: request ")


def test_a_duration_stops_a_cell_before_its_request_count():
    t = time.perf_counter()
    c = run_cell(_sleeper(slow_every=1000, fast_ms=2.0), POOL, concurrency=2, per_request=1, requests=10**6,
                 duration_s=0.3)  # fmt: skip
    assert c["stopped_by"] == "duration" and 0 < c["requests"] < 10**6
    assert time.perf_counter() - t < 5 and c["wall_s"] == pytest.approx(0.3, abs=0.2)


def test_warm_up_requests_are_sent_before_the_clock_and_not_counted():
    seen, started = [], []

    def new_sender():
        def send(payloads):
            seen.append((payloads[0][0], bool(started)))
            return 0

        return send

    c = run_cell(new_sender, POOL, concurrency=3, per_request=1, requests=10, warmup_requests=7,
                 on_start=lambda: started.append(1))  # fmt: skip
    assert c["requests"] == 10 and sum(1 for _, after in seen if not after) == 7 and len(seen) == 17


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("grpc://127.0.0.1:8001", Address("grpc", "127.0.0.1", 8001)),
        ("http://localhost:8000", Address("http", "localhost", 8000)),
        ("grpc://[::1]:8001", Address("grpc", "::1", 8001)),
    ],
)
def test_addresses_parse(text, want):
    assert parse_address(text) == want and str(want).startswith(want.protocol + "://")


@pytest.mark.parametrize("text", ["127.0.0.1:8001", "tcp://127.0.0.1:8001", "grpc://127.0.0.1", "grpc://h:0",
                                  "http://127.0.0.1:8000/v2"])  # fmt: skip
def test_bad_addresses_are_one_line(text):
    with pytest.raises(ValueError, match=r"grpc://HOST:PORT|port"):
        parse_address(text)


def test_a_target_outside_loopback_needs_allow_remote():
    check_target(parse_address("grpc://127.0.0.1:8001"), allow_remote=False)
    check_target(parse_address("grpc://localhost:8001"), allow_remote=False)
    with pytest.raises(ValueError, match="--allow-remote"):
        check_target(parse_address("grpc://10.1.2.3:8001"), allow_remote=False)
    check_target(parse_address("grpc://10.1.2.3:8001"), allow_remote=True)


def test_the_cli_refuses_a_remote_target_in_one_line_before_any_request(tmp_path):
    from typer.testing import CliRunner

    from toolkit.cli import app

    res = CliRunner().invoke(app, ["loadtest", "grpc://10.1.2.3:8001", "--out", str(tmp_path / "r")])
    assert res.exit_code == 2 and "--allow-remote" in res.output and "Traceback" not in res.output
    assert not (tmp_path / "r").exists()
    res = CliRunner().invoke(app, ["loadtest", str(tmp_path / "nothing"), "--concurrency", "1,x"])
    assert res.exit_code == 2 and "--concurrency takes comma-separated" in res.output


def test_the_server_counters_are_read_once_they_count_every_answered_request():
    """Triton counts a request after sending its response: the counters read right after the last response can
    miss it (a CI run saw 11 of 12), so the cell's closing read waits, bounded, until the answered requests are
    counted; a server that never counts them costs `timeout_s`, not a hang."""
    from toolkit.serving.loadtest import settled_counters

    before = {"success": (5, 0)}
    reads = iter([{"success": (16, 0)}, {"success": (16, 0)}, {"success": (17, 0)}, {"success": (99, 0)}])
    assert settled_counters(lambda: next(reads), before, answered=12, poll_s=0)["success"] == (17, 0)
    stuck = settled_counters(lambda: {"success": (16, 0)}, before, answered=12, timeout_s=0.05, poll_s=0.01)
    assert stuck["success"] == (16, 0)
    gone = {"unavailable": "no statistics"}
    assert settled_counters(lambda: gone, before, answered=12) is gone  # nothing to wait for


def test_the_served_artifacts_logs_are_kept_when_a_cell_had_errors(tmp_path):
    """Bug: a served artifact's logs removed with its temporary directory after requests failed (a run lost 774
    requests to "Server is stopping" and nothing said why); kept when nothing failed, clutter."""
    from toolkit.serving.loadtest import keep_server_logs, markdown

    logs = [tmp_path / "serve.log", tmp_path / "serve.triton.log"]
    for i, f in enumerate(logs):
        f.write_text(f"line {i}\n")
    said = []
    assert keep_server_logs(logs, [{"errors": 0}, {"errors": 0}], said.append) is None and said == []
    assert keep_server_logs([], [{"errors": 3}], said.append) is None  # an address target: no logs of ours
    kept = keep_server_logs(logs, [{"errors": 0}, {"errors": 3}], said.append)
    try:
        assert sorted(p.name for p in Path(kept).iterdir()) == ["serve.log", "serve.triton.log"]
        assert (Path(kept) / "serve.triton.log").read_text() == "line 1\n" and said == [
            f"requests failed: the server's logs are kept in {kept}"
        ]
        r = {"address": "grpc://127.0.0.1:1", "served_artifact": "a", "server_logs": kept, "images": "x",
             "config": {"requests": 1, "duration_s": None, "warmup_requests": 0}, "cells": []}  # fmt: skip
        assert f"logs are kept in `{kept}`" in markdown(r)
    finally:
        shutil.rmtree(kept)

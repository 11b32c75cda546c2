"""The runners' bookkeeping at scale: N synthetic inputs through the real source streaming, done index, commits and
output files, with a stand-in prediction stage that costs nothing (no file is read), local and `--ray`.

  python -m benchmarks.scale_sim --n 100000 1000000 10000000 [--ray-n 100000 1000000] [--kills 5]
Per N and runner (each in a fresh process): driver peak RSS, rows/s, output bytes per row; then a run SIGKILLed at
50% and resumed (time to its first new row, total); and, at the --kills N, a run SIGKILLed at 5 random moments
and resumed each time, then checked for exactly one row per input. Writes benchmarks/results/scale_sim.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).parent / "results"


class NullTransport:
    """The prediction stage, replaced: every input 'predicted' at once, nothing read."""

    def __init__(self):
        self.first_row_s: float | None = None

    def map(self, chunks):
        from toolkit.runner import Result

        for chunk in chunks:
            if self.first_row_s is None:
                self.first_row_s = time.perf_counter()
            n = len(chunk)
            out = {"logit": np.zeros(n, np.float32), "p_generated": np.full(n, 0.5, np.float32),
                   "is_generated": np.zeros(n, bool)}  # fmt: skip
            yield Result([t.key for t in chunk], out, [], [t.chunk for t in chunk])


class NullPredictor:
    """The Ray actor's stage, replaced: the same columns as toolkit.pipelines.ray_infer.Predictor, nothing read."""

    def __init__(self, *args):
        pass

    def __call__(self, batch: dict) -> dict:
        n = len(batch["key"])
        return {"key": batch["key"], "chunk": batch["chunk"], "logit": np.zeros(n, np.float32),
                "p_generated": np.full(n, 0.5, np.float32), "is_generated": np.zeros(n, bool),
                "error": np.array([""] * n, dtype=object)}  # fmt: skip


def child(mode: str, lst: Path, out: Path, ray_batch: int = 4096) -> dict:
    """One driver run (resuming if `out` has a committed part); -> its figures."""
    from toolkit.runner import open_output, run_loop
    from toolkit.sources import open_source

    t0 = time.perf_counter()
    parts = RssParts()
    src = open_source(lst)
    plog = open_output(out, {"stand-in": "scale_sim"}, src.root)
    extra = {}
    if mode == "local":
        transport = NullTransport()
        tally, before = run_loop(src, plog, transport, "sim", progress=False, log=lambda *_: None)
        first = transport.first_row_s
    else:
        import ray

        from toolkit.pipelines.ray_infer import RayConfig, RayTransport, connect

        cfg = RayConfig(address="local", actors=2, cpus_per_actor=0.5)
        connect(cfg)
        t_ray = time.perf_counter()
        transport = RayTransport(plog.paths.work, (), ray_batch, cfg, {"num_cpus": 0.5}, predictor=NullPredictor)
        tally, before = run_loop(src, plog, transport, "sim", progress=False, log=lambda *_: None)
        first = None
        extra = {"ray_start_s": t_ray - t0, **transport.timing}
        ray.shutdown()
    wall = time.perf_counter() - t0
    return {"mode": mode, "done_before": before, "rows_now": tally.n_rows, "wall_s": wall,
            "rows_per_s": tally.n_rows / wall if wall else None,
            "first_new_row_s": None if first is None else first - t0,
            "peak_rss_mb": peak_rss_mb(), **parts.stop(), **extra}  # fmt: skip


class RssParts:
    """The peaks of this process's resident memory by kind, sampled every 0.1 s: `anon` is its own (the Python heap,
    numpy, SQLite), `shmem` the shared pages it has mapped and touched (with Ray: objects of the plasma store read
    zero-copy, bounded by the store's size and owned by the raylet), `file` mapped files (libraries)."""

    def __init__(self):
        self.KEYS = {"RssAnon:": "peak_anon_mb", "RssShmem:": "peak_shmem_mb", "RssFile:": "peak_file_mb"}
        import threading

        self.peaks = dict.fromkeys(self.KEYS.values(), 0.0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        for line in Path("/proc/self/status").read_text().splitlines():
            key = self.KEYS.get(line.split(maxsplit=1)[0] if line else "")
            if key:
                self.peaks[key] = max(self.peaks[key], int(line.split()[1]) / 1024)

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            self._sample()

    def stop(self) -> dict[str, float]:
        self._stop.set()
        self._thread.join()
        self._sample()
        return dict(self.peaks)


def peak_rss_mb() -> float:
    """This process's peak resident memory since its exec (VmHWM). getrusage's ru_maxrss would include the RSS of
    the parent it was forked from, before the exec (Linux keeps it across execve)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def make_list(work: Path, n: int) -> Path:
    from toolkit.io import atomic_path

    lst = work / f"list-{n}.txt"
    if not lst.is_file():  # atomic: a list cut short by a killed run would be reused
        with atomic_path(lst) as tmp, open(tmp, "w") as f:
            for i in range(n):
                f.write(f"shard{i % 1000:04d}/image_{i:010d}.jpg\n")
    return lst


def _run(mode: str, lst: Path, out: Path, timeout: float = 7200) -> dict:
    cmd = [sys.executable, "-m", "benchmarks.scale_sim", "--child", mode, str(lst), str(out)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if res.returncode != 0:
        raise RuntimeError(f"{cmd}: {res.stderr[-2000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def _kill_at(mode: str, lst: Path, out: Path, lines: int, timeout: float = 3600) -> bool:
    cmd = [sys.executable, "-m", "benchmarks.scale_sim", "--child", mode, str(lst), str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if out.is_file() and out.stat().st_size and _lines(out) >= lines:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.2)
    proc.wait()
    return proc.returncode == -signal.SIGKILL


def _lines(path: Path) -> int:
    with open(path, "rb") as f:
        return sum(buf.count(b"\n") for buf in iter(lambda: f.read(1 << 24), b""))


def _one_row_per_input(out: Path, n: int) -> bool:
    import hashlib

    seen = set()
    rows = 0
    with open(out, encoding="utf-8", errors="surrogateescape", newline="") as f:
        next(f)
        for line in f:
            seen.add(hashlib.blake2b(line.split(",", 1)[0].encode(), digest_size=16).digest())
            rows += 1
    return rows == n == len(seen)


def main(argv: list[str] | None = None) -> None:
    if argv is None and len(sys.argv) > 1 and sys.argv[1] == "--child":
        batch = int(os.environ.get("RAY_BATCH", 4096))
        print(json.dumps(child(sys.argv[2], Path(sys.argv[3]), Path(sys.argv[4]), batch)))
        return
    from benchmarks.environment import cpu_line, environment
    from benchmarks.report import command_line
    from toolkit.io import write_json, write_text

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", nargs="*", type=int, default=[100_000, 1_000_000, 10_000_000])
    ap.add_argument("--ray-n", nargs="*", type=int, default=[100_000, 1_000_000, 10_000_000])
    ap.add_argument("--ray-batch", type=int, default=4096, help="rows per Ray Data batch")
    ap.add_argument("--append", action="store_true", help="add to the runs already in --out's JSON")
    ap.add_argument("--kills", type=int, default=1_000_000, help="N of the 5-random-kills check (0: skip)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/scale_sim"))
    ap.add_argument("--out", type=Path, default=RESULTS / "scale_sim")
    args = ap.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    os.environ["RAY_BATCH"] = str(args.ray_batch)
    record = {"command": command_line("benchmarks.scale_sim", argv), "environment": environment(), "runs": []}
    if args.append and args.out.with_suffix(".json").is_file():
        old = json.loads(args.out.with_suffix(".json").read_text())
        record["runs"] = old["runs"]
        record["random_kills"] = old.get("random_kills")
        record["command"] = old["command"] + "; then " + record["command"]
        record = {k: v for k, v in record.items() if v is not None}

    def save() -> None:
        write_json(args.out.with_suffix(".json"), record)
        write_text(args.out.with_suffix(".md"), markdown(record, cpu_line(record["environment"])))

    for mode, ns in (("local", args.n), ("ray", args.ray_n)):
        for n in ns:
            lst = make_list(args.work, n)
            out = args.work / f"{mode}-{n}.csv"
            for f in args.work.glob(f"{mode}-{n}.csv*"):
                f.unlink() if f.is_file() else __import__("shutil").rmtree(f)
            full = _run(mode, lst, out)
            full["bytes_per_row"] = (out.stat().st_size + (args.work / f"{out.name}.done.sqlite").stat().st_size) / n
            full["csv_bytes_per_row"] = out.stat().st_size / n
            full["one_row_per_input"] = _one_row_per_input(out, n)
            for f in args.work.glob(f"{mode}-{n}.csv*"):
                f.unlink() if f.is_file() else __import__("shutil").rmtree(f)
            killed = _kill_at(mode, lst, out, n // 2)
            resumed = _run(mode, lst, out)
            record["runs"].append({"n": n, "full": full, "killed_at_half": killed, "resume": resumed,
                                   "resumed_one_row_per_input": _one_row_per_input(out, n)})  # fmt: skip
            print(json.dumps(record["runs"][-1]), flush=True)
            save()
    if args.kills:
        n, lst = args.kills, make_list(args.work, args.kills)
        out = args.work / f"kills-{n}.csv"
        for f in args.work.glob(f"kills-{n}.csv*"):
            f.unlink()
        rng = random.Random(0)
        kills = []
        for _ in range(5):
            target = _lines(out) + rng.randint(1, n // 6) if out.is_file() else rng.randint(1, n // 6)
            kills.append({"at_lines": target, "killed": _kill_at("local", lst, out, target)})
        final = _run("local", lst, out)
        record["random_kills"] = {
            "n": n,
            "kills": kills,
            "final": final,
            "one_row_per_input": _one_row_per_input(out, n),
        }
        save()
    print(markdown(record, cpu_line(record["environment"])))


def markdown(r: dict, machine: str) -> str:
    lines = ["# The runners' bookkeeping at scale (stand-in prediction stage)", "",
             f"Command: `{r['command']}`  ", f"Machine: {machine}.", "",
             "| runner | N | driver peak RSS MB | of which own (anon) / shared (shmem) MB | rows/s | bytes/row (CSV + "
             "index) | one row per input | resume after SIGKILL at 50%: first new row s / total s | resumed: one row "
             "per input |",
             "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for run in r["runs"]:
        f, res = run["full"], run["resume"]
        first = f"{res['first_new_row_s']:.1f}" if res.get("first_new_row_s") is not None else "-"
        parts = f"{f['peak_anon_mb']:.0f} / {f['peak_shmem_mb']:.0f}" if "peak_anon_mb" in f else "-"
        lines.append(f"| {f['mode']} | {run['n']:,} | {f['peak_rss_mb']:.0f} | {parts} | {f['rows_per_s']:,.0f} | "
                     f"{f['csv_bytes_per_row']:.0f} + {f['bytes_per_row'] - f['csv_bytes_per_row']:.0f} | "
                     f"{f['one_row_per_input']} | {first} / {res['wall_s']:.1f} (done before {res['done_before']:,}) "
                     f"| {run['resumed_one_row_per_input']} |")  # fmt: skip
    for run in r["runs"]:
        if run["full"]["mode"] == "ray":
            f = run["full"]
            lines.append(f"\nRay at N={run['n']:,}: cluster start {f.get('ray_start_s', 0):.1f} s, writing what is "
                         f"left {f.get('todo_write_s', 0):.1f} s, the rest is Ray Data moving rows through the actors "
                         f"and their results back ({f['wall_s']:.1f} s in all).")  # fmt: skip
    lines += ["", "Targets (issue 21), read from the rows above:"]
    by_mode = {m: sorted((x for x in r["runs"] if x["full"]["mode"] == m), key=lambda x: x["n"])
               for m in ("local", "ray")}  # fmt: skip
    for mode, runs in by_mode.items():
        if len(runs) > 1:
            lo, hi = runs[0], runs[-1]
            bound = 1.2 * lo["full"]["peak_rss_mb"] + 200
            lines.append(f"- {mode}: driver peak RSS at {hi['n']:,} is {hi['full']['peak_rss_mb']:.0f} MB, against "
                         f"1.2 x {lo['full']['peak_rss_mb']:.0f} (at {lo['n']:,}) + 200 = {bound:.0f} MB: "
                         f"{'met' if hi['full']['peak_rss_mb'] <= bound else 'NOT met'}.")  # fmt: skip
    if by_mode["local"]:
        hi = by_mode["local"][-1]
        first = hi["resume"].get("first_new_row_s")
        lines.append(f"- local at {hi['n']:,}: {hi['full']['rows_per_s']:,.0f} rows/s (target >= 50,000: "
                     f"{'met' if hi['full']['rows_per_s'] >= 50_000 else 'NOT met'}); resumed after a SIGKILL at half, "
                     f"its first new row came after {first:.1f} s (target <= 60 s: "
                     f"{'met' if first is not None and first <= 60 else 'NOT met'}).")  # fmt: skip
    if by_mode["ray"]:
        lines.append(
            "- ray: an actor writes each batch's results as a Parquet file and hands back its name; the "
            "driver reads, commits and removes it (the rows never pass through the object store to it)."
        )
    if "random_kills" in r:
        k = r["random_kills"]
        lines.append(f"\nSIGKILLed at 5 random moments and resumed each time, N={k['n']:,}: "
                     f"{sum(x['killed'] for x in k['kills'])} kills landed; after the final run exactly one row per "
                     f"input: {k['one_row_per_input']}.")  # fmt: skip
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()

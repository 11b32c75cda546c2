"""`toolkit loadtest ARTIFACT --tune --p99-ms X`: Model Analyzer's question for `toolkit serve` on this machine:
which instances x max batch x queue delay (x engine threads and decode threads per instance) serves the most
images/s while its p99 latency stays within a budget, under the workload the user expects (one concurrency x images
per request).

Every point of the grid is served on loopback and measured with loadtest's closed loop (the same workload,
the same images), and the default config (`toolkit serve`'s defaults) is measured too, so the record says what
the chosen config gains. The record goes to the artifact's `tuning/` folder, one file per machine fingerprint
(as `bench --tune`'s: not part of the artifact's identity), with every point; `toolkit serve --config auto`
and `toolkit triton-repo --config auto` read the chosen config back from it.

A point qualifies when it served every request without error and its p99 is within the budget; among those
the most images/s wins (ties: the lower p99). When none qualifies, the record says so and nothing is chosen.
With `repeats` > 1 the whole grid is measured again in interleaved rounds, and a point's figures are its mean
images/s and its worst p99 over the rounds: one round's p99 on a busy machine is a noisy figure (measured on this
2-core VM, the chosen point's p99 read 48.5 ms in the search and 54.0 / 62.6 ms in two re-measurements).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

SERVE_TUNING_PREFIX = "serve-"


@dataclass
class SearchSpace:
    instances: tuple[int, ...] = (1, 2)
    max_batch: tuple[int, ...] = (8, 64)
    max_queue_delay_us: tuple[int, ...] = (0, 2000)
    threads: tuple[int | None, ...] = (None,)  # None: cores / instances, as `toolkit serve` does
    # threads decoding a batch's images per instance; None: cores, as `toolkit serve` does. On 2 cores decode is
    # what bounds the server's ceiling (benchmarks/results/serve_load.md), so it is a knob worth searching
    decode_threads: tuple[int | None, ...] = (None,)

    def points(self) -> list[dict]:
        grid = itertools.product(
            self.instances, self.max_batch, self.max_queue_delay_us, self.threads, self.decode_threads
        )
        return [
            dict(instances=i, max_batch=b, max_queue_delay_us=d, threads=t, decode_threads=dt)
            for i, b, d, t, dt in grid
        ]


# toolkit serve's defaults
DEFAULT_POINT = {"instances": 1, "max_batch": 64, "max_queue_delay_us": 2000, "threads": None, "decode_threads": None}


def qualifies(cell: dict, p99_ms: float) -> bool:
    """A measured point qualifies: every request served without error, its p99 within the budget."""
    return cell["errors"] == 0 and cell["p99_ms"] is not None and cell["p99_ms"] <= p99_ms


def choose(points: list[dict], p99_ms: float) -> dict | None:
    """The qualifying point with the most images/s (ties: lower p99), or None; `points`: [{config, cell}]."""
    ok = [p for p in points if qualifies(p["cell"], p99_ms)]
    return max(ok, key=lambda p: (p["cell"]["images_per_s"], -p["cell"]["p99_ms"])) if ok else None


def over_rounds(cells: list[dict]) -> dict:
    """One point's cells from several rounds -> its figures: mean throughput, worst percentiles, every error."""
    if len(cells) == 1:
        return cells[0]
    out = dict(cells[-1])
    for k in ("images_per_s", "requests_per_s"):
        if k in out:
            out[k] = sum(c[k] for c in cells) / len(cells)
    for k in ("p50_ms", "p90_ms", "p95_ms", "p99_ms"):
        values = [c[k] for c in cells if c.get(k) is not None]
        out[k] = max(values) if values and len(values) == len(cells) else None
    for k in ("errors", "failed_requests", "failed_items", "requests"):
        if k in out:
            out[k] = sum(c[k] for c in cells)
    out["rounds"] = len(cells)
    return out


def search(
    measure: Callable[[dict], dict],
    space: SearchSpace,
    p99_ms: float,
    log: Callable[[str], None] = print,
    repeats: int = 1,
) -> dict:
    """Measure every point of `space` and the default with `measure(config) -> loadtest cell`, `repeats` rounds
    over the whole grid; -> {points (each with its rounds' cells), default, chosen (a point or None), budget}."""
    if p99_ms <= 0:
        raise ValueError(f"--p99-ms must be positive, got {p99_ms}")
    if repeats < 1:
        raise ValueError(f"--tune-repeats must be at least 1, got {repeats}")
    configs = space.points()
    if DEFAULT_POINT not in configs:
        configs.append(dict(DEFAULT_POINT))
    runs: list[list[dict]] = [[] for _ in configs]
    for r in range(repeats):
        for k, config in enumerate(configs):
            cell = measure(config)
            runs[k].append(cell)
            verdict = "meets" if qualifies(cell, p99_ms) else "misses"
            where = f"round {r + 1}/{repeats}, " if repeats > 1 else ""
            log(f"[{where}{k + 1}/{len(configs)}] {describe(config)}: {cell['images_per_s']:.1f} images/s, p99 "
                f"{cell['p99_ms']:.1f} ms, errors {cell['errors']}: {verdict} the budget")  # fmt: skip
    points = [{"config": c, "cell": over_rounds(cells), "rounds": cells}
              for c, cells in zip(configs, runs, strict=True)]  # fmt: skip
    default = next(p for p in points if p["config"] == DEFAULT_POINT)
    return {"p99_ms": p99_ms, "repeats": repeats, "points": points, "default": default,
            "chosen": choose(points, p99_ms)}  # fmt: skip


def _auto(value) -> str:
    return "auto" if value is None else str(value)


def describe(config: dict) -> str:
    return (f"instances {config['instances']}, max batch {config['max_batch']}, queue delay "
            f"{config['max_queue_delay_us']} us, threads {_auto(config['threads'])}, decode threads "
            f"{_auto(config.get('decode_threads'))}")  # fmt: skip


def record_path(artifact_dir: str | Path) -> Path:
    from toolkit.tuning import TUNING, fingerprint, fingerprint_id

    return Path(artifact_dir) / TUNING / f"{SERVE_TUNING_PREFIX}{fingerprint_id(fingerprint())}.json"


def tune(
    artifact_dir: str | Path,
    p99_ms: float,
    workload,
    space: SearchSpace,
    serve,
    images: Path | None = None,
    pool_size: int = 256,
    command: str | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
    repeats: int = 1,
) -> tuple[dict, Path]:
    """Search `space` for `artifact_dir` under `workload` (a LoadConfig of one concurrency x one batch) with
    `serve`'s engine and precision; -> (record, its path in the artifact's tuning/)."""
    from toolkit.artifact import Artifact
    from toolkit.io import write_json
    from toolkit.serving.loadtest import image_pool, loadtest
    from toolkit.tuning import fingerprint

    if len(workload.concurrency) != 1 or len(workload.batch) != 1:
        raise ValueError("--tune measures one workload: give one --concurrency and one --batch")
    art = Artifact.open(artifact_dir)  # a bad artifact is one line before any server starts
    pool, what = image_pool(images, pool_size)

    def measure(config: dict) -> dict:
        opts = replace(serve, **config)
        r = loadtest(art.dir, workload, serve=opts, progress=progress, log=lambda *_: None, pool=(pool, what))
        return r["cells"][0]

    found = search(measure, space, p99_ms, log, repeats)
    record = {
        "fingerprint": fingerprint(),
        "command": command,
        "engine": serve.engine,
        "precision": serve.precision,
        "workload": {
            "concurrency": workload.concurrency[0],
            "images_per_request": workload.batch[0],
            "requests": workload.requests,
            "duration_s": workload.duration_s,
            "images": what,
        },
        "space": asdict(space),
        **found,
    }
    return record, write_json(record_path(art.dir), record)


def tuned(cfg, artifact, fields: tuple[str, ...], log: Callable[[str], None] = print):
    """`cfg` (a ServeConfig or RepositoryConfig) with `fields` taken from the config `--tune` chose for
    `artifact` (a directory or an Artifact) on this machine."""
    chosen = chosen_config(getattr(artifact, "dir", artifact))
    values = {f: chosen.get(f, DEFAULT_POINT.get(f)) for f in fields}  # a record before decode threads: the default
    log("--config auto: " + ", ".join(f"{k} {_auto(v)}" for k, v in values.items()))
    return replace(cfg, **values, tuned=False)


def chosen_config(artifact_dir: str | Path) -> dict:
    """The config `--tune` chose for this artifact on this machine, for `--config auto`; a one-line error when
    there is no record for this machine or the search chose nothing."""
    from toolkit.io import read_json

    path = record_path(artifact_dir)
    if not path.is_file():
        raise ValueError(f"{path.parent}: no serving tuning record for this machine (run 'toolkit loadtest "
                         f"{artifact_dir} --tune --p99-ms MS' first)")  # fmt: skip
    rec = read_json(path)
    if not rec.get("chosen"):
        raise ValueError(f"{path}: no config met the p99 budget of {rec['p99_ms']} ms in the search; rerun it with a "
                         "larger budget or another grid")  # fmt: skip
    return {**rec["chosen"]["config"], "engine": rec["engine"], "precision": rec["precision"]}


def markdown(record: dict) -> str:
    w, chosen, default = record["workload"], record["chosen"], record["default"]
    lines = [
        f"# Serving config search: p99 <= {record['p99_ms']:g} ms ({record['engine']} {record['precision']})",
        "",
        *([f"Command: `{record['command']}`  "] if record.get("command") else []),
        f"Workload: {w['concurrency']} concurrent requests of {w['images_per_request']} image(s), "
        f"{w['requests']} requests per point and round, {w['images']}; {record.get('repeats', 1)} round(s) over the "
        "grid, interleaved (a point's images/s: the mean over rounds; its p50 and p99: the worst round's).",
        "",
        "| instances | max batch | queue delay us | threads | decode threads | images/s | p50 ms | p99 ms | errors | |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for p in record["points"]:
        c, cell = p["config"], p["cell"]
        marks = ["chosen"] if chosen and p["config"] == chosen["config"] else []
        marks += ["default"] if p["config"] == default["config"] else []
        mark = ", ".join(marks)
        lines.append(
            f"| {c['instances']} | {c['max_batch']} | {c['max_queue_delay_us']} | "
            f"{_auto(c['threads'])} | {_auto(c.get('decode_threads'))} | {cell['images_per_s']:.1f} | "
            f"{cell['p50_ms']:.1f} | {cell['p99_ms']:.1f} | {cell['errors']} | {mark} |"
        )
    lines.append("")
    if chosen:
        gain = chosen["cell"]["images_per_s"] / default["cell"]["images_per_s"]
        lines.append(f"Chosen: {describe(chosen['config'])}, {chosen['cell']['images_per_s']:.1f} images/s at p99 "
                     f"{chosen['cell']['p99_ms']:.1f} ms, {gain:.2f}x the default config's images/s.")  # fmt: skip
    else:
        lines.append("No point met the budget: nothing chosen.")
    return "\n".join(lines) + "\n"


def tune_and_report(artifact_dir, p99_ms, workload, space, serve, out_dir: Path, images=None, pool_size=256,
                    command=None, progress=True, log=print, repeats=1) -> tuple[dict, dict[str, Path]]:  # fmt: skip
    """`tune`, plus its table as tune.md and tune.json under `out_dir` (what `toolkit loadtest --tune` runs)."""
    from toolkit.io import write_json, write_text

    record, path = tune(
        artifact_dir, p99_ms, workload, space, serve, images, pool_size, command, progress, log, repeats
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    return record, {
        "record": path,
        "json": write_json(out_dir / "tune.json", record),
        "md": write_text(out_dir / "tune.md", markdown(record)),
    }

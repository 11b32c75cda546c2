"""Local `toolkit infer` against `toolkit infer --ray local` on the same folder, in one run (Ray issue).

Both run the one prediction path with the same engine, precision and batch; local decodes in `--workers`
processes and runs one engine, Ray runs an actor pool (`--actors`, each decoding and running its own
engine) on a local cluster started by the command. Each mode writes fresh outputs (`--overwrite`), and the
rows of the two are checked equal. Reported: whole-command images/s (Ray's includes starting the cluster)
and images/s after the engines opened (what a long run converges to), and their ratio.

  .venv/bin/python -m benchmarks.ray_infer --images DIR --artifact A [--artifact B ...] [--batch 8]
Writes benchmarks/results/ray_infer.{md,json} with the machine fingerprint and the command.
"""

from __future__ import annotations

import argparse
import csv
import tempfile
from pathlib import Path

from benchmarks.environment import cpu_line, environment
from benchmarks.report import command_line, write_result

RESULTS = Path(__file__).parent / "results"


def measure(images: Path, artifact: Path, batch: int, workers: int, actors: int, cpus: float, log=print) -> dict:
    from toolkit.artifact import Artifact
    from toolkit.pipelines.infer import InferConfig, run_inference
    from toolkit.pipelines.ray_infer import RayConfig, run_ray_inference

    cfg = InferConfig(batch=batch, workers=workers, overwrite=True)
    with tempfile.TemporaryDirectory() as tmp:
        log(f"{artifact}: local infer ...")
        local = run_inference(images, artifact, Path(tmp) / "local.csv", cfg, progress=False, log=lambda *_: None)
        log(f"{artifact}: ray infer ...")
        rc = RayConfig(address="local", actors=actors, cpus_per_actor=cpus)
        ray = run_ray_inference(images, artifact, Path(tmp) / "ray.csv", cfg, rc, progress=False, log=lambda *_: None)
        rows = [_rows(Path(tmp) / f) for f in ("local.csv", "ray.csv")]
    keys = ("images_found", "wall_s", "images_per_s", "engine_open_s", "images_per_s_after_open")
    return {
        "model": Artifact.open(artifact).model_name,
        "artifact": str(artifact),
        "batch": batch,
        "local": {k: local[k] for k in keys} | {"workers": workers},
        "ray": {k: ray[k] for k in keys} | {"actors": actors, "cpus_per_actor": cpus},
        "rows_equal": rows[0] == rows[1],
        "ratio": ray["images_per_s"] / local["images_per_s"],
        "ratio_after_open": ray["images_per_s_after_open"] / local["images_per_s_after_open"],
    }


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return sorted(csv.DictReader(f), key=lambda r: r["path"])


def markdown(res: list[dict], env: dict, command: str) -> str:
    lines = [
        "# Ray Data against local `toolkit infer`, same folder, same machine, one run",
        "",
        f"Command: `{command}`  ",
        f"Machine: {cpu_line(env)}, "
        f"onnxruntime {env['versions'].get('onnxruntime')}, ray {env['versions'].get('ray')}.",
        "",
        "| model | images | batch | local img/s (whole / after open) | Ray img/s (whole / after open) "
        "| Ray / local (whole) | Ray / local (after open) | rows equal |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in res:
        lo, ra = r["local"], r["ray"]
        model = r["model"].replace("|", r"\|")
        lines.append(
            f"| {model} | {lo['images_found']} | {r['batch']} | {lo['images_per_s']:.1f} / "
            f"{lo['images_per_s_after_open']:.1f} | {ra['images_per_s']:.1f} / {ra['images_per_s_after_open']:.1f} "
            f"| **{r['ratio']:.2f}x** | {r['ratio_after_open']:.2f}x | {r['rows_equal']} |"
        )
    lines += [
        "",
        "Whole: the command's images/s, engine opening and (for Ray) starting the local cluster included. After",
        "open: from the moment the engines (for Ray: the cluster and the pre-flight engine) were ready.",
        "",
    ]
    for r in res:
        lo, ra = r["local"], r["ray"]
        lines.append(
            f"- {r['model']}: opening took {lo['engine_open_s']:.1f} s locally and {ra['engine_open_s']:.1f} s "
            f"with Ray (cluster start + one pre-flight engine where the actors run); the rest of the gap is "
            "per-batch hand-offs through Ray's object store and the CPU its own processes (raylet, GCS) take "
            "on a machine whose cores also run the engines."
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=Path, required=True)
    ap.add_argument("--artifact", type=Path, action="append", required=True)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--workers", type=int, default=2, help="local: decode worker processes")
    ap.add_argument("--actors", type=int, default=2, help="ray: actor pool size")
    ap.add_argument("--cpus-per-actor", type=float, default=1.0)
    ap.add_argument("--out", type=Path, default=RESULTS / "ray_infer")
    args = ap.parse_args(argv)
    command = command_line("benchmarks.ray_infer", argv)
    env = environment()
    res = [measure(args.images, a, args.batch, args.workers, args.actors, args.cpus_per_actor) for a in args.artifact]
    md = markdown(res, env, command)
    write_result(args.out, {"command": command, "environment": env, "results": res}, md)


if __name__ == "__main__":
    main()

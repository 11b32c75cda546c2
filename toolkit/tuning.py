"""`--engine auto`: the fastest gated engine x precision on this machine, from a `toolkit bench --tune` record.

The record lives in the artifact's `tuning/` folder (machine-specific, like `plans/`; not part of the
artifact's identity), one file per machine fingerprint: CPU model and speed flags, core count, GPU,
and the runtime versions, since any of them changes which engine wins. For each batch size it lists the
measured engine x precision pairs whose precision passed its gate. `resolve` picks the fastest for the
batch in use (the nearest measured batch when that one was not), or says which fallback it took and why.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

TUNING = "tuning"
FALLBACK = ("onnxruntime", "fp32")


def fingerprint() -> dict:
    from toolkit.artifact import tool_versions
    from toolkit.machine import cpu_flags, cpu_model

    gpu = None
    try:
        import torch

        if torch.cuda.is_available():
            p = torch.cuda.get_device_properties(0)
            gpu = f"{p.name} (cc {p.major}.{p.minor})"
    except ImportError:
        pass
    return {
        "cpu": cpu_model(),
        "cpu_flags": cpu_flags(),
        "cpus": os.cpu_count(),
        "gpu": gpu,
        "versions": tool_versions(("onnxruntime", "openvino", "torch", "tensorrt")),
    }


def fingerprint_id(fp: dict) -> str:
    return hashlib.sha256(json.dumps(fp, sort_keys=True).encode()).hexdigest()[:16]


def record_path(artifact, fp: dict | None = None) -> Path:
    return Path(artifact.dir) / TUNING / f"{fingerprint_id(fp or fingerprint())}.json"


def measured_from_targets(artifact, targets: dict, provider: str = "cpu") -> dict[int, list[dict]]:
    """Bench-shaped targets (name -> {engine, precision, status, latency: {batch: {p50_ms, throughput_ips}}})
    -> batch -> candidates, keeping only precisions whose gate passed (fp32 is the ungated reference)."""
    measured: dict[int, list[dict]] = {}
    for name, t in targets.items():
        gate = artifact.gates.get(t["precision"], {}).get("passed", t["precision"] == "fp32")
        if t["status"] != "ok" or not gate or t["precision"] not in artifact.precisions:
            continue
        for b, lat in t["latency"].items():
            measured.setdefault(int(b), []).append(
                {
                    "target": name,
                    "engine": t["engine"],
                    "precision": t["precision"],
                    "provider": provider if t["engine"] == "onnxruntime" else None,
                    "p50_ms": lat["p50_ms"],
                    "throughput_ips": lat["throughput_ips"],
                }
            )
    return measured


def write_record(artifact, measured: dict[int, list[dict]], command: str | None = None) -> Path:
    """`measured`: batch -> [{engine, precision, provider, p50_ms, throughput_ips}] of gated targets."""
    from toolkit.io import write_json

    fp = fingerprint()
    ranked = {str(b): sorted(rows, key=lambda r: -r["throughput_ips"]) for b, rows in sorted(measured.items())}
    return write_json(record_path(artifact, fp), {"fingerprint": fp, "command": command, "batches": ranked})


def resolve(artifact, batch: int) -> tuple[tuple[str, str, str], str]:
    """-> ((engine, precision, provider), why) for `--engine auto` at `batch` on this machine."""
    from toolkit.io import read_json

    path = record_path(artifact)
    if not path.is_file():
        why = f"no tuning record for this machine in {path.parent} (run 'toolkit bench {artifact.dir} --tune')"
        return (*FALLBACK, "cpu"), f"fallback {'/'.join(FALLBACK)}: {why}"
    rec = read_json(path)["batches"]
    measured = sorted(int(b) for b in rec)
    near = min(measured, key=lambda b: (abs(b - batch), b))
    for r in rec[str(near)]:
        if r["precision"] in artifact.precisions and artifact.gates.get(r["precision"], {}).get("passed", True):
            at = "" if near == batch else f" (measured at batch {near}, the nearest to {batch})"
            why = f"{r['engine']}/{r['precision']}: fastest gated choice{at}, {r['throughput_ips']:.1f} images/s"
            return (r["engine"], r["precision"], r.get("provider") or "cpu"), why
    return (*FALLBACK, "cpu"), f"fallback {'/'.join(FALLBACK)}: no recorded choice is still gated in the artifact"

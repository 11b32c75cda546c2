"""`toolkit calibrate ARTIFACT --images CALIB --eval-images HELDOUT`: int8 Q/DQ + accuracy report + gate.

1. Calibration images are read through the artifact's own preprocessing, streamed in batches
   (bounded memory, progress); evaluation images must be a labelled folder (0_real/1_fake or nature/ai).
2. No image may be in both sets: compared by the sha256 of the file bytes, refused with the names.
3. `<kind>.int8.onnx` is written through onnxruntime.quantization (calibration/quantize.py).
4. Report: AUC / AP / accuracy of int8 and fp32 (both in ONNX Runtime) on the held-out folder, feature
   cosine, decision agreement, int8 at its own operating point (fp32's false-positive rate). Gate: the one
   policy of every reduced precision (toolkit.compare.PrecisionGate). A failed gate drops the int8 file (and
   an older int8 variant), keeps the report, and raises with the numbers; `repair=True` first keeps the
   fewest layers in float or at 7-bit weights that make it pass (calibration/repair.py).
5. On success the manifest gains the int8 variant, its gate and the hashes of what was added.
Everything is written into a staging copy of the artifact (toolkit/staging.py: hard links, onnxruntime's own
temporaries inside it) and swapped in at the end, so a killed calibration leaves the artifact as it was.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np

from calibration.memory import GIB, choose_batch, graph_sizes
from calibration.quantize import QuantConfig, quantize
from calibration.saturation import NoVnniEmulator
from toolkit.compare import PrecisionGate

__all__ = ["OverlapError", "calibrate_artifact", "check_overlap", "report_markdown"]


REPORTS = ("int8_report.json", "int8_report.md")
EVAL_BATCH = 32
NO_VNNI = "onnxruntime-cpu without VNNI (emulated)"
NO_VNNI_HERE = "onnxruntime-cpu without VNNI (this CPU, measured)"
WITH_VNNI = "onnxruntime-cpu with VNNI (exact int32 sums: graph optimisations off on this CPU without VNNI)"


class OverlapError(ValueError):
    pass


def check_overlap(calib: list[Path], held_out: list[Path]) -> None:
    """Refuse when a calibration image (by content) is also an evaluation image."""
    from toolkit.io import sha256_file

    seen = {sha256_file(p): p for p in calib}
    both = [(seen[h], p) for p in held_out if (h := sha256_file(p)) in seen]
    if both:
        ex = "; ".join(f"{a} = {b}" for a, b in both[:5])
        raise OverlapError(
            f"{len(both)} evaluation image(s) are also calibration images (same content): {ex}"
            f"{' ...' if len(both) > 5 else ''}. Calibrate and evaluate on disjoint images."
        )


def _sample(paths: list, n: int | None, seed: int) -> list:
    if n is None or len(paths) <= n:
        return list(paths)
    idx = np.sort(np.random.default_rng(seed).permutation(len(paths))[:n])
    return [paths[i] for i in idx]


def calibrate_artifact(
    artifact,
    images: str | Path,
    eval_images: str | Path,
    cfg: QuantConfig | None = None,
    gate: PrecisionGate | None = None,
    calib_n: int | None = 256,
    eval_n: int | None = 1000,
    batch: int | None = None,
    workers: int = 2,
    seed: int = 0,
    progress: bool = True,
    log=print,
    no_vnni_n: int | None = None,
    no_vnni_minutes: float = 10.0,
    repair: bool = False,
    repair_n: int = 16,
) -> dict:
    """`artifact`: an opened `Artifact` (not verified again) or its directory. -> the report dict (also written
    to <artifact>/int8_report.{json,md}; the new Artifact under "artifact_object"); raises GateFailed on a failure.
    `repair`: a failed gate is first repaired (calibration/repair.py), ranking layers on `repair_n` calibration
    images."""
    from toolkit import kinds
    from toolkit.artifact import Artifact, GateFailed
    from toolkit.data.loader import discover_images, sample_labelled

    cfg = cfg or QuantConfig()
    art = artifact if isinstance(artifact, Artifact) else Artifact.open(artifact)
    kind = kinds.for_artifact(art)
    kind.require("int8", "int8 calibration")
    gate = gate or kind.gates()["int8"]
    calib_paths = _sample(discover_images(images)[0], calib_n, seed)
    if not calib_paths:
        raise ValueError(f"{images}: no images to calibrate on")
    eval_paths, eval_labels = sample_labelled(eval_images, eval_n, seed)
    if len(set(eval_labels.tolist())) < 2:
        raise ValueError(f"{eval_images}: the evaluation folder needs both real and generated images for AUC")
    check_overlap(calib_paths, eval_paths)
    # refused before anything is written when it cannot fit this machine's memory (calibration/memory.py)
    est = choose_batch(graph_sizes(art.onnx_path("fp32"), cfg.op_types), cfg.method, batch,
                       eval_batch=EVAL_BATCH)  # fmt: skip
    failed = None
    with art.edit(log=log) as ed:
        if "int8" in art.precisions:  # recalibrating: the old variant goes, so a failure cannot leave a stale one
            ed.drop(art.precisions["int8"]["file"])
            ed.set(precisions={k: v for k, v in art.precisions.items() if k != "int8"},
                   gates={k: v for k, v in art.gates.items() if k != "int8"})  # fmt: skip
        report, failed = _calibrate(art, ed, kind, images, eval_images, calib_paths, eval_paths, eval_labels, cfg,
                                    gate, est, workers, progress, log, no_vnni_n, no_vnni_minutes,
                                    repair_n if repair else 0)  # fmt: skip
    if failed:
        raise GateFailed(failed)
    return {**report, "artifact_object": ed.result}


def _calibrate(art, ed, kind, images, eval_images, calib_paths, eval_paths, eval_labels, cfg, gate, est, workers,
               progress, log, no_vnni_n, no_vnni_minutes, repair_n: int = 0) -> tuple[dict, str | None]:  # fmt: skip
    """Quantize into the staging copy `ed`, gate, [repair], record; -> (report, the failure message or None)."""
    with tempfile.TemporaryDirectory(prefix="calibrate-") as work:  # inside the staging directory; --repair
        return _calibrate_in(art, ed, kind, images, eval_images, calib_paths, eval_paths, eval_labels, cfg, gate,
                             est, workers, progress, log, no_vnni_n, no_vnni_minutes, repair_n, Path(work))  # fmt: skip


def _calibrate_in(art, ed, kind, images, eval_images, calib_paths, eval_paths, eval_labels, cfg, gate, est, workers,
                  progress, log, no_vnni_n, no_vnni_minutes, repair_n, work: Path) -> tuple:  # fmt: skip
    """_calibrate, with `work` holding the augmented model and the ranges (quantized again by --repair)."""
    import onnx

    from toolkit.compare import Comparator
    from toolkit.data.loader import batches, load_labelled
    from toolkit.engines.onnxruntime_engine import OnnxRuntimeEngine
    from toolkit.io import write_json, write_text
    from toolkit.machine import int8_pairs_saturate
    from toolkit.progress import progress_bar

    d = art.dir
    fp32 = art.onnx_path("fp32")  # the artifact's own file: the staging copy is linked only at commit
    int8 = ed.path(f"{art.kind}.int8.onnx")
    pre = art.preprocess
    log(f"calibrating ({cfg.method}, batch {est.batch}, about {est.peak / GIB:.1f} GiB) on {len(calib_paths)} "
        f"images from {images} ...")  # fmt: skip
    with progress_bar("calibrate", len(calib_paths), progress) as advance:
        stream = (b.array for b in batches(calib_paths, pre, est.batch, workers) if len(b.paths))
        summary = quantize(fp32, int8, stream, kind.input_name, cfg, work, advance)

    log(f"evaluating int8 against fp32 on {len(eval_paths)} held-out images from {eval_images} ...")
    arrays, labels = load_labelled(eval_paths, eval_labels, pre, EVAL_BATCH, workers)
    comparator = Comparator(kind, arrays, art.threshold, labels)
    comparator.reference = comparator.run(lambda: OnnxRuntimeEngine(fp32))

    saturating_here = int8_pairs_saturate()

    def judge(path: Path, native_only: bool = False) -> tuple[dict, dict | None]:
        # the file instrumented once per judgement: its counts decide the path, its run is the emulated verdict
        emulator = NoVnniEmulator(onnx.load(str(path))) if saturating_here or not native_only else None
        if saturating_here and emulator.counts["candidate_pairs"]:  # this CPU is the no-VNNI case: measured here
            return _judge_where_pairs_saturate(path, comparator, gate, emulator.counts, native_only or no_vnni_n == 0,
                                               log)  # fmt: skip
        res = comparator.compare(comparator.run(lambda: OnnxRuntimeEngine(path)), gate, "onnxruntime-cpu", refit=True)
        if native_only:
            return res, None
        return res, _no_vnni_verdict(emulator, kind, comparator, res, gate, no_vnni_n, log, progress,
                                     est.emulate_batch, no_vnni_minutes)  # fmt: skip

    res, no_vnni = judge(int8)
    if repair_n and not (res["passed"] and (no_vnni is None or no_vnni["passed"])):
        from calibration.repair import repair_int8
        from toolkit.data.loader import load_batch

        rank_x = load_batch([str(p) for p in calib_paths[:repair_n]], pre).array
        repaired = repair_int8(kind, fp32, int8, cfg, work, rank_x, judge, res, no_vnni, NoVnniEmulator, log,
                               progress)  # fmt: skip
        summary = repaired["summary"] or summary  # None: the file is still the calibrated one
        res, no_vnni = repaired["native"], repaired["no_vnni"]
        summary["repair"] = repaired["record"]
    summary["memory_estimate"] = est.as_dict()
    stats = dict(res["stats"])
    operating_point = stats.pop("operating_point")
    no_vnni = dict(no_vnni) if no_vnni else no_vnni
    op_no_vnni = no_vnni.pop("operating_point", None) if no_vnni else None
    acc32, acc8 = stats.pop("reference_metrics"), stats.pop("metrics")
    report = {
        "artifact": str(d),
        "calibration_images": str(images),
        "calibration_n": len(calib_paths),
        "eval_images": str(eval_images),
        "eval_n": len(labels),
        "quantization": summary,
        "fp32": acc32,
        "int8": acc8,
        "auc_drop_points": stats["auc_drop_points"],
        "ap_drop_points": stats["ap_drop_points"],
        "acc_drop_points": stats["acc_drop_points"],
        "parity": stats,
        "gate": res["gate"],
        "passed": res["passed"],
        "no_vnni": no_vnni,
    }
    write_json(ed.path("int8_report.json"), report)
    write_text(ed.path("int8_report.md"), report_markdown(report))
    for name in REPORTS:
        ed.add(name)
    if not res["passed"]:
        ed.drop(int8.name)  # the reports are listed (the artifact stays valid), the int8 file goes
        return report, (
            f"int8 gate failed for {d}: {'; '.join(res['failures'])} (AUC {100 * acc8['auc']:.2f} vs fp32 "
            f"{100 * acc32['auc']:.2f}); int8 file removed; report in {d / 'int8_report.md'}"
        )
    precisions = {
        **ed.body["precisions"],
        "int8": {
            "file": int8.name,
            **summary,
            "operating_point": operating_point,
            **({"operating_point_no_vnni": op_no_vnni} if op_no_vnni else {}),
        },
    }
    gates = {
        **ed.body.get("gates", {}),
        "int8": {
            "passed": True,
            "gate": res["gate"],
            "stats": stats,
            "engine": res["engine"],
            "report": "int8_report.json",
            **(
                {"no_vnni": {k: no_vnni[k] for k in ("passed", "failures", "engine", "judged", "auc_drop_points")}}
                if no_vnni
                else {}
            ),
        },
    }
    ed.add(int8.name)
    ed.set(precisions=precisions, gates=gates)
    return report, None


def _no_vnni_verdict(emulator: NoVnniEmulator, kind, comparator, native: dict, gate, n: int | None, log, progress,
                     batch: int = 32, minutes: float = 10.0) -> dict | None:  # fmt: skip
    """The int8 gate for x86 CPUs without VNNI, where onnxruntime's int8 GEMM saturates int16 pair sums, judged by
    the exact emulation of the file (`emulator`, calibration/saturation.py) on any CPU, on a seeded, class-balanced
    sample of `n` of the evaluation images (all when None). It costs one forward through the cut graph plus the
    corrections per batch: 2.1 s per ViT-B/16 image with random 8-bit weights on 2 cores, where nearly every sum
    saturates (14-19 s when it ran one forward per saturating layer; ViT-L/14 took 280 s per image that way, 92% of
    its GEMM sums saturating, and has not been timed since). So it stops after `minutes` and judges the images
    emulated by then (real and generated alternate, so any prefix is balanced). None when n == 0 or fewer than one
    image of each class was emulated (not judged). With no weight pair that can saturate (7-bit weights) the native
    verdict is that CPU's verdict. `open_engine` refuses a file that failed it on such a CPU."""
    from toolkit.compare import Comparator
    from toolkit.progress import progress_bar

    counts = emulator.counts
    if counts["candidate_pairs"] == 0:
        judged = "no weight pair can saturate: the verdict on this CPU"
        stats = {k: v for k, v in native["stats"].items() if k != "operating_point"}
        return {"passed": native["passed"], "failures": native["failures"], "engine": NO_VNNI, "judged": judged,
                **counts, **stats}  # fmt: skip
    if n == 0:
        return None
    x = np.concatenate(comparator.feeds)
    labels = np.asarray(comparator.labels)
    rng = np.random.default_rng(0)
    per_class = max(1, (n or len(x)) // 2)
    real, fake = (rng.permutation(np.nonzero(labels == c)[0])[:per_class] for c in (0, 1))
    k = min(len(real), len(fake))  # classes alternate, so the images a time budget leaves out keep the balance
    idx = np.concatenate([np.stack([real[:k], fake[:k]], 1).ravel(), real[k:], fake[k:]])
    xs = x[idx]
    feeds = [xs[i : i + batch] for i in range(0, len(xs), batch)]
    log(f"judging int8 for x86 CPUs without VNNI (emulated: one forward in {counts['weighted_gemms'] + 1} pieces "
        f"per batch of {batch}, at most {minutes:g} min) on {len(idx)} of the evaluation images ...")  # fmt: skip
    until = time.monotonic() + 60 * minutes
    with progress_bar("no-VNNI emulation", len(idx), progress) as advance:
        outputs, counts = emulator.run(kind.input_name, feeds, _projecting(advance, len(idx), minutes, log),
                                       until=until)  # fmt: skip
    idx = idx[: sum(len(f) for f in feeds[: counts["feeds_done"]])]
    if len(set(labels[idx].tolist())) < 2:
        log(f"[yellow]not judged for x86 CPUs without VNNI: {minutes:g} min emulated fewer than one image of each "
            "class; raise --no-vnni-minutes")  # fmt: skip
        return None
    sub = Comparator(kind, [], comparator.threshold, labels[idx])
    sub.reference = {k: v[idx] for k, v in comparator.reference.items()}
    # on such CPUs the file computes other logits (saturation shifts them), so it decides at its own operating point
    # there, re-fitted like the native one and sealed beside it; with fewer than two real images emulated, at the
    # native one
    refit = int((labels[idx] == 0).sum()) >= 2
    nv = sub.compare(outputs, gate, NO_VNNI, refit=refit, got_threshold=None if refit else native["stats"]["threshold"])
    cut = f" of {len(xs)} (the --no-vnni-minutes budget ended it)" if len(idx) < len(xs) else ""
    verdict = {"passed": nv["passed"], "failures": nv["failures"], "engine": NO_VNNI,
               "judged": f"emulated on {len(idx)} images{cut}", **counts, **nv["stats"]}  # fmt: skip
    if not verdict["passed"]:
        log(
            f"[yellow]int8 would fail its gate on x86 CPUs without VNNI ({', '.join(nv['failures'])}; emulated): "
            "it is refused there; --repair gives weights that cannot saturate (pair-safe or 7-bit) "
            "to the fewest saturating layers that pass, --reduce-range gives all of them 7-bit weights"
        )
    return verdict


def _judge_where_pairs_saturate(int8, comparator, gate, counts: dict, native_only: bool, log) -> tuple:
    """The two verdicts on an x86 CPU without VNNI, for a file whose weight pairs can saturate (`counts`: the
    emulator's). This CPU's own int8 kernels are the no-VNNI case, so that verdict is measured on every evaluation
    image instead of emulated on a sample (the emulation reproduces these kernels: logits at correlation 0.9997 on
    the demo's tiny-vit-64 and 0.9993 on ViT-B/16, against 0.82 and 0.989 for the exact sums, every decision the
    same; benchmarks/results/no_vnni_check*.md). The verdict for CPUs
    with VNNI, the file's main gate, runs it with graph optimisations off: no Q/DQ pair is fused into this CPU's
    int8 kernels and every GEMM sums the dequantized integers in float, the exact int32 sums to float32 rounding.
    -> (that gate result, the no-VNNI verdict or None when `native_only`)."""
    from toolkit.engines.onnxruntime_engine import OnnxRuntimeEngine

    exact = comparator.run(lambda: OnnxRuntimeEngine(int8, optimize=False))
    res = comparator.compare(exact, gate, WITH_VNNI, refit=True)
    if native_only:
        return res, None
    here = comparator.compare(comparator.run(lambda: OnnxRuntimeEngine(int8)), gate, NO_VNNI_HERE, refit=True)
    judged = f"measured on this CPU (x86 without VNNI) on all {len(comparator.labels)} evaluation images"
    verdict = {"passed": here["passed"], "failures": here["failures"], "engine": NO_VNNI_HERE, "judged": judged,
               **counts, **here["stats"]}  # fmt: skip
    if not verdict["passed"]:
        log(
            f"[yellow]int8 fails its gate on this CPU (x86 without VNNI: {', '.join(here['failures'])}; measured): "
            "it is refused on such CPUs; --repair gives weights that cannot saturate (pair-safe or 7-bit) "
            "to the fewest saturating layers that pass, --reduce-range gives all of them 7-bit weights"
        )
    return res, verdict


def _projecting(advance, total: int, minutes: float, log):
    """`advance`, which after the first batch says how long the rest will take and how to shorten it (at ViT-L/14
    with 8-bit weights nearly every GEMM saturates: minutes per image on 2 cores)."""
    t0, told = time.perf_counter(), [False]

    def step(n: int) -> None:
        advance(n)
        if not told[0] and n < total:
            told[0] = True
            per = (time.perf_counter() - t0) / n
            rest = per * (total - n) / 60
            stop = f", so the {minutes:g} min budget ends it after about {int(60 * minutes / per)} images" if (
                rest > minutes) else ""  # fmt: skip
            log(f"no-VNNI emulation: {per:.0f} s per image measured, about {rest:.0f} min for the other "
                f"{total - n}{stop}; --no-vnni-n / --no-vnni-minutes size it (--no-vnni-n 0 skips the verdict), and "
                "--reduce-range (7-bit weights) needs none: nothing can saturate")  # fmt: skip

    return step


def report_markdown(r: dict) -> str:
    p, q = r["parity"], r["quantization"]

    def row(name: str, a: dict) -> str:
        return f"| {name} | {100 * a['auc']:.2f} | {100 * a['ap']:.2f} | {100 * a['acc']:.2f} |"

    return (
        "\n".join(
            [
                f"# INT8 report: {r['artifact']}",
                "",
                f"Calibration: {q['method']} on {r['calibration_n']} images from `{r['calibration_images']}`; "
                f"kept in float: {', '.join(q['kept_in_float']) or 'nothing'}; "
                f"{q['quantize_nodes']} QuantizeLinear / {q['dequantize_nodes']} "
                "DequantizeLinear nodes, all zero points 0.  ",
                f"Evaluation: {r['eval_n']} held-out labelled images from `{r['eval_images']}` (disjoint by content).",
                "",
                "| model | AUC | AP | acc |",
                "|---|---|---|---|",
                row("fp32 (ONNX Runtime)", r["fp32"]),
                row("int8 (ONNX Runtime)", r["int8"]),
                *([row("int8, x86 without VNNI (emulated)", r["no_vnni"]["metrics"])] if r.get("no_vnni") else []),
                "",
                f"AUC drop {r['auc_drop_points']:+.2f} points (gate <= {r['gate']['max_auc_drop_points']}), "
                f"AP drop {r['ap_drop_points']:+.2f}, accuracy drop {r['acc_drop_points']:+.2f} at int8's operating "
                f"point (threshold {p['threshold']:+.4f}, fp32's false-positive rate; gate <= "
                f"{r['gate']['max_acc_drop_points']}); "
                f"feature cosine min {p['min_cosine_feature']:.4f} / mean {p['mean_cosine_feature']:.4f}; "
                f"decision agreement {100 * p['decision_agreement']:.2f}%; max |logit diff| {p['max_abs_logit']:.3g}.",
                "",
                f"**Gate {'passed' if r['passed'] else 'FAILED'}.** Weights: "
                f"{'7-bit' if q['reduce_range'] else '8-bit'} ({q['reduce_range_reason']}). " + _no_vnni_line(r),
            ]
        )
        + "\n"
    )


def _no_vnni_line(r: dict) -> str:
    nv = r.get("no_vnni")
    if not nv:
        return "Not judged for x86 CPUs without VNNI (--no-vnni-n 0)."
    return (
        f"On x86 CPUs without VNNI (onnxruntime's int16 pair sums; {nv['judged']}): AUC drop "
        f"{nv['auc_drop_points']:+.2f}, agreement {100 * nv['decision_agreement']:.2f}%, gate "
        f"{'passed' if nv['passed'] else 'FAILED: refused on such CPUs'}."
    )

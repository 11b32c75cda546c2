"""Purifier training: pairs -> supervised teacher -> one-step student and noised student (distilled) + unsupervised
DiffPure baseline."""

from __future__ import annotations

import time
from pathlib import Path

import torch

from toolkit.pipelines.attack import read_pairs

PRESETS = ("tiny", "base")


def train_purifiers(
    pairs_dir: str | Path,
    out_dir: str | Path,
    cfg=None,
    tc=None,
    progress: bool = True,
    preset: str = "tiny",
    **overrides,
) -> dict:
    """Teacher on the pairs, student distilled from it, DiffPure baseline on the clean halves; safetensors + config.

    Without `cfg`, the UNet is the `preset` (tiny: CPU, tests and demo; base: wider) at the pairs' size, with
    `overrides` (PurifierConfig fields, e.g. t_star, steps, seed) applied."""
    from dataclasses import replace

    from toolkit.kinds.purifier import save_run
    from toolkit.models.purifier import (
        PurifierConfig,
        PurifierTrainConfig,
        teacher_endpoints,
        train_diffpure,
        train_noised_student,
        train_student,
        train_teacher,
    )
    from toolkit.progress import progress_bar

    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {PRESETS}, got {preset!r}")
    adv, clean, meta = read_pairs(pairs_dir)
    size = adv.shape[-1]
    if cfg is None:
        cfg = PurifierConfig.tiny(size) if preset == "tiny" else PurifierConfig(sample_size=size)
        cfg = replace(cfg, **overrides)
    if cfg.sample_size != adv.shape[-1]:
        raise ValueError(f"{pairs_dir}: pairs are {adv.shape[-1]} px, the purifier config says {cfg.sample_size}")
    tc = tc or PurifierTrainConfig()
    a, c = adv * 2 - 1, clean * 2 - 1
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    times = {}
    t = time.perf_counter()
    with progress_bar("train teacher", tc.teacher_steps, progress) as adv_:
        teacher = train_teacher(a, c, cfg, tc, lambda **kw: adv_(1, **kw))
    times["teacher_s"] = time.perf_counter() - t
    endpoints = student_targets = None
    if cfg.noised_calls > 0:  # the teacher's endpoints, computed once: the first draw's on adv are the
        t = time.perf_counter()  # one-step student's targets too (one teacher pass over adv saved)
        inputs = torch.cat([a, c])
        with progress_bar("teacher endpoints", len(inputs) * tc.noised_draws, progress) as adv_:
            noises, targets = teacher_endpoints(teacher, inputs, cfg, tc.noised_draws, tc.seed + 3, adv_)
        endpoints, student_targets = (inputs.repeat(tc.noised_draws, 1, 1, 1), noises, targets), targets[: len(a)]
        times["endpoints_s"] = time.perf_counter() - t
    t = time.perf_counter()
    with progress_bar("distil student", tc.student_steps, progress) as adv_:
        student = train_student(teacher, a, c, cfg, tc, lambda **kw: adv_(1, **kw), student_targets)
    times["student_s"] = time.perf_counter() - t
    t = time.perf_counter()
    with progress_bar("train DiffPure baseline", tc.diffpure_steps, progress) as adv_:
        diffpure = train_diffpure(c, cfg, tc, lambda **kw: adv_(1, **kw))
    times["diffpure_s"] = time.perf_counter() - t
    nets = {"teacher": teacher, "student": student, "diffpure": diffpure}
    if endpoints is not None:
        t = time.perf_counter()
        calls = f"{cfg.noised_calls} call{'s' if cfg.noised_calls > 1 else ''}"
        with progress_bar(f"distil noised student ({calls})", tc.noised_steps, progress) as adv_:
            nets["noised"] = train_noised_student(teacher, a, c, cfg, tc, lambda **kw: adv_(1, **kw), endpoints)
        times["noised_s"] = time.perf_counter() - t
    config = {
        "purifier": cfg.to_dict(),
        "train": {**tc.__dict__},
        "pairs": str(pairs_dir),
        "n_pairs": len(meta),
        "timings": times,
    }
    save_run(out, nets, config)
    return config

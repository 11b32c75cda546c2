"""The defence table: every purifier and baseline defence against PGD on held-out images, plus an adaptive attack."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from toolkit.attacks import Defence, PGDConfig, pgd
from toolkit.pipelines.attack import load_pixels, pixel_detector


def defences(nets: dict, cfg, jpeg_quality: int = 75, tv_weight: float = 0.05, eot: int = 4) -> dict[str, Defence]:
    """name -> `Defence` (images in [0, 1] -> [0, 1], and how an adaptive attacker gets gradients through it);
    the table's rows in order. The multi-step purifiers are stochastic (noise to t*): each call draws its
    noise from `seed`, and an adaptive attack averages `eot` draws per step."""
    from toolkit.kinds.purifier import deployed, deployed_name
    from toolkit.models.purifier import NoisedStudent, OneStepPurifier, multistep_purify, one_call_purify

    student = OneStepPurifier(nets["student"]).eval()

    def jpeg(x, seed=0):
        import io

        from PIL import Image

        out = []
        for img in x:
            buf = io.BytesIO()
            Image.fromarray((img.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(
                buf, "JPEG", quality=jpeg_quality
            )
            out.append(torch.from_numpy(np.array(Image.open(buf).convert("RGB"))).permute(2, 0, 1).float() / 255)
        return torch.stack(out)

    def tv(x, seed=0):
        from skimage.restoration import denoise_tv_chambolle

        arr = x.permute(0, 2, 3, 1).numpy()
        den = np.stack([denoise_tv_chambolle(a, weight=tv_weight, channel_axis=-1) for a in arr])
        return torch.from_numpy(den).permute(0, 3, 1, 2).float().clamp(0, 1)

    def multi(name):
        return Defence(lambda x, seed=0: (multistep_purify(nets[name], x * 2 - 1, cfg, seed=seed) + 1) / 2, False, eot)

    rows = {
        "none": Defence(lambda x, seed=0: x, True),
        f"JPEG q{jpeg_quality}": Defence(jpeg, False),
        f"TV (weight {tv_weight})": Defence(tv, False),
        "DiffPure-style (unsupervised)": multi("diffpure"),
        f"teacher ({cfg.steps} DDIM steps)": multi("teacher"),
        # the teacher's first step alone: noise to t*, one x0 prediction; a stochastic one-call candidate
        "teacher (1 call from t*)": Defence(
            lambda x, seed=0: (one_call_purify(nets["teacher"], x * 2 - 1, cfg, seed=seed) + 1) / 2, True, eot
        ),
        "student (1 step)": Defence(lambda x, seed=0: student(x), True),
    }
    if "noised" in nets:  # the noised student with fresh noise per call (EOT), and as deployed (fixed noise)
        noised, k = NoisedStudent(nets["noised"], cfg).eval(), cfg.noised_calls

        def fresh(x, seed=0):
            return noised(x, torch.randn(x.shape, generator=torch.Generator().manual_seed(seed)))

        rows[f"noised student ({k} call{'s' if k > 1 else ''}, fresh noise)"] = Defence(fresh, True, eot)
        fixed = deployed(nets, cfg)
        rows[deployed_name(cfg)] = Defence(lambda x, seed=0: fixed(x), True)
    return rows


def _held_out(images, size: int, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A seeded sample of `n` labelled images of a folder (or of a list of folders, pooled) as pixels in [0, 1]
    at `size`, and their labels."""
    from toolkit.data.folders import find_labelled_images

    paths, labels = [], []
    for folder in [images] if isinstance(images, (str, Path)) else images:
        ds = find_labelled_images(folder)
        paths += ds.paths
        labels += ds.labels
    idx = sorted(np.random.default_rng(seed).permutation(len(paths))[:n])
    return load_pixels([paths[i] for i in idx], size), torch.tensor([labels[i] for i in idx])


def _correct(model, imgs: torch.Tensor, y: torch.Tensor, threshold: float) -> np.ndarray:
    """Per image, whether a pixel detector's decision (logit > threshold) is right, on images in [0, 1], 64
    at a time: kept per image so that two defences can be compared on the same images (McNemar)."""
    with torch.no_grad():
        logits = torch.cat([model(imgs[i : i + 64])[0] for i in range(0, len(imgs), 64)])
    return ((logits > threshold).long() == y).numpy()


def _accuracy(model, imgs: torch.Tensor, y: torch.Tensor, threshold: float) -> float:
    """Decision accuracy of a pixel detector on images in [0, 1]."""
    return float(_correct(model, imgs, y, threshold).mean())


def paired_tests(correct: dict[str, dict[str, np.ndarray]], against: str) -> list[dict]:
    """McNemar's exact test of `against` with every other defence in every column (clean and each eps), on
    the per-image results `correct[defence][column]` of one evaluation; none when `against` is not in the table
    (`skip_rows` left it out)."""
    from toolkit.statistics import mcnemar

    out = []
    if against not in correct:
        return out
    for name, cols in correct.items():
        if name == against:
            continue
        for col, c in cols.items():
            out.append({"a": against, "b": name, "column": col, **mcnemar(correct[against][col], c).to_dict()})
    return out


def evaluate_purifiers(
    purifier_run: str | Path,
    detector_run: str | Path,
    images: str | Path,
    eps_list: tuple[float, ...] = (2, 4, 8, 16),
    train_eps: tuple[float, ...] = (),
    steps: int = 10,
    n: int = 128,
    adaptive_eps: tuple[float, ...] = (4, 8),
    adaptive_rows: tuple[str, ...] | None = None,
    eot: int = 4,
    seed: int = 1,
    progress: bool = True,
    skip_rows: tuple[str, ...] = (),
    attack_chunk: int = 128,
) -> dict:
    """The purifier table on held-out labelled images: per defence, clean accuracy, accuracy under PGD on the
    detector alone (non-adaptive: the attacker does not know the defence) at each eps, accuracy under adaptive
    PGD through the defence (`Defence`: through the student, BPDA for JPEG/TV/multi-step, EOT over `eot` draws
    for the stochastic ones) at each `adaptive_eps`, PSNR/SSIM to the clean image, time per image; every
    accuracy with its 95% Wilson interval, and McNemar's test of the deployed student against each other defence.
    `adaptive_rows`: the defences (name prefixes) attacked adaptively; None = all (the multi-step ones cost
    `eot` purifications per PGD step); `skip_rows`: defences (name prefixes) left out of the table;
    `attack_chunk`: images per forward/backward pass of the adaptive attacks (memory grows with it x UNet calls)."""
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    from toolkit.kinds.purifier import deployed_name, load_run
    from toolkit.progress import progress_bar
    from toolkit.statistics import wilson

    nets, cfg = load_run(purifier_run)
    model, config = pixel_detector(detector_run)
    model.requires_grad_(False)
    threshold = float(config["threshold"])
    x, y = _held_out(images, cfg.sample_size, n, seed)

    def correct_of(imgs):
        return _correct(model, imgs, y, threshold)

    def quality(a, b):
        a_, b_ = a.permute(0, 2, 3, 1).numpy(), b.permute(0, 2, 3, 1).numpy()
        psnr = np.mean([peak_signal_noise_ratio(p, q, data_range=1.0) for p, q in zip(a_, b_, strict=True)])
        ssim = np.mean(
            [structural_similarity(p, q, data_range=1.0, channel_axis=-1) for p, q in zip(a_, b_, strict=True)]
        )
        return float(psnr), float(ssim)

    defs = {k: d for k, d in defences(nets, cfg, eot=eot).items() if not k.startswith(tuple(skip_rows))}
    adaptive_of = [d for d in defs if adaptive_rows is None or d.startswith(tuple(adaptive_rows))]
    attacked = {}
    with progress_bar("attack held-out", len(eps_list), progress) as advance:
        for eps in eps_list:
            attacked[eps] = pgd(model, x, y, PGDConfig(eps=eps, steps=steps, target="decision", seed=seed))
            advance()
    rows, correct = {}, {}
    with progress_bar("defences", len(defs) + len(adaptive_of) * len(adaptive_eps), progress) as advance:
        for name, d in defs.items():
            with torch.no_grad():
                t = time.perf_counter()
                purified_clean = d.fn(x, 0)
                ms = 1e3 * (time.perf_counter() - t) / len(x)
                c = correct_of(purified_clean)
                correct[name] = {"clean": c}
                row = {"clean_acc": float(c.mean()), "clean_ci": wilson(c).to_dict(), "ms_per_image": ms, "eps": {}}
                for eps, adv in attacked.items():
                    p = d.fn(adv, 0)
                    psnr, ssim = quality(p, x)
                    c = correct[name][str(eps)] = correct_of(p)
                    row["eps"][str(eps)] = {
                        "acc": float(c.mean()),
                        "ci": wilson(c).to_dict(),
                        "psnr": psnr,
                        "ssim": ssim,
                    }
            advance()
            row["adaptive"] = {}
            if name in adaptive_of:
                for eps in adaptive_eps:
                    cfg_eps = PGDConfig(eps=eps, steps=steps, target="decision", seed=seed)
                    adv = pgd(model, x, y, cfg_eps, defence=d, chunk=attack_chunk)
                    with torch.no_grad():
                        c = correct[name][f"adaptive {eps}"] = correct_of(d.fn(adv, 0))
                    row["adaptive"][str(eps)] = {"acc": float(c.mean()), "ci": wilson(c).to_dict()}
                    advance()
            rows[name] = row
    return {
        "purifier_run": str(purifier_run),
        "detector_run": str(detector_run),
        "images": str(images) if isinstance(images, (str, Path)) else [str(i) for i in images],
        "n": len(x),
        "eps": [str(e) for e in eps_list],
        "train_eps": [str(e) for e in train_eps],
        "adaptive_eps": [str(e) for e in adaptive_eps],
        "eot": eot,
        "pgd_steps": steps,
        "rows": rows,
        "deployed": deployed_name(cfg),
        "paired": paired_tests(correct, deployed_name(cfg)),
    }


def over_seeds_table(results: list[dict], seeds: list[int]) -> dict:
    """Purifier tables of several training seeds (same held-out images and attacks) -> one table whose every
    accuracy is the mean over the seeds with Student's t interval (`toolkit.statistics.over_seeds`), keeping the
    per-seed values and each seed's own paired tests; PSNR, SSIM and times are means."""
    from toolkit.statistics import over_seeds

    def acc(cells: list[dict]) -> dict:
        values = [c["acc"] for c in cells]
        return {"acc": float(np.mean(values)), "ci": over_seeds(values).to_dict(), "per_seed": values}

    first = results[0]
    rows = {}
    for name, row in first["rows"].items():
        per = [r["rows"][name] for r in results]
        clean = acc([{"acc": p["clean_acc"]} for p in per])
        rows[name] = {
            "clean_acc": clean["acc"],
            "clean_ci": clean["ci"],
            "clean_per_seed": clean["per_seed"],
            "ms_per_image": float(np.mean([p["ms_per_image"] for p in per])),
            "ms_per_seed": [p["ms_per_image"] for p in per],
            "eps": {
                e: {
                    **acc([p["eps"][e] for p in per]),
                    "psnr": float(np.mean([p["eps"][e]["psnr"] for p in per])),
                    "ssim": float(np.mean([p["eps"][e]["ssim"] for p in per])),
                }
                for e in row["eps"]
            },
            "adaptive": {e: acc([p["adaptive"][e] for p in per]) for e in row.get("adaptive", {})},
        }
    keep = ("images", "n", "eps", "train_eps", "adaptive_eps", "eot", "pgd_steps", "deployed", "detector_run")
    return {
        **{k: first[k] for k in keep if k in first},
        "seeds": list(seeds),
        "purifier_runs": [r["purifier_run"] for r in results],
        "rows": rows,
        "paired_per_seed": [r["paired"] for r in results],
    }


def _cell(acc: float, ci: dict | None) -> str:
    """`62.5 [53.9, 70.4]` where the result carries an interval, `62.5` for one written before it did."""
    return f"{100 * acc:.1f}" + (f" [{100 * ci['low']:.1f}, {100 * ci['high']:.1f}]" if ci else "")


def purifier_markdown(r: dict) -> str:
    """The purifier table: non-adaptive and adaptive accuracies side by side, intervals, McNemar's tests."""
    eps, ad_eps = r["eps"], r.get("adaptive_eps", [])
    unseen = [e for e in eps if e not in r["train_eps"]]
    head = ["defence", "clean acc"] + [f"acc @ {e}/255{'' if e in unseen else ' (train)'}" for e in eps]
    head += [f"adaptive @ {e}/255" for e in ad_eps]
    head += ["PSNR @ 8", "SSIM @ 8", "ms / image"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, row in r["rows"].items():
        e8 = row["eps"].get("8") or row["eps"].get("8.0") or next(iter(row["eps"].values()))
        cells = [name, _cell(row["clean_acc"], row.get("clean_ci"))]
        cells += [_cell(row["eps"][e]["acc"], row["eps"][e].get("ci")) for e in eps]
        ad = row.get("adaptive", {})
        cells += [_cell(ad[e]["acc"], ad[e]["ci"]) if e in ad else "not run" for e in ad_eps]
        cells += [f"{e8['psnr']:.2f}", f"{e8['ssim']:.3f}", f"{row['ms_per_image']:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    seeds = r.get("seeds")
    spread = (
        f"means over {len(seeds)} training seeds ({', '.join(map(str, seeds))}) with Student's t 95% intervals "
        "over the seeds in brackets"
        if seeds and len(seeds) > 1
        else "95% Wilson intervals in brackets"
    )
    lines += [
        "",
        f"Accuracies in % of {r['n']} held-out images, {spread} (half-widths up to "
        f"{_widest(r):.1f} points); whether two defences differ is the paired test below. Non-adaptive: PGD "
        f"({r['pgd_steps']} steps) on the detector alone, then the defence. Adaptive: PGD through the defence "
        f"(gradients through the students; BPDA with the identity for JPEG, TV and the multi-step purifiers; EOT "
        f"over {r.get('eot', 1)} noise draws per step for the ones with fresh noise per call).",
    ]
    if r.get("paired"):
        who = r.get("deployed", "student (1 step)")
        lines += [
            "",
            f"McNemar's exact test of the deployed {who} against no defence and the teacher on the same "
            "images (two-sided p; every pair is in the JSON):",
            "",
        ]
        lines += [
            "| deployed vs | column | right only with the deployed | right only with the other | p |",
            "|---|---|---|---|---|",
        ]
        for t in filter(_reported, r["paired"]):
            lines.append(f"| {t['b']} | {_column(t)} | {t['only_a']} | {t['only_b']} | {t['p_value']:.3g} |")
    if r.get("paired_per_seed"):
        who = r.get("deployed", "student (1 step)")
        lines += [
            "",
            f"McNemar's exact test of the deployed {who} against no defence and the teacher on the same images, "
            "one per training seed (images where only the deployed / only the other is right, two-sided p):",
            "",
            "| deployed vs | column | " + " | ".join(f"seed {s}" for s in r["seeds"]) + " |",
            "|---|---|" + "---|" * len(r["seeds"]),
        ]
        for i, t in enumerate(r["paired_per_seed"][0]):
            if _reported(t):
                per = [p[i] for p in r["paired_per_seed"]]
                cells = [f"{p['only_a']} / {p['only_b']}, p {p['p_value']:.2g}" for p in per]
                lines.append(f"| {t['b']} | {_column(t)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _reported(test: dict) -> bool:
    """The paired tests the Markdown shows (all are in the JSON): the deployed purifier against none and the teacher."""
    return test["b"] == "none" or test["b"].startswith("teacher (")


def _column(test: dict) -> str:
    return f"eps {test['column']}" if test["column"].replace(".", "").isdigit() else test["column"]


def _widest(r: dict) -> float:
    """The largest half-width (points) of any accuracy interval in the table."""
    cis = [row["clean_ci"] for row in r["rows"].values()]
    cis += [c["ci"] for row in r["rows"].values() for c in [*row["eps"].values(), *row.get("adaptive", {}).values()]]
    return max(50 * (c["high"] - c["low"]) for c in cis)


def head_defence_table(
    heads: dict[str, str | Path],
    purifier_run: str | Path,
    images: str | Path,
    eps_list: tuple[float, ...] = (2, 4, 8),
    jpeg_quality: int = 75,
    steps: int = 10,
    n: int = 128,
    seed: int = 1,
    progress: bool = True,
) -> dict:
    """One row per detector head x (alone | the deployed purifier student in front): clean accuracy, accuracy
    under PGD on that head's decision at each eps (the attack sees the head, not the purifier: the transfer setting
    of the purifier table), accuracy on JPEG-compressed clean images, and ms per image of the chain (PyTorch,
    CPU)."""
    from toolkit.kinds.purifier import deployed_name, load_run
    from toolkit.progress import progress_bar

    nets, cfg = load_run(purifier_run)
    defs = defences(nets, cfg, jpeg_quality)
    x, y = _held_out(images, cfg.sample_size, n, seed)
    x_jpeg = defs[f"JPEG q{jpeg_quality}"].fn(x, 0)
    rows: dict[str, dict] = {}
    with progress_bar("heads x defences", len(heads), progress) as advance:
        for name, run in heads.items():
            model, config = pixel_detector(run)
            model.requires_grad_(False)
            threshold = float(config["threshold"])

            def acc(imgs, model=model, threshold=threshold):
                return _accuracy(model, imgs, y, threshold)

            attacked = {
                e: pgd(model, x, y, PGDConfig(eps=e, steps=steps, target="decision", seed=seed)) for e in eps_list
            }
            for defence in ("none", deployed_name(cfg)):
                d = defs[defence]
                with torch.no_grad():
                    t = time.perf_counter()
                    clean = d.fn(x, 0)
                    acc_clean = acc(clean)
                    ms = 1e3 * (time.perf_counter() - t) / len(x)
                    pgd_acc = {str(e): acc(d.fn(a, 0)) for e, a in attacked.items()}
                    jpeg_acc = acc(d.fn(x_jpeg, 0))
                adaptive = {  # PGD through the student into this head; without a defence it is the plain PGD
                    str(e): acc(d.fn(pgd(model, x, y, PGDConfig(eps=e, steps=steps, seed=seed), defence=d), 0))
                    if defence != "none"
                    else pgd_acc[str(e)]
                    for e in eps_list
                }
                rows[f"{name} + {defence}"] = {
                    "head": name,
                    "defence": defence,
                    "clean_acc": acc_clean,
                    "pgd_acc": pgd_acc,
                    "adaptive_acc": adaptive,
                    "jpeg_acc": jpeg_acc,
                    "ms_per_image": ms,
                }
            advance()
    return {"heads": {k: str(v) for k, v in heads.items()}, "purifier_run": str(purifier_run), "images": str(images),
            "n": len(x), "eps": [str(e) for e in eps_list], "jpeg_quality": jpeg_quality, "pgd_steps": steps,
            "rows": rows}  # fmt: skip


def head_defence_markdown(r: dict) -> str:
    """Heads x (alone | student): PGD on the head alone beside adaptive PGD through the student."""
    head = [
        "head",
        "defence",
        "clean acc",
        *(f"PGD {e}/255" for e in r["eps"]),
        *(f"adaptive PGD {e}/255" for e in r["eps"]),
        f"JPEG q{r['jpeg_quality']}",
        "ms / image",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in r["rows"].values():
        cells = [row["head"], row["defence"], f"{100 * row['clean_acc']:.1f}"]
        cells += [f"{100 * row['pgd_acc'][e]:.1f}" for e in r["eps"]]
        ad = row.get("adaptive_acc", {})
        cells += [f"{100 * ad[e]:.1f}" if e in ad else "not run" for e in r["eps"]]
        cells += [f"{100 * row['jpeg_acc']:.1f}", f"{row['ms_per_image']:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"

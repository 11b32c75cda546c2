"""Purifier flows: attack -> paired dataset; pairs -> teacher, student, DiffPure baseline; evaluation table.

Pairs directory: `adv/NNNNN.png`, `clean/NNNNN.png` (8-bit PNG, lossless) and `pairs.jsonl`, one line
per pair with the source file, label, eps, steps, step size, target, seed and whether the attack
succeeded; `summary.json` has the success rate per eps.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

from toolkit.attacks import PGDConfig, PixelDetector, pgd, success
from toolkit.io import write_json, write_text

PURIFIER_FORMAT = "causal-deploy-toolkit/purifier@2"  # @2: skip (residual) x0 parametrisation


def load_pixels(paths: list, size: int) -> torch.Tensor:
    """Files -> (N,3,size,size) in [0,1] on the 8-bit grid (resize short side + centre crop, as preprocessing)."""
    from toolkit.data.images import load_image
    from toolkit.preprocess import PreprocessConfig, resize_and_crop

    cfg = PreprocessConfig(size=size)
    arr = np.stack([np.asarray(resize_and_crop(load_image(p), cfg), dtype=np.uint8) for p in paths])
    return torch.from_numpy(arr).permute(0, 3, 1, 2).float() / 255.0


def pixel_detector(run_dir: str | Path) -> tuple[PixelDetector, dict]:
    from toolkit.models.detector import load_deployed_detector

    model, config = load_deployed_detector(run_dir)
    p = config["preprocess"]
    return PixelDetector(model, p["mean"], p["std"]).eval(), config


def _save_png(x: torch.Tensor, path: Path) -> None:
    from PIL import Image

    from toolkit.io import atomic_path

    a = (x.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    with atomic_path(path) as tmp:
        Image.fromarray(a).save(tmp, format="PNG")


def make_pairs(
    run_dir: str | Path,
    images: str | Path,
    out_dir: str | Path,
    eps_list: tuple[float, ...] = (4, 8),
    steps: int = 10,
    target: str = "decision",
    n: int | None = 256,
    seed: int = 0,
    batch: int = 32,
    progress: bool = True,
) -> dict:
    """Attack labelled images (0_real/1_fake) at every eps; write the paired dataset; -> summary."""
    from toolkit.data.folders import find_labelled_images
    from toolkit.progress import progress_bar

    model, config = pixel_detector(run_dir)
    model.requires_grad_(False)
    size, threshold = config["preprocess"]["size"], float(config["threshold"])
    ds = find_labelled_images(images)
    idx = np.random.default_rng(seed).permutation(len(ds.paths))[: n or len(ds.paths)]
    paths, labels = [ds.paths[i] for i in sorted(idx)], torch.tensor([ds.labels[i] for i in sorted(idx)])
    out = Path(out_dir)
    (out / "adv").mkdir(parents=True, exist_ok=True)
    (out / "clean").mkdir(exist_ok=True)
    lines, rates, k = [], {}, 0
    with progress_bar("attack", len(paths) * len(eps_list), progress) as advance:
        for eps in eps_list:
            cfg = PGDConfig(eps=eps, steps=steps, target=target, seed=seed)
            ok = 0
            for i in range(0, len(paths), batch):
                x, y = load_pixels(paths[i : i + batch], size), labels[i : i + batch]
                adv = pgd(model, x, y, cfg)
                hit = success(model, x, adv, y, threshold, target)
                ok += int(hit.sum())
                for j in range(len(x)):
                    name = f"{k:05d}.png"
                    _save_png(adv[j], out / "adv" / name)
                    _save_png(x[j], out / "clean" / name)
                    lines.append(
                        {
                            "id": name,
                            "source": str(paths[i + j]),
                            "label": int(y[j]),
                            "eps": eps,
                            "steps": steps,
                            "step_size": cfg.alpha * 255,
                            "target": target,
                            "seed": seed,
                            "success": bool(hit[j]),
                        }
                    )
                    k += 1
                advance(len(x))
            rates[str(eps)] = ok / len(paths)
    write_text(out / "pairs.jsonl", "".join(json.dumps(line) + "\n" for line in lines))
    summary = {
        "format": "causal-deploy-toolkit/pairs@1",
        "detector_run": str(run_dir),
        "images": str(images),
        "n_images": len(paths),
        "eps": list(eps_list),
        "steps": steps,
        "target": target,
        "attack_success_rate": rates,
    }
    write_json(out / "summary.json", summary)
    return summary


def read_pairs(pairs_dir: str | Path) -> tuple[torch.Tensor, torch.Tensor, list[dict]]:
    """-> adv, clean in [0,1] (N,3,H,W), and the metadata lines."""
    from PIL import Image

    d = Path(pairs_dir)
    if not (d / "pairs.jsonl").is_file():
        raise FileNotFoundError(f"{d} has no pairs.jsonl; make one with 'toolkit attack'")
    meta = [json.loads(line) for line in (d / "pairs.jsonl").read_text().splitlines() if line.strip()]

    def load(sub):
        return (
            torch.from_numpy(np.stack([np.asarray(Image.open(d / sub / m["id"]).convert("RGB")) for m in meta]))
            .permute(0, 3, 1, 2)
            .float()
            / 255.0
        )

    return load("adv"), load("clean"), meta


def train_purifiers(pairs_dir: str | Path, out_dir: str | Path, cfg=None, tc=None, progress: bool = True) -> dict:
    """Teacher on the pairs, student distilled from it, DiffPure baseline on the clean halves; safetensors + config."""
    from safetensors.torch import save_file

    from toolkit.io import atomic_path
    from toolkit.models.purifier import (
        PurifierConfig,
        PurifierTrainConfig,
        train_diffpure,
        train_student,
        train_teacher,
    )
    from toolkit.progress import progress_bar

    adv, clean, meta = read_pairs(pairs_dir)
    cfg = cfg or PurifierConfig.tiny(adv.shape[-1])
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
    t = time.perf_counter()
    with progress_bar("distil student", tc.student_steps, progress) as adv_:
        student = train_student(teacher, a, c, cfg, tc, lambda **kw: adv_(1, **kw))
    times["student_s"] = time.perf_counter() - t
    t = time.perf_counter()
    with progress_bar("train DiffPure baseline", tc.diffpure_steps, progress) as adv_:
        diffpure = train_diffpure(c, cfg, tc, lambda **kw: adv_(1, **kw))
    times["diffpure_s"] = time.perf_counter() - t
    for name, net in (("teacher", teacher), ("student", student), ("diffpure", diffpure)):
        with atomic_path(out / f"{name}.safetensors") as tmp:
            save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(tmp))
    config = {
        "format": PURIFIER_FORMAT,
        "purifier": cfg.to_dict(),
        "train": {**tc.__dict__},
        "pairs": str(pairs_dir),
        "n_pairs": len(meta),
        "timings": times,
    }
    write_json(out / "config.json", config)
    return config


def load_purifiers(run_dir: str | Path) -> tuple[dict, object]:
    """-> ({teacher, student, diffpure: UNet}, PurifierConfig)."""
    from safetensors.torch import load_file

    from toolkit.io import read_json
    from toolkit.models.purifier import PurifierConfig, make_unet

    d = Path(run_dir)
    config = read_json(d / "config.json")
    if config.get("format") != PURIFIER_FORMAT:
        raise ValueError(f"{d / 'config.json'} is not a purifier run (format {config.get('format')!r})")
    cfg = PurifierConfig.from_dict(config["purifier"])
    nets = {}
    for name in ("teacher", "student", "diffpure"):
        net = make_unet(cfg)
        net.load_state_dict(load_file(str(d / f"{name}.safetensors")))
        nets[name] = net.eval().requires_grad_(False)
    return nets, cfg


def defences(nets: dict, cfg, jpeg_quality: int = 75, tv_weight: float = 0.05) -> dict:
    """name -> f(x in [0,1]) -> [0,1]; the table's rows in order."""
    from toolkit.models.purifier import OneStepPurifier, multistep_purify

    student = OneStepPurifier(nets["student"]).eval()

    def jpeg(x):
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

    def tv(x):
        from skimage.restoration import denoise_tv_chambolle

        arr = x.permute(0, 2, 3, 1).numpy()
        den = np.stack([denoise_tv_chambolle(a, weight=tv_weight, channel_axis=-1) for a in arr])
        return torch.from_numpy(den).permute(0, 3, 1, 2).float().clamp(0, 1)

    def multi(name):
        return lambda x: (multistep_purify(nets[name], x * 2 - 1, cfg) + 1) / 2

    with torch.no_grad():
        return {
            "none": lambda x: x,
            f"JPEG q{jpeg_quality}": jpeg,
            f"TV (weight {tv_weight})": tv,
            "DiffPure-style (unsupervised)": multi("diffpure"),
            f"teacher ({cfg.steps} DDIM steps)": multi("teacher"),
            "student (1 step)": lambda x: student(x).detach(),
        }


def evaluate_purifiers(
    purifier_run: str | Path,
    detector_run: str | Path,
    images: str | Path,
    eps_list: tuple[float, ...] = (2, 4, 8, 16),
    train_eps: tuple[float, ...] = (),
    steps: int = 10,
    n: int = 128,
    adaptive_eps: float = 8,
    seed: int = 1,
    progress: bool = True,
) -> dict:
    """The purifier table on held-out labelled images: per defence, clean accuracy, accuracy under attack at
    each eps, PSNR/SSIM to the clean image, time per image; plus an adaptive attack through the student."""
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    from toolkit.data.folders import find_labelled_images
    from toolkit.models.purifier import OneStepPurifier
    from toolkit.progress import progress_bar

    nets, cfg = load_purifiers(purifier_run)
    model, config = pixel_detector(detector_run)
    model.requires_grad_(False)
    threshold = float(config["threshold"])
    ds = find_labelled_images(images)
    idx = sorted(np.random.default_rng(seed).permutation(len(ds.paths))[:n])
    x = load_pixels([ds.paths[i] for i in idx], cfg.sample_size)
    y = torch.tensor([ds.labels[i] for i in idx])

    def acc(imgs):
        with torch.no_grad():
            logits = torch.cat([model(imgs[i : i + 64])[0] for i in range(0, len(imgs), 64)])
        return float(((logits > threshold).long() == y).float().mean())

    def quality(a, b):
        a_, b_ = a.permute(0, 2, 3, 1).numpy(), b.permute(0, 2, 3, 1).numpy()
        psnr = np.mean([peak_signal_noise_ratio(p, q, data_range=1.0) for p, q in zip(a_, b_, strict=True)])
        ssim = np.mean(
            [structural_similarity(p, q, data_range=1.0, channel_axis=-1) for p, q in zip(a_, b_, strict=True)]
        )
        return float(psnr), float(ssim)

    defs = defences(nets, cfg)
    attacked = {}
    with progress_bar("attack held-out", len(eps_list), progress) as advance:
        for eps in eps_list:
            attacked[eps] = pgd(model, x, y, PGDConfig(eps=eps, steps=steps, target="decision", seed=seed))
            advance()
    rows = {}
    with progress_bar("defences", len(defs), progress) as advance:
        for name, f in defs.items():
            t = time.perf_counter()
            purified_clean = f(x)
            ms = 1e3 * (time.perf_counter() - t) / len(x)
            row = {"clean_acc": acc(purified_clean), "ms_per_image": ms, "eps": {}}
            for eps, adv in attacked.items():
                p = f(adv)
                psnr, ssim = quality(p, x)
                row["eps"][str(eps)] = {"acc": acc(p), "psnr": psnr, "ssim": ssim}
            rows[name] = row
            advance()
    student = OneStepPurifier(nets["student"]).eval().requires_grad_(False)
    chain = torch.nn.Sequential(student, model)  # differentiable: pixels -> student -> detector
    adaptive = pgd(chain, x, y, PGDConfig(eps=adaptive_eps, steps=steps, target="decision", seed=seed))
    with torch.no_grad():
        adaptive_acc = acc(student(adaptive))
    return {
        "purifier_run": str(purifier_run),
        "detector_run": str(detector_run),
        "images": str(images),
        "n": len(x),
        "eps": [str(e) for e in eps_list],
        "train_eps": [str(e) for e in train_eps],
        "pgd_steps": steps,
        "rows": rows,
        "adaptive": {"eps": adaptive_eps, "student_acc": adaptive_acc},
    }


def purifier_markdown(r: dict) -> str:
    eps = r["eps"]
    unseen = [e for e in eps if e not in r["train_eps"]]
    head = ["defence", "clean acc"] + [f"acc @ {e}/255{'' if e in unseen else ' (train)'}" for e in eps]
    head += ["PSNR @ 8", "SSIM @ 8", "ms / image"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, row in r["rows"].items():
        e8 = row["eps"].get("8") or row["eps"].get("8.0") or next(iter(row["eps"].values()))
        cells = [name, f"{100 * row['clean_acc']:.1f}"] + [f"{100 * row['eps'][e]['acc']:.1f}" for e in eps]
        cells += [f"{e8['psnr']:.2f}", f"{e8['ssim']:.3f}", f"{row['ms_per_image']:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    a = r["adaptive"]
    lines += [
        "",
        f"Adaptive white-box PGD through the differentiable student at eps {a['eps']}/255 "
        f"({r['pgd_steps']} steps): detector accuracy {100 * a['student_acc']:.1f}%.",
    ]
    return "\n".join(lines) + "\n"


def run_purify(
    images: str | Path,
    artifact: str | Path,
    out_dir: str | Path,
    engine: str = "onnxruntime",
    precision: str = "fp32",
    provider: str = "cpu",
    batch: int = 16,
    workers: int = 2,
    progress: bool = True,
) -> dict:
    """Purify every image under `images` into `out_dir` (same relative paths, .png); resumable (an output file
    is written atomically, so one that exists is done); unreadable files go to out_dir/skipped.csv."""
    from toolkit.artifact import read_manifest
    from toolkit.data.loader import batches, discover_images
    from toolkit.engines import open_engine
    from toolkit.progress import progress_bar

    m = read_manifest(artifact)
    if m["kind"] != "purifier":
        raise ValueError(f"{artifact}: 'toolkit purify' needs a purifier artifact, this one is {m['kind']!r}")
    root, out = Path(images), Path(out_dir)
    files, _ = discover_images(root)

    def target(p: Path) -> Path:
        return (out / p.relative_to(root)).with_suffix(".png")

    todo = [p for p in files if not target(p).is_file()]
    skipped, n, t = [], 0, time.perf_counter()
    with (
        open_engine(artifact, engine, precision, provider, m) as eng,
        progress_bar("purify", len(todo), progress) as adv,
    ):
        for b in batches(todo, m["preprocess"], batch, workers):
            if len(b.paths):
                res = eng.infer({"images": b.array})["purified"]
                for p, img in zip(b.paths, res, strict=True):
                    dst = target(Path(p))
                    dst.parent.mkdir(parents=True, exist_ok=True)
                    _save_png(torch.from_numpy(np.ascontiguousarray(img)), dst)
                n += len(b.paths)
            skipped += b.skipped
            adv(len(b.paths) + len(b.skipped))
    if skipped:
        write_text(out / "skipped.csv", "path,reason\n" + "".join(f'"{s.path}","{s.reason}"\n' for s in skipped))
    wall = time.perf_counter() - t
    return {
        "purified_now": n,
        "already_done": len(files) - len(todo),
        "skipped": len(skipped),
        "out": str(out),
        "images_per_s": n / wall if wall > 0 else None,
    }

"""Adversarial pairs for the purifier: PGD against a detector run -> a paired (adversarial, clean) dataset.

Pairs directory: `adv/NNNNN.png`, `clean/NNNNN.png` (8-bit PNG, lossless) and `pairs.jsonl`, one line
per pair with the source file, label, eps, steps, step size, target, seed and whether the attack
succeeded; `summary.json` has the success rate per eps.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from toolkit.attacks import PGDConfig, PixelDetector, pgd, success
from toolkit.io import write_json, write_text


def load_pixels(paths: list, size: int) -> torch.Tensor:
    """Files -> (N,3,size,size) in [0,1] on the 8-bit grid (resize short side + centre crop, as preprocessing)."""
    from toolkit.data.images import load_image
    from toolkit.preprocess import PreprocessConfig, resize_and_crop

    cfg = PreprocessConfig(size=size)
    arr = np.stack([np.asarray(resize_and_crop(load_image(p), cfg), dtype=np.uint8) for p in paths])
    return torch.from_numpy(arr).permute(0, 3, 1, 2).float() / 255.0


def pixel_detector(run_dir: str | Path) -> tuple[PixelDetector, dict]:
    from toolkit.kinds.detector import load_deployed

    model, config = load_deployed(run_dir)
    p = config["preprocess"]
    return PixelDetector(model, p["mean"], p["std"]).eval(), config


def save_png(x: torch.Tensor, path: Path) -> None:
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

    cfgs = {eps: PGDConfig(eps=eps, steps=steps, target=target, seed=seed) for eps in eps_list}  # refused up front
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
            cfg = cfgs[eps]
            ok = 0
            for i in range(0, len(paths), batch):
                x, y = load_pixels(paths[i : i + batch], size), labels[i : i + batch]
                adv = pgd(model, x, y, cfg)
                hit = success(model, x, adv, y, threshold, target)
                ok += int(hit.sum())
                for j in range(len(x)):
                    name = f"{k:05d}.png"
                    save_png(adv[j], out / "adv" / name)
                    save_png(x[j], out / "clean" / name)
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

"""`toolkit train detector`: folder -> runs/<name>/ (model.safetensors, config.json, metrics.json)."""

from __future__ import annotations

from pathlib import Path

import typer

from toolkit.cli.common import err, out, user_errors

app = typer.Typer(help="Train models.", no_args_is_help=True)


@app.command("detector")
def detector(
    data: Path = typer.Argument(..., help="training folder (0_real/1_fake or nature/ai layout)"),
    out_dir: Path = typer.Option(Path("runs/detector"), "--out", help="run directory to write"),
    val: Path | None = typer.Option(None, help="validation folder that fixes the threshold (default: 20% of DATA)"),
    method: str = typer.Option(
        "causal", help="causal (CausalCLIP), probe (UnivFD linear probe) or prompt (CoOp prompts, folded to one unit)"
    ),
    clip: str = typer.Option("tiny-vit-64", help="open_clip model name, e.g. ViT-L-14, or a tiny preset"),
    pretrained: str | None = typer.Option(None, help="open_clip tag (e.g. openai) or a local .safetensors file"),
    epochs: int = typer.Option(80, min=1),
    hsic_weight: float = typer.Option(1.0, help="lambda of HSIC(c, n)"),
    keep_ratio: float = typer.Option(0.5, min=0.0, max=1.0, help="target fraction of kept feature dims"),
    seed: int = typer.Option(0, help="seed of what is trained (mask, head, prompts, data order); never the encoder"),
    backbone_seed: int = typer.Option(
        0,
        help="initialisation seed of a random-weights encoder (no --pretrained): kept apart from --seed so a "
        "loop over training seeds compares runs on one frozen encoder",
    ),
    cache_dir: Path | None = typer.Option(None, help="feature cache (default ~/.cache/causal-deploy-toolkit)"),
    batch_size: int = typer.Option(64, min=1, help="encoder batch size"),
    prompt_ctx: int = typer.Option(4, min=1, help="--method prompt: learnable context tokens per class prompt"),
    adv_eps: int = typer.Option(
        0, min=0, help="adversarial training (APT with --method prompt): PGD eps /255 on the head's decision; 0 = off"
    ),
    adv_steps: int = typer.Option(3, min=1, help="PGD steps of adversarial training"),
    adv_refresh: int = typer.Option(10, min=1, help="epochs between re-attacking the training images"),
) -> None:
    """Train a CausalCLIP (or linear-probe, or prompt-tuned) detector on frozen CLIP features.

    Example: toolkit train detector data/embedded/train/ae_transposed --val data/embedded/val/ae_transposed
    --clip ViT-L-14 --pretrained openai --out runs/causal

    Adversarial prompt tuning (APT): --method prompt --adv-eps 4 (PGD on the training images, refreshed every
    --adv-refresh epochs against the prompts as they are).
    """
    from toolkit.models.backbone import BackboneConfig, random_weights_warning
    from toolkit.models.causal_clip import CausalCLIPConfig
    from toolkit.pipelines.detector import train_detector
    from toolkit.training.detector import TrainConfig

    backbone_cfg = BackboneConfig(name=clip, pretrained=pretrained, seed=backbone_seed)
    if warning := random_weights_warning(backbone_cfg):
        err.print(f"[yellow]warning:[/] {warning}", soft_wrap=True, highlight=False)
    with user_errors():
        res = train_detector(
            data,
            out_dir,
            val_dir=val,
            backbone_cfg=backbone_cfg,
            causal_cfg=CausalCLIPConfig(hsic_weight=hsic_weight, keep_ratio=keep_ratio),
            train_cfg=TrainConfig(
                method=method,
                epochs=epochs,
                seed=seed,
                prompt_ctx=prompt_ctx,
                adv_eps=adv_eps,
                adv_steps=adv_steps,
                adv_refresh=adv_refresh,
            ),
            cache_dir=cache_dir,
            batch_size=batch_size,
        )
    v = res["val"]
    out.print(
        f"wrote {res['run_dir']}: threshold {res['threshold']:.4f}, val acc {100 * v['acc']:.1f}% "
        f"(real {100 * v['acc_real']:.1f}%, fake {100 * v['acc_fake']:.1f}%), val AUC {100 * (v['auc'] or 0):.1f}"
    )


@app.command("purifier")
def purifier(
    pairs: Path = typer.Argument(..., help="paired dataset from 'toolkit attack'"),
    out_dir: Path = typer.Option(Path("runs/purifier"), "--out", help="run directory to write"),
    preset: str = typer.Option("tiny", help="tiny (CPU, tests and demo) or base (wider UNet)"),
    t_star: int = typer.Option(100, help="purification starts from this DDPM timestep (of 1000)"),
    ddim_steps: int = typer.Option(5, min=1, help="DDIM steps of the teacher and the DiffPure baseline"),
    teacher_steps: int = typer.Option(1200, min=1, help="teacher optimiser steps (400 undertrained a seed's teacher)"),
    student_steps: int = typer.Option(300, min=1, help="distillation optimiser steps"),
    diffpure_steps: int = typer.Option(400, min=1, help="unsupervised DiffPure baseline optimiser steps"),
    clean_fraction: float = typer.Option(
        0.25, min=0.0, max=1.0, help="share of each batch fed the clean image (teaches clean images to pass through)"
    ),
    noised_calls: int = typer.Option(
        1,
        min=0,
        help="UNet calls of the deployed noised student (2: the teacher's robustness at 14x its speed on the "
        "embedded benchmark, README; 0: deploy the t = 0 one-step student)",
    ),
    noised_steps: int = typer.Option(400, min=1, help="noised student's optimiser steps"),
    seed: int = typer.Option(0),
) -> None:
    """Train the supervised diffusion purifier (teacher), distil it into the deployed noised student (noise to t*,
    --noised-calls UNet calls) and a one-step student, and train the unsupervised DiffPure-style baseline from the
    same UNet; writes safetensors + config.json.

    Example: toolkit train purifier pairs/ --out runs/purifier --teacher-steps 1200 --noised-calls 2
    """
    from toolkit.models.purifier import PurifierTrainConfig
    from toolkit.pipelines.purifier_training import train_purifiers

    with user_errors():
        tc = PurifierTrainConfig(
            teacher_steps=teacher_steps,
            student_steps=student_steps,
            diffpure_steps=diffpure_steps,
            clean_fraction=clean_fraction,
            noised_steps=noised_steps,
            seed=seed,
        )
        res = train_purifiers(pairs, out_dir, tc=tc, preset=preset, t_star=t_star, steps=ddim_steps, seed=seed,
                              noised_calls=noised_calls)  # fmt: skip
    t = res["timings"]
    out.print(
        f"wrote {out_dir}: teacher {t['teacher_s']:.0f} s, student {t['student_s']:.0f} s, "
        f"DiffPure baseline {t['diffpure_s']:.0f} s on {res['n_pairs']} pairs"
    )

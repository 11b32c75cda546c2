"""Detector checkpoints: `model.safetensors` + `config.json` (+ `metrics.json`) in a run directory.

Loading reads safetensors and JSON only; nothing is unpickled.
"""

from __future__ import annotations

from pathlib import Path

import torch

from toolkit.io import atomic_path, read_json, write_json

FORMAT = "causal-deploy-toolkit/detector@1"


def save_detector(run_dir: str | Path, head: torch.nn.Module, config: dict, metrics: dict | None = None) -> Path:
    from safetensors.torch import save_file

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in head.state_dict().items()}
    with atomic_path(run_dir / "model.safetensors") as tmp:
        save_file(state, str(tmp), metadata={"format": FORMAT})
    write_json(run_dir / "config.json", {"format": FORMAT, **config})
    if metrics is not None:
        write_json(run_dir / "metrics.json", metrics)
    return run_dir


def check_backbone(run_dir: str | Path, config: dict, backbone) -> None:
    """A head only makes sense on the features it was trained on: same model name and weights."""
    if backbone.identity != config["backbone_identity"]:
        raise ValueError(f"{run_dir} was trained on features of {config['backbone_identity']}, not {backbone.identity}")


def load_detector(run_dir: str | Path) -> tuple[torch.nn.Module, dict]:
    """-> (head in eval mode, config dict). Clear errors for a missing or foreign run directory."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from toolkit.models.causal_clip import CausalCLIPConfig
    from toolkit.training.detector import build_head

    run_dir = Path(run_dir)
    cfg_path, weights = run_dir / "config.json", run_dir / "model.safetensors"
    for p in (cfg_path, weights):
        if not p.is_file():
            raise FileNotFoundError(f"{run_dir} has no {p.name}; train one with 'toolkit train detector'")
    config = read_json(cfg_path)
    if config.get("format") != FORMAT:
        raise ValueError(f"{cfg_path}: not a detector checkpoint (format {config.get('format')!r}, want {FORMAT})")
    head = build_head(config["train"]["method"], CausalCLIPConfig.from_dict(config["causal"]))
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError) as e:
        raise ValueError(f"{weights}: unreadable safetensors file ({e})") from None
    try:
        head.load_state_dict(state)
    except RuntimeError as e:
        raise ValueError(f"{weights} does not match {cfg_path}: {e}") from None
    return head.eval(), config

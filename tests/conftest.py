"""Shared fixtures: toy image folders in both community layouts, a tiny backbone, an isolated cache."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


def toy_image(label: int, rng: np.random.Generator, size: int = 48) -> Image.Image:
    """Real: smooth colour gradients + mild noise. Fake: the same with a strong 2-pixel checkerboard."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    base = np.stack([yy * rng.uniform(60, 200), xx * rng.uniform(60, 200), (xx + yy) * rng.uniform(30, 100)], -1)
    base += rng.normal(0, 4, base.shape)
    if label:
        checker = ((np.indices((size, size)).sum(0) // 2) % 2)[..., None] * 90.0
        base += checker
    return Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))


def write_forensynths(root: Path, generators: dict[str, int], seed: int = 0) -> Path:
    """root/<gen>/{0_real,1_fake}/*.png with n images per class per generator."""
    rng = np.random.default_rng(seed)
    for gen, n in generators.items():
        for label, name in ((0, "0_real"), (1, "1_fake")):
            d = root / gen / name
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                toy_image(label, rng).save(d / f"{i:03d}.png")
    return root


def noise_images(root: Path, n: int, size: int = 40, seed: int = 1) -> Path:
    """root/0000.png ... : n seeded noise images (inputs for runners, whose content does not matter)."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(root / f"{i:04d}.png")
    return root


def kill_after_lines(cmd: list[str], out: Path, lines: int, timeout: float, poll: float = 0.01, env=None) -> bool:
    """Start `cmd`, SIGKILL it once `out` holds `lines` lines (a kill at an arbitrary moment of a real run);
    -> whether it was killed (False: it finished first)."""
    import signal
    import subprocess
    import time

    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if out.is_file() and out.read_bytes().count(b"\n") >= lines:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(poll)
    proc.wait()
    return proc.returncode == -signal.SIGKILL


def interrupting(batches, at: int):
    """A stand-in for toolkit.data.loader.batches that raises KeyboardInterrupt before batch `at` (Ctrl-C)."""

    def interrupted(*a, **k):
        for i, b in enumerate(batches(*a, **k)):
            if i == at:
                raise KeyboardInterrupt
            yield b

    return interrupted


# `make mutation` sets this to a folder that outlives one pytest session. Each mutant runs its tests in a fresh
# process, where the session fixtures below were rebuilt every time: training and exporting the tiny detector is
# 10 s of setup before a 0.2 s test, most of a mutation run. With the variable set, they are built once (by mutmut's
# first, unmutated pass) where they stay, so the paths recorded inside them (the run's data, the artifact's run)
# stay valid. A digest taken when built is checked by every session; a session running a mutant that finds the
# folder missing or damaged builds its own private one (the mutant may be in the code that builds it, so what it
# builds is never kept). Mutants on the export path itself are still exercised: the tests that export call export
# themselves.
FIXTURE_CACHE = "TOOLKIT_TEST_FIXTURE_CACHE"


def _tree_digest(root: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        h.update(p.relative_to(root).as_posix().encode() + b"\0")
        if p.is_file() and not p.is_symlink():
            h.update(p.read_bytes())
    return h.hexdigest()


def _session_dir(factory, name: str, build) -> Path:
    """`build(out)` makes the folder `out`; -> a fresh folder per session, or the one built once (above)."""
    root = os.environ.get(FIXTURE_CACHE)
    if not root:
        out = factory.mktemp(name) / name
        build(out)
        return out
    import fcntl

    root = Path(root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    cached, stamp = root / name, root / f"{name}.sha256"
    mutant = "__mutmut_" in os.environ.get("MUTANT_UNDER_TEST", "")
    with open(root / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (stamp.is_file() and cached.is_dir() and stamp.read_text() == _tree_digest(cached)):
            if mutant:
                out = factory.mktemp(name) / name
                build(out)
                return out
            stamp.unlink(missing_ok=True)
            shutil.rmtree(cached, ignore_errors=True)
            build(cached)
            stamp.write_text(_tree_digest(cached))
    return cached


@pytest.fixture(scope="session")
def toy_data(tmp_path_factory) -> Path:
    return _session_dir(tmp_path_factory, "toy", lambda out: write_forensynths(out, {"gan_a": 24, "gan_b": 12}))


@pytest.fixture(scope="session")
def tiny_backbone():
    from toolkit.models.backbone import BackboneConfig, load_backbone

    return load_backbone(BackboneConfig(name="tiny-vit-32"))


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TOOLKIT_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="session")
def trained_run(toy_data, tmp_path_factory) -> Path:
    from toolkit.models.backbone import BackboneConfig
    from toolkit.pipelines.detector import train_detector
    from toolkit.training.detector import TrainConfig

    def build(run):
        train_detector(toy_data / "gan_a", run, backbone_cfg=BackboneConfig(name="tiny-vit-32"),
                       train_cfg=TrainConfig(epochs=20), cache_dir=None, progress=False)  # fmt: skip

    return _session_dir(tmp_path_factory, "causal", build)


@pytest.fixture(scope="session")
def exported_artifact(trained_run, tmp_path_factory) -> Path:
    """One exported detector artifact shared by the whole session."""
    from export.core import export_run

    return _session_dir(tmp_path_factory, "detector", lambda out: export_run(trained_run, out, log=lambda *_: None))


@pytest.fixture(scope="session")
def pairs(trained_run, toy_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("pairs")
    from toolkit.pipelines.attack import make_pairs

    make_pairs(trained_run, toy_data / "gan_a", out, eps_list=(8, 16), steps=5, n=32, progress=False)
    return out


@pytest.fixture(scope="session")
def purifier_run(pairs, tmp_path_factory):
    from toolkit.models.purifier import PurifierConfig, PurifierTrainConfig
    from toolkit.pipelines.attack import read_pairs
    from toolkit.pipelines.purifier_training import train_purifiers

    out = tmp_path_factory.mktemp("purifier") / "run"
    adv, _, _ = read_pairs(pairs)
    cfg = PurifierConfig.tiny(adv.shape[-1])
    train_purifiers(
        pairs,
        out,
        cfg,
        PurifierTrainConfig(
            teacher_steps=150, student_steps=150, diffpure_steps=20, noised_steps=100, batch_size=16, lr=3e-3
        ),
        progress=False,
    )
    return out


@pytest.fixture(scope="session")
def purifier_artifact(purifier_run, tmp_path_factory) -> Path:
    """One exported purifier artifact shared by the session."""
    from export.core import export_run

    out = tmp_path_factory.mktemp("purifier_artifact") / "purifier"
    export_run(purifier_run, out, log=lambda *_: None)
    return out

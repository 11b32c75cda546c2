"""The wheels `make gpu-wheels` carries to the GPU machine install there and import with only its packages."""

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Imported in `python -S` (no site-packages) with PYTHONPATH = the carried wheels, a folder of links to the
# distributions of this venv that the machine has too (its package list, each with what it requires here: the
# machine's copies bring their own), and the repository. Nothing else can be imported.
IMPORTS = """
import sys
import open_clip, diffusers
from diffusers import UNet2DModel
import toolkit.models.backbone, toolkit.models.purifier
site = sys.argv[1]
assert open_clip.__file__.startswith(site) and diffusers.__file__.startswith(site), "not the carried copies"
print("ok", open_clip.__version__, diffusers.__version__)
"""


def _norm(name: str) -> str:
    import re

    return re.sub(r"[-_.]+", "-", name).lower()


def _with_requirements(names: set[str], roots: tuple[str, ...]) -> set[str]:
    """`names` + everything `roots` require in this venv, transitively (markers evaluated here, extras ignored)."""
    from importlib import metadata

    from packaging.requirements import Requirement

    out, todo = set(names), list(roots)
    while todo:
        try:
            reqs = metadata.requires(todo.pop()) or []
        except metadata.PackageNotFoundError:
            continue
        for r in map(Requirement, reqs):
            if (r.marker is None or r.marker.evaluate({"extra": ""})) and _norm(r.name) not in out:
                out.add(_norm(r.name))
                todo.append(r.name)
    return out


def _machine_site(dest: Path, allowed: set[str]) -> Path:
    """Links to the top-level entries (packages, modules, .libs, .dist-info) of this venv's allowed distributions."""
    from importlib import metadata

    dest.mkdir()
    for dist in metadata.distributions():
        if _norm(dist.metadata["Name"]) not in allowed:
            continue
        for top in {Path(f).parts[0] for f in dist.files or []} - {"..", "bin", "__pycache__"}:
            src = Path(dist.locate_file(top))
            if src.exists() and not (dest / top).exists():
                (dest / top).symlink_to(src)
    return dest


def _import_in_machine_env(tmp_path: Path, site: Path, carried: set[str]):
    from benchmarks.gpu_wheels import MACHINE_PACKAGES

    allowed = _with_requirements(set(MACHINE_PACKAGES), tuple(MACHINE_PACKAGES)) - carried
    machine = _machine_site(tmp_path / "machine", allowed)
    env = {"PYTHONPATH": f"{site}:{machine}:{ROOT}", "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    return subprocess.run([sys.executable, "-S", "-c", IMPORTS, str(site)], capture_output=True, text=True, env=env,
                          cwd=tmp_path)  # fmt: skip


def test_carried_wheels_install_offline_and_import_with_only_the_machines_packages(tmp_path):
    from benchmarks.gpu_wheels import PACKAGES, download

    stale = tmp_path / "whl" / "diffusers-0.1.0-py3-none-any.whl"
    stale.parent.mkdir()
    stale.write_bytes(b"an old wheel")
    try:
        wheels = download(tmp_path / "whl")
    except subprocess.CalledProcessError as e:
        pytest.skip(f"the package registry is not reachable from here ({e})")
    assert not stale.exists(), "a stale wheel left in .whl/ breaks the install there"
    names = {w.name.split("-")[0].lower() for w in wheels}
    assert names == {p.lower() for p in PACKAGES} and "importlib_metadata" not in names
    for w in wheels:  # pure Python or the stable ABI: the same files serve this Python and the machine's 3.12
        assert w.name.endswith("-py3-none-any.whl") or "-abi3-" in w.name, w.name
        assert zipfile.ZipFile(w).testzip() is None
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                    "--target", str(site), *map(str, wheels)], check=True)  # fmt: skip
    res = _import_in_machine_env(tmp_path, site, {_norm(p) for p in PACKAGES})
    assert res.returncode == 0 and res.stdout.startswith("ok"), res.stderr[-2000:]


def test_the_import_check_fails_without_the_carried_wheels(tmp_path):
    """The check above can fail: with nothing carried, open_clip cannot be imported."""
    from benchmarks.gpu_wheels import PACKAGES

    (tmp_path / "empty").mkdir()
    res = _import_in_machine_env(tmp_path, tmp_path / "empty", {_norm(p) for p in PACKAGES})
    assert res.returncode != 0 and "No module named 'open_clip'" in res.stderr, res.stderr[-2000:]

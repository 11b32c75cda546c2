"""Image perturbations for robustness evaluation, applied to the decoded image before preprocessing.

The protocol follows UnivFD / CNNDetection (Wang et al. 2020): Gaussian blur with standard deviation
sigma per channel (scipy's `gaussian_filter`, as their code), JPEG re-encoding at a quality (PIL, 4:2:0
subsampling as PIL's default), and a downscale by a factor (bicubic) that the model's preprocessing then
scales back up. A spec is `op:value` or a chain `op:value+op:value`; a chain is always applied in the
order blur -> resize -> jpeg (blur before JPEG, as UnivFD), whatever order it is written in. The identity
values (`jpeg:100` is *not* one: it re-encodes; `blur:0`, `resize:1`) leave the image untouched.

    parse_axes(["jpeg:100,90,75", "blur:0,2"]) -> [[jpeg:100, jpeg:90, jpeg:75], [blur:0, blur:2]]
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image

ORDER = ("blur", "resize", "jpeg")  # application order of a chain
_LIMITS = {"blur": (0.0, 64.0), "resize": (0.01, 1.0), "jpeg": (1.0, 100.0)}
IDENTITY = {"blur": 0.0, "resize": 1.0}  # values that leave the image as it is (JPEG has none: 100 re-encodes)


@dataclass(frozen=True)
class Perturbation:
    """One chain of operations, e.g. ((blur, 2.0), (jpeg, 75.0)); empty = no perturbation."""

    ops: tuple[tuple[str, float], ...] = ()

    @property
    def name(self) -> str:
        return "+".join(f"{op}:{_fmt(v)}" for op, v in self.ops) or "none"

    def __call__(self, img: Image.Image) -> Image.Image:
        for op, v in self.ops:
            img = _APPLY[op](img, v)
        return img


def _fmt(v: float) -> str:
    return f"{v:g}"


def _blur(img: Image.Image, sigma: float) -> Image.Image:
    if sigma <= 0:
        return img
    from scipy.ndimage import gaussian_filter

    a = np.asarray(img.convert("RGB"), dtype=np.float32)
    for c in range(3):  # per channel, as UnivFD's data augmentation / robustness code
        a[..., c] = gaussian_filter(a[..., c], sigma=sigma)
    return Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8))


def _resize(img: Image.Image, factor: float) -> Image.Image:
    if factor >= 1:
        return img
    w, h = img.size
    return img.resize((max(1, round(w * factor)), max(1, round(h * factor))), Image.Resampling.BICUBIC)


def _jpeg(img: Image.Image, quality: float) -> Image.Image:
    buf = io.BytesIO()
    img.convert("RGB").save(buf, format="JPEG", quality=int(quality))
    buf.seek(0)
    out = Image.open(buf)
    out.load()
    return out


_APPLY = {"blur": _blur, "resize": _resize, "jpeg": _jpeg}


def parse_chain(spec: str) -> Perturbation:
    """'blur:2+jpeg:75' -> Perturbation (canonical order); 'none' -> the identity. ValueError names the problem."""
    spec = spec.strip()
    if spec in ("", "none"):
        return Perturbation()
    ops: dict[str, float] = {}
    for part in spec.split("+"):
        op, sep, val = part.strip().partition(":")
        if not sep or op not in _APPLY:
            raise ValueError(f"perturbation {part!r}: expected op:value with op one of {', '.join(ORDER)}")
        try:
            v = float(val)
        except ValueError:
            raise ValueError(f"perturbation {part!r}: {val!r} is not a number") from None
        lo, hi = _LIMITS[op]
        if not lo <= v <= hi:
            raise ValueError(f"perturbation {part!r}: {op} must be in [{_fmt(lo)}, {_fmt(hi)}]")
        if op in ops:
            raise ValueError(f"perturbation {spec!r}: {op} appears twice")
        ops[op] = v
    # identity values are dropped, so blur:0 is the clean row (measured once)
    return Perturbation(tuple((op, ops[op]) for op in ORDER if op in ops and ops[op] != IDENTITY.get(op)))


def parse_axis(spec: str) -> list[Perturbation]:
    """'jpeg:100,90,30' -> one perturbation per value; 'blur:1+jpeg:75,50' varies the last op of the chain."""
    head, _, values = spec.rpartition(":")
    if not head:
        raise ValueError(f"--perturb {spec!r}: expected op:v1,v2,... (e.g. jpeg:100,90,75 or blur:0,1,2)")
    return [parse_chain(f"{head}:{v}") for v in values.split(",") if v.strip()]


def parse_axes(specs: list[str]) -> list[list[Perturbation]]:
    return [parse_axis(s) for s in specs]

"""Labelled image folders in the community layouts, with a generator name per image.

- ForenSynths / UniversalFakeDetect: `.../<generator>/0_real/*` and `.../<generator>/1_fake/*`, nested
  to any depth (`train/car/0_real`, `test/progan/cat/1_fake`, or `0_real` directly under the root).
- GenImage: `<generator>/{train,val}/{nature,ai}/*`.

The generator of an image is the path from the root to its label folder, with split folders
(train / val / test) removed and the class sub-folders of ForenSynths kept (`progan/cat`).
`by_generator` groups at the first path component, which is how results are reported.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from toolkit.data.images import is_image_file

LABEL_DIRS = {"0_real": 0, "1_fake": 1, "nature": 0, "ai": 1}
SPLIT_DIRS = {"train", "val", "valid", "validation", "test"}


@dataclass
class LabelledImages:
    root: Path
    paths: list[Path] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    generators: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.paths)

    def subset(self, idx: list[int]) -> LabelledImages:
        return LabelledImages(
            self.root,
            [self.paths[i] for i in idx],
            [self.labels[i] for i in idx],
            [self.generators[i] for i in idx],
        )

    def counts(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for g, y in zip(self.generators, self.labels, strict=True):
            d = out.setdefault(g, {"real": 0, "fake": 0})
            d["fake" if y else "real"] += 1
        return out

    def group_names(self) -> list[str]:
        return sorted({top_generator(g) for g in self.generators})


# The generator of images whose label folders sit at a root named like a split (`train/0_real`, `test/1_fake`): the
# layout names none, and "train" is not a generator. Never counted as seen or unseen. A root with another name
# (`progan/0_real`) is taken as the generator's folder, as in training on one ForenSynths generator.
UNNAMED = "(no generator folder)"


def top_generator(generator: str) -> str:
    return generator.split("/")[0]


def _generator_name(root: Path, label_dir: Path) -> str:
    parts = [p for p in label_dir.parent.relative_to(root).parts if p.lower() not in SPLIT_DIRS]
    if parts:
        return "/".join(parts)
    return UNNAMED if root.resolve().name.lower() in SPLIT_DIRS else root.resolve().name


def find_labelled_images(root: str | Path) -> LabelledImages:
    """Walk `root` for label folders (0_real / 1_fake / nature / ai) and list their images, sorted."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a directory")
    out = LabelledImages(root)
    label_dirs = sorted(p for p in [root, *root.rglob("*")] if p.is_dir() and p.name in LABEL_DIRS)
    for d in label_dirs:
        gen = _generator_name(root, d)
        label = LABEL_DIRS[d.name]
        # images anywhere below the label folder (some datasets nest per class inside 0_real)
        for f in sorted(d.rglob("*")):
            nested = f.relative_to(d).parts[:-1]  # a label folder below this one is listed on its own
            if f.is_file() and is_image_file(f) and not any(p in LABEL_DIRS for p in nested):
                out.paths.append(f)
                out.labels.append(label)
                out.generators.append(gen)
    if not out.paths:
        raise ValueError(
            f"{root} has no labelled images: expected folders named 0_real/ and 1_fake/ "
            "(ForenSynths layout) or nature/ and ai/ (GenImage layout)"
        )
    return out


def describe(ds: LabelledImages) -> str:
    c = Counter(ds.labels)
    return f"{len(ds)} images ({c[0]} real, {c[1]} fake) from {len(ds.group_names())} generator(s)"

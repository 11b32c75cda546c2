"""Batched CLIP feature extraction with an on-disk cache keyed by backbone, preprocessing and file content.

Cache layout: `<cache_dir>/<sha256(backbone identity + preprocessing)[:16]>/shard-*.safetensors`, each
shard holding `features` (N, D) float32 and `keys` (N, 32) uint8 = sha256 of the image file's bytes.
Retraining a head re-reads the shards and never re-runs the encoder; a renamed or copied file hits
the cache, an edited one misses. Unreadable images are skipped and reported by name.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from toolkit.data.images import ImageDecodeError, Skipped, decode_image
from toolkit.preprocess import preprocess


def default_cache_dir() -> Path:
    return Path(os.environ.get("TOOLKIT_CACHE", Path.home() / ".cache" / "causal-deploy-toolkit")) / "features"


@dataclass
class FeatureSet:
    features: np.ndarray  # (N, D) float32, L2-normalised
    paths: list[Path]  # the images that were read, in input order
    index: list[int]  # position of each row in the caller's input list
    skipped: list[Skipped] = field(default_factory=list)
    cache_hits: int = 0


def cache_key(backbone_identity: str, preprocess_cfg: dict) -> str:
    blob = json.dumps({"backbone": backbone_identity, "preprocess": preprocess_cfg}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


class FeatureCache:
    def __init__(self, directory: Path):
        self.directory = directory
        self._store: dict[bytes, np.ndarray] | None = None

    def _load(self) -> dict[bytes, np.ndarray]:
        if self._store is None:
            from safetensors.numpy import load_file

            self._store = {}
            for shard in sorted(self.directory.glob("shard-*.safetensors")):
                try:
                    t = load_file(str(shard))
                except Exception:  # a damaged shard is a cache miss, never a failed run
                    continue
                for k, v in zip(t["keys"], t["features"], strict=True):
                    self._store[k.tobytes()] = v
        return self._store

    def get(self, digest: bytes) -> np.ndarray | None:
        return self._load().get(digest)

    def put_many(self, digests: list[bytes], feats: np.ndarray) -> None:
        if not digests:
            return
        from safetensors.numpy import save_file

        from toolkit.io import atomic_path

        keys = np.frombuffer(b"".join(digests), dtype=np.uint8).reshape(len(digests), 32)
        with atomic_path(self.directory / f"shard-{uuid.uuid4().hex}.safetensors") as tmp:
            save_file({"keys": keys, "features": np.ascontiguousarray(feats, dtype=np.float32)}, str(tmp))
        store = self._load()
        for d, f in zip(digests, feats, strict=True):
            store[d] = f


def extract_features(
    paths: list[Path],
    backbone,
    batch_size: int = 64,
    cache_dir: Path | None = None,
    progress: bool = True,
    description: str = "features",
) -> FeatureSet:
    """Encode `paths` with `backbone` (a `ClipBackbone`), using and filling the cache."""
    import torch

    from toolkit.progress import progress_bar

    pcfg = backbone.preprocess_cfg
    cache = None
    if cache_dir is not None:
        cache = FeatureCache(Path(cache_dir) / cache_key(backbone.identity, pcfg.to_dict()))

    rows: dict[int, np.ndarray] = {}
    skipped: list[Skipped] = []
    pending: list[tuple[int, bytes, np.ndarray]] = []  # (input index, digest, preprocessed image)
    hits = 0

    def flush() -> None:
        if not pending:
            return
        x = torch.from_numpy(np.stack([p[2] for p in pending]))
        with torch.inference_mode():
            f = backbone(x).float().numpy()  # (b, D)
        for (i, _, _), row in zip(pending, f, strict=True):
            rows[i] = row
        if cache is not None:
            cache.put_many([p[1] for p in pending], f)
        pending.clear()

    with progress_bar(description, total=len(paths), enabled=progress) as advance:
        for i, path in enumerate(paths):
            try:
                data = Path(path).read_bytes()
            except OSError as e:
                skipped.append(Skipped(str(path), f"cannot read file ({e.strerror or e})"))
                advance()
                continue
            digest = hashlib.sha256(data).digest()
            hit = cache.get(digest) if cache is not None else None
            if hit is not None:
                rows[i] = hit
                hits += 1
            else:
                try:
                    pending.append((i, digest, preprocess(decode_image(data, path), pcfg)))
                except ImageDecodeError as e:
                    skipped.append(Skipped(e.path, e.reason))
                if len(pending) >= batch_size:
                    flush()
            advance()
        flush()

    index = sorted(rows)
    if index:
        feats = np.stack([rows[i] for i in index]).astype(np.float32)
    else:
        feats = np.zeros((0, backbone.feature_dim), np.float32)
    return FeatureSet(feats, [Path(paths[i]) for i in index], index, skipped, hits)

import pytest

from toolkit.data.embedded import EmbeddedConfig, build_embedded_benchmark, load_photos
from toolkit.data.folders import find_labelled_images
from toolkit.data.generators import FAMILIES, GeneratorTrainConfig


def test_photos_ship_offline():
    photos = load_photos()
    assert len(photos) >= 15
    assert all(a.ndim == 3 and a.shape[-1] == 3 and a.dtype.name == "uint8" for _, a in photos)


@pytest.mark.slow
def test_small_build_has_the_layout_and_is_reused(tmp_path):
    cfg = EmbeddedConfig(
        counts={"train": 4, "val": 2, "test": 3},
        generator=GeneratorTrainConfig(steps=2, diffusion_steps=2, diffusion_sample_steps=2),
    )
    out = build_embedded_benchmark(tmp_path / "b", cfg, progress=False)
    test = find_labelled_images(out / "test")
    assert test.group_names() == sorted(FAMILIES)
    assert test.counts()["diffusion"] == {"real": 3, "fake": 3}
    assert len(find_labelled_images(out / "train" / "ae_transposed")) == 8
    stamp = (out / "benchmark.json").stat().st_mtime_ns
    build_embedded_benchmark(tmp_path / "b", cfg, progress=False)
    assert (out / "benchmark.json").stat().st_mtime_ns == stamp
    assert not (tmp_path / "b.building").exists()

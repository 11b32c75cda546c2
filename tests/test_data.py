import numpy as np
import pytest
from PIL import Image

from tests.conftest import toy_image, write_forensynths
from toolkit.data.features import extract_features
from toolkit.data.folders import UNNAMED, find_labelled_images
from toolkit.data.images import ImageDecodeError, load_image
from toolkit.evaluation import markdown_table, per_generator_report


def test_forensynths_layout_nested_per_generator(tmp_path):
    rng = np.random.default_rng(0)
    for rel in (
        "test/progan/cat/0_real",
        "test/progan/cat/1_fake",
        "test/stylegan/1_fake",
        "test/stylegan/0_real",
    ):
        d = tmp_path / rel
        d.mkdir(parents=True)
        toy_image(int(rel.endswith("fake")), rng).save(d / "a.png")
        (d / "notes.txt").write_text("not an image")
    ds = find_labelled_images(tmp_path)
    assert len(ds) == 4
    assert sorted(set(ds.generators)) == ["progan/cat", "stylegan"]
    assert ds.group_names() == ["progan", "stylegan"]
    assert sorted(ds.labels) == [0, 0, 1, 1]


def test_genimage_layout(tmp_path):
    rng = np.random.default_rng(0)
    for rel, n in (("midjourney/train/ai", 2), ("midjourney/train/nature", 3), ("sdv4/val/ai", 1)):
        d = tmp_path / rel
        d.mkdir(parents=True)
        for i in range(n):
            toy_image(int(rel.endswith("ai")), rng).save(d / f"{i}.jpg")
    ds = find_labelled_images(tmp_path)
    assert ds.counts() == {"midjourney": {"real": 3, "fake": 2}, "sdv4": {"real": 0, "fake": 1}}


def test_label_folders_at_a_split_named_root_name_no_generator_and_count_neither_seen_nor_unseen(tmp_path):
    """Issue 25: `train/0_real` named its generator "train" (a split), so a flat test folder was an "unseen
    generator" called "test". A root named otherwise is the generator's folder (training on one generator)."""
    assert set(find_labelled_images(write_forensynths(tmp_path / "mygan", {".": 2})).generators) == {"mygan"}
    train = find_labelled_images(write_forensynths(tmp_path / "train", {".": 2}))
    test = find_labelled_images(write_forensynths(tmp_path / "test", {".": 3}))
    assert set(train.generators) == set(test.generators) == {UNNAMED}
    rep = per_generator_report(np.array(test.labels), np.linspace(-1, 1, len(test)), test.generators, 0.0,
                               train.generators)  # fmt: skip
    assert rep["generators"][UNNAMED]["seen_in_training"] is None
    assert rep["mean_unseen"]["auc"] is None
    assert "| (no generator folder) | - |" in markdown_table({"probe": rep})


def test_folder_without_labels_is_a_clear_error(tmp_path):
    (tmp_path / "x").mkdir()
    with pytest.raises(ValueError, match=r"0_real/ and 1_fake/"):
        find_labelled_images(tmp_path)
    with pytest.raises(FileNotFoundError, match="not a directory"):
        find_labelled_images(tmp_path / "missing")


def _bad_files(d):
    good = toy_image(0, np.random.default_rng(0))
    good.save(d / "good.png")
    (d / "empty.png").write_bytes(b"")
    (d / "text.jpg").write_text("hello, not a jpeg")
    full = (d / "good.png").read_bytes()
    (d / "truncated.png").write_bytes(full[: len(full) // 2])
    return ["empty.png", "text.jpg", "truncated.png"]


def test_corrupt_images_are_reported_by_name(tmp_path):
    bad = _bad_files(tmp_path)
    for name in bad:
        with pytest.raises(ImageDecodeError) as e:
            load_image(tmp_path / name)
        assert name in str(e.value)
    assert load_image(tmp_path / "good.png").size == (48, 48)


def test_feature_extraction_skips_bad_files_and_caches(tmp_path, tiny_backbone):
    bad = _bad_files(tmp_path)
    Image.open(tmp_path / "good.png").save(tmp_path / "copy.png")
    paths = [*sorted(tmp_path.glob("*.png")), tmp_path / "text.jpg", tmp_path / "missing.png"]
    cache = tmp_path / "cache"
    fs = extract_features(paths, tiny_backbone, batch_size=2, cache_dir=cache, progress=False)
    assert sorted(p.name for p in fs.paths) == ["copy.png", "good.png"]
    assert sorted(s.path.split("/")[-1] for s in fs.skipped) == sorted([*bad, "missing.png"])
    assert fs.features.shape == (2, tiny_backbone.feature_dim)
    np.testing.assert_allclose(np.linalg.norm(fs.features, axis=1), 1.0, atol=1e-5)
    again = extract_features(paths, tiny_backbone, batch_size=2, cache_dir=cache, progress=False)
    assert again.cache_hits == 2
    np.testing.assert_array_equal(again.features, fs.features)

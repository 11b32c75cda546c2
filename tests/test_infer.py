"""`toolkit infer`: every bad-file kind handled, resume after an interruption or a kill, refusals."""

import csv
import io
import json
import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from toolkit.cli import app
from toolkit.data.images import decode_image
from toolkit.pipelines.infer import InferConfig, ResumeError, run_inference


def _png_header_only(w: int, h: int) -> bytes:
    """A PNG that declares w x h pixels but carries almost no data (decompression bomb / giant dimensions)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def _bytes(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


GOOD, BAD = "good", "bad"


def bad_file_matrix(root):
    """-> {relative path: (GOOD|BAD, what it is)}; every kind the infer issue lists."""
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 255, (40, 60, 3), dtype=np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90
    frames = [Image.fromarray(rng.integers(0, 255, (30, 30, 3), dtype=np.uint8)) for _ in range(3)]
    anim = io.BytesIO()
    frames[0].save(anim, "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    png = _bytes(rgb, "PNG")
    files = {
        "ok/plain.png": (GOOD, png),
        "ok/cmyk.jpg": (GOOD, _bytes(rgb.convert("CMYK"), "JPEG")),
        "ok/sixteen.png": (GOOD, _bytes(Image.fromarray((rng.random((40, 50)) * 65535).astype(np.uint16)), "PNG")),
        "ok/palette.png": (GOOD, _bytes(rgb.convert("P"), "PNG")),
        "ok/alpha.png": (GOOD, _bytes(rgb.convert("RGBA"), "PNG")),
        "ok/animated.gif": (GOOD, anim.getvalue()),
        "ok/exif_rotated.jpg": (GOOD, _bytes(rgb, "JPEG", exif=exif)),
        "ok/nested/deeper/gray.webp": (GOOD, _bytes(rgb.convert("L"), "WEBP")),
        "bad/zero.png": (BAD, b""),
        "bad/truncated.png": (BAD, png[: len(png) // 2]),
        "bad/corrupt.jpg": (BAD, b"\xff\xd8\xff\xe0" + rng.integers(0, 255, 500, dtype=np.uint8).tobytes()),
        "bad/not_an_image.png": (BAD, b"this is a text file with a .png name\n"),
        "bad/bomb.png": (BAD, _png_header_only(30000, 30000)),
        "bad/gigantic.png": (BAD, _png_header_only(1_000_000, 100)),
    }
    for rel, (_, data) in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    (root / "ok" / "notes.txt").write_text("not an image extension: ignored, counted")
    return {rel: kind for rel, (kind, _) in files.items()}


def _rows(path):
    return list(csv.DictReader(path.open()))


def test_every_bad_file_kind_is_decoded_or_listed(exported_artifact, tmp_path):
    matrix = bad_file_matrix(tmp_path / "imgs")
    out = tmp_path / "p.csv"
    s = run_inference(tmp_path / "imgs", exported_artifact, out, InferConfig(batch=4, workers=0), progress=False)
    preds = {r["path"] for r in _rows(out)}
    skipped = {r["path"]: r["reason"] for r in _rows(tmp_path / "p.csv.skipped.csv")}
    for rel, kind in matrix.items():  # rows are keyed by the path relative to the folder
        assert (rel in preds) == (kind == GOOD) and (rel in skipped) == (kind == BAD), rel
    assert "empty file" in skipped["bad/zero.png"]
    for big in ("bomb", "gigantic"):
        reason = skipped[f"bad/{big}.png"]
        assert "too large" in reason or "decompression bomb" in reason
    assert s["predicted_now"] == 8 and s["skipped_now"] == 6 and s["other_files_ignored"] == 1
    assert sum(s["skipped_reasons_now"].values()) == 6
    assert 0 < s["engine_open_s"] < s["wall_s"] and s["images_per_s_after_open"] > s["images_per_s"] > 0
    assert s["images_per_s"] == pytest.approx(14 / s["wall_s"])
    for r in _rows(out):
        assert 0.0 <= float(r["p_generated"]) <= 1.0 and r["prediction"] in ("real", "generated")


def test_decoding_policy_for_rotated_cmyk_and_16bit(tmp_path):
    bad_file_matrix(tmp_path)
    rot = decode_image((tmp_path / "ok/exif_rotated.jpg").read_bytes())
    assert rot.size == (40, 60)  # 60x40 stored, orientation 6 applied
    assert decode_image((tmp_path / "ok/cmyk.jpg").read_bytes()).mode == "CMYK"  # converted to RGB in preprocessing
    sixteen = decode_image((tmp_path / "ok/sixteen.png").read_bytes())
    assert sixteen.mode == "L" and np.asarray(sixteen).max() > 200  # scaled from 16 bit, not clipped to 255


def test_resume_after_interruption_and_torn_line(exported_artifact, tmp_path, monkeypatch):
    from conftest import interrupting

    import toolkit.data.loader as loader

    bad_file_matrix(tmp_path / "imgs")
    real_batches = loader.item_batches

    monkeypatch.setattr(loader, "item_batches", interrupting(real_batches, 2))
    out = tmp_path / "p.csv"
    with pytest.raises(KeyboardInterrupt):
        run_inference(tmp_path / "imgs", exported_artifact, out, InferConfig(batch=4, workers=0), progress=False)
    first = _rows(out)
    assert 0 < len(first) < 8
    with out.open("a") as f:  # a kill in the middle of a write
        f.write(first[0]["path"] + ",0.12")
    monkeypatch.setattr(loader, "item_batches", real_batches)
    s = run_inference(tmp_path / "imgs", exported_artifact, out, InferConfig(batch=4, workers=0), progress=False)
    rows = _rows(out)
    assert len(rows) == len({r["path"] for r in rows}) == 8 == s["rows_total"]
    skipped = _rows(tmp_path / "p.csv.skipped.csv")
    assert len(skipped) == len({r["path"] for r in skipped}) == 6
    assert s["already_done"] > 0


def test_resume_after_a_killed_process(exported_artifact, tmp_path):
    from conftest import kill_after_lines

    imgs = tmp_path / "imgs"
    imgs.mkdir()
    rng = np.random.default_rng(0)
    for i in range(240):
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(imgs / f"{i:04d}.png")
    out = tmp_path / "p.jsonl"
    cmd = [
        sys.executable,
        "-c",
        "from toolkit.cli import main; main()",
        "infer",
        str(imgs),
        "--artifact",
        str(exported_artifact),
        "--out",
        str(out),
        "--batch",
        "2",
        "--workers",
        "1",
    ]
    killed = kill_after_lines(cmd, out, 4, timeout=120, poll=0.005)
    res = subprocess.run(cmd, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(r["path"] for r in rows) == sorted(p.name for p in imgs.iterdir())  # exactly one row per file
    if killed:
        assert "already done" in res.stdout


def test_resume_with_another_engine_or_precision_is_refused(exported_artifact, tmp_path):
    bad_file_matrix(tmp_path / "imgs")
    out = tmp_path / "p.csv"
    run_inference(tmp_path / "imgs", exported_artifact, out, InferConfig(workers=0), progress=False)
    with pytest.raises(ResumeError, match=r"different .*precision"):
        run_inference(
            tmp_path / "imgs", exported_artifact, out, InferConfig(precision="fp16", workers=0), progress=False
        )
    s = run_inference(
        tmp_path / "imgs",
        exported_artifact,
        out,
        InferConfig(precision="fp16", workers=0, overwrite=True),
        progress=False,
    )
    assert s["rows_total"] == 8 and s["already_done"] == 0
    foreign = tmp_path / "foreign.csv"
    foreign.write_text("a,b\n1,2\n")
    with pytest.raises(ResumeError, match="not written by 'toolkit infer'"):
        run_inference(tmp_path / "imgs", exported_artifact, foreign, InferConfig(workers=0), progress=False)
    assert foreign.read_text() == "a,b\n1,2\n"  # nothing of the user's is lost


def test_infer_cli_with_parallel_workers(exported_artifact, tmp_path):
    bad_file_matrix(tmp_path / "imgs")
    res = CliRunner().invoke(
        app,
        [
            "infer",
            str(tmp_path / "imgs"),
            "--artifact",
            str(exported_artifact),
            "--out",
            str(tmp_path / "p.jsonl"),
            "--workers",
            "2",
            "--batch",
            "3",
        ],
    )
    assert res.exit_code == 0, res.output
    assert "8 predicted" in res.output and "6 skipped" in res.output
    assert len((tmp_path / "p.jsonl").read_text().splitlines()) == 8
    bad = CliRunner().invoke(
        app, ["infer", str(tmp_path / "imgs"), "--artifact", str(exported_artifact), "--out", str(tmp_path / "p.txt")]
    )
    assert bad.exit_code == 2 and "predictions go to a .csv or .jsonl file, or a directory" in bad.output

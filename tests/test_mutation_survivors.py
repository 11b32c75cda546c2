"""The survivors of the mutation audit of 9b2652e: for each, a test that fails with the planted bug and passes on
the code as it is. Each docstring names the bug it guards against; references are independent where one exists
(open_clip's own transform, a hand-computed AP, the kernel's arithmetic with its own constants). The tenth,
TF32 switched on for fp32 plans, is tests/test_tensorrt.py::test_fp32_plans_are_built_without_tf32."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from toolkit.compare import PrecisionGate, check


def test_the_decision_agreement_bound_alone_can_fail_a_gate():
    """Bug: `check` skipping the decision_agreement bound (no test had agreement alone below its bound)."""
    good = {"min_cosine_feature": 0.9999, "auc_drop_points": 0.0, "acc_drop_points": 0.0}
    ok, fails = check({**good, "decision_agreement": 0.94}, PrecisionGate())
    assert not ok and len(fails) == 1 and fails[0].startswith("decision_agreement 0.94")
    assert check({**good, "decision_agreement": 0.95}, PrecisionGate())[0]


@pytest.mark.parametrize(("w", "h"), [(64, 67), (67, 64), (100, 105), (105, 100), (65, 65), (64, 66)])
def test_crop_offsets_round_like_open_clip_at_odd_and_half_offsets(w, h):
    """Bug: the centre-crop offset `(n - s) // 2` instead of rounding half to even (64x67 or 100x105 at 64 put the
    crop 1 px off: 3.8 and 2.4 away from open_clip). Reference: open_clip's own eval transform."""
    from open_clip.transform import PreprocessCfg, image_transform_v2

    from toolkit.preprocess import PreprocessConfig, preprocess

    rng = np.random.default_rng(w * 1000 + h)
    img = Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
    cfg = PreprocessConfig(size=64)
    ref = image_transform_v2(PreprocessCfg(size=(64, 64), mean=cfg.mean, std=cfg.std), is_train=False)(img).numpy()
    np.testing.assert_allclose(preprocess(img, cfg), ref, atol=1e-5)


class _Recorder(torch.nn.Module):
    """A differentiable stand-in detector that records every image the attack evaluates."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.randn(3 * 8 * 8, generator=torch.Generator().manual_seed(0)))
        self.seen: list[torch.Tensor] = []

    def forward(self, x):
        self.seen.append(x.detach().clone())
        feat = x.flatten(1)
        return feat @ self.w, feat


def test_every_pgd_iterate_stays_in_the_eps_ball_and_in_range():
    """Bug: the per-step projection onto the eps ball dropped (tests checked only the final, clipped output,
    which `quantise_in_ball` projects anyway). Every step's iterate must be within eps and in [0, 1]."""
    from toolkit.attacks import PGDConfig, pgd

    x = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    model = _Recorder()
    cfg = PGDConfig(eps=4, steps=6, step_size=3, seed=0)  # step 3/255 > what 4/255 leaves after two steps
    pgd(model, x, torch.tensor([0, 1, 0, 1]), cfg)
    iterates = model.seen  # one call per step: the decision target makes no clean reference pass
    assert len(iterates) >= cfg.steps
    for it in iterates:
        assert (it - x).abs().max() <= 4 / 255 + 1e-6 and it.min() >= 0 and it.max() <= 1


def test_the_toolkits_own_pixel_limit_refuses_an_image_pil_would_accept(tmp_path):
    """Bug: the `max_pixels` check turned off (every bomb fixture was also over PIL's own limit, so PIL refused
    it first). An image far under PIL's limit, over the toolkit's, is refused by the toolkit's check."""
    import io

    from toolkit.data.images import ImageDecodeError, decode_image

    buf = io.BytesIO()
    Image.new("RGB", (300, 200)).save(buf, "PNG")
    assert decode_image(buf.getvalue(), "ok.png", max_pixels=60_000).size == (300, 200)
    with pytest.raises(ImageDecodeError, match="too large: 300x200 pixels exceeds the limit of 59999"):
        decode_image(buf.getvalue(), "big.png", max_pixels=59_999)


def test_a_server_whose_id_changes_after_a_failure_is_never_mixed_into_one_output():
    """Bug: the server-id re-check after a failure skipped (no test had a server whose id changes after one)."""
    from toolkit.serving import client as client_mod
    from toolkit.serving.client import ClientConfig, DetectClient, ServerChanged

    class Unavailable(Exception):
        def status(self):
            return "StatusCode.UNAVAILABLE"

    class FakeTriton:
        """First infer fails as a dying server does; afterwards a different server answers."""

        calls = 0
        server = "causal-deploy-toolkit/aaaa"

        def is_model_ready(self, model):
            return True

        def get_server_metadata(self):
            return type("M", (), {"name": FakeTriton.server})()

        def get_model_config(self, model):
            return type("C", (), {"config": type("K", (), {"max_batch_size": 8})()})()

        def infer(self, *a, **k):
            FakeTriton.calls += 1
            FakeTriton.server = "causal-deploy-toolkit/bbbb"  # restarted with another artifact
            raise Unavailable("server went away")

        def close(self):
            pass

    c = DetectClient(ClientConfig(url="grpc://127.0.0.1:1", retry_s=5))
    c._client = lambda: FakeTriton()
    c._reset = lambda: None
    assert c.connect() == "causal-deploy-toolkit/aaaa"
    pytest.importorskip("tritonclient.grpc")
    with pytest.raises(ServerChanged, match="came back running something else"):
        c.detect([b"x"])
    assert FakeTriton.calls == 1 and client_mod.MODEL == "detect"


def test_average_precision_is_the_hand_computed_value():
    """Bug: AP replaced by accuracy (no test asserted an AP value). Scores 0.9 (fake), 0.8 (real), 0.7 (fake),
    0.1 (real): precision at the two fakes is 1/1 and 2/3, so AP = (1 + 2/3) / 2 = 5/6; accuracy at 0.5 is 3/4."""
    from toolkit.evaluation import binary_metrics

    m = binary_metrics(np.array([1, 0, 1, 0]), np.array([0.9, 0.8, 0.7, 0.1]), 0.5)
    assert m["ap"] == pytest.approx(5 / 6) and m["acc"] == pytest.approx(3 / 4) and m["auc"] == pytest.approx(0.75)


def test_negative_pair_sums_saturate_at_minus_32768():
    """Bug: INT16_MIN -32768 -> -32767 (only positive saturation was pinned, and the test reference shared the
    module's constant). The arithmetic is written out here with its own constants: u = q + 128 in [0, 255],
    VPMADDUBSW adds the two products of a pair in int16 with saturation, the int32 sum is zero-point corrected."""
    from calibration.saturation import u8s8_reference

    lo, hi, offset = -(2**15), 2**15 - 1, 128
    q_act = np.array([[127, 127, 127, -128]])  # u = 255, 255, 255, 0
    q_w = np.array([[-128], [-128], [-100], [5]])  # pair 1: 255*-128*2 = -65280 -> -32768; pair 2: -25500
    u = q_act + offset
    pairs = [u[0, 0] * q_w[0, 0] + u[0, 1] * q_w[1, 0], u[0, 2] * q_w[2, 0] + u[0, 3] * q_w[3, 0]]
    expected = sum(min(max(p, lo), hi) for p in pairs) - offset * int(q_w.sum())
    assert pairs[0] < lo and expected == -32768 + (-25500) + 128 * 351
    assert u8s8_reference(q_act, q_w).item() == expected


def test_auto_never_picks_a_precision_whose_gate_has_since_failed(tmp_path, monkeypatch):
    """Bug: `resolve` dropping the re-check that a recorded precision's gate still passes (no record named a
    precision whose gate had failed since it was measured)."""
    from toolkit import tuning
    from toolkit.io import write_json

    class Art:
        def __init__(self):
            self.dir = tmp_path
            self.precisions = {"fp32": {}, "int8": {}}
            self.gates = {"fp32": {"passed": True}, "int8": {"passed": False}}  # int8 re-gated since: failed

    rec = tmp_path / "record.json"
    write_json(rec, {"batches": {"8": [
        {"engine": "onnxruntime", "precision": "int8", "throughput_ips": 900.0},
        {"engine": "openvino", "precision": "fp32", "throughput_ips": 500.0},
    ]}})  # fmt: skip
    monkeypatch.setattr(tuning, "record_path", lambda art: rec)
    (engine, precision, _), why = tuning.resolve(Art(), 8)
    assert (engine, precision) == ("openvino", "fp32") and "fastest gated choice" in why

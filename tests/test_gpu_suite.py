"""The GPU suite's CPU smoke mode runs in CI, so the script cannot rot before a GPU is lent."""

import json

from benchmarks.gpu_suite import main


def test_gpu_suite_smoke_on_cpu(tmp_path):
    main(["--device", "cpu", "--no-compile", "--iters", "1", "--out", str(tmp_path)])
    r = json.loads((tmp_path / "gpu_suite.json").read_text())
    v = r["models"][0]["variants"]["torch fp32"]
    assert v["parity"]["passed"] and v["parity"]["max_abs_logit"] == 0.0  # the same module on the same device
    assert set(v["throughput_ips"]) == {"1", "4"} and all(x > 0 for x in v["throughput_ips"].values())
    assert r["models"][0]["e2e"]["pil_in_process_ips"] > 0 and "ms_per_image" in r["purifier"]["fp32"]
    assert "| torch fp32 | pass |" in (tmp_path / "gpu_suite.md").read_text() and (tmp_path / "gpu_suite.png").is_file()

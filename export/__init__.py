"""PyTorch -> ONNX (fp32 / fp16) -> TensorRT plans, with verification gates.

Not built yet: this is the export issue's home (see README, "Status"). Nothing here is imported by the
toolkit core; `toolkit/cli` will wire it in.
"""

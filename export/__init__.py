"""PyTorch -> ONNX export with verification gates (fp32 so far; fp16 and TensorRT plans: see README Status)."""

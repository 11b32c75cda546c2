"""INT8 calibration: explicit Q/DQ ONNX from an image folder (quantize.py), accuracy report and gate (pipeline.py)."""

"""INT8 calibration: explicit Q/DQ ONNX from an image folder, accuracy report and gate.

Not built yet: this is the calibration issue's home (see README, "Status").
"""

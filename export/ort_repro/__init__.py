"""A minimal reproduction of an onnxruntime crash that the export works around in the graph (upstream report)."""

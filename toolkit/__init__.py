"""CausalCLIP detector + supervised diffusion purifier, from PyTorch training to verified deployment.

Heavy dependencies (torch, open_clip, onnxruntime) are imported inside the modules that need them,
so `import toolkit` and `toolkit --help` stay instant.
"""

__version__ = "0.1.0"

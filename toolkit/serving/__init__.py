"""Serving on NVIDIA Triton: the PyTriton server (server.py) that runs the one prediction path, its client
with bounded retries (client.py), and the writer of a native Triton model repository (repository.py)."""

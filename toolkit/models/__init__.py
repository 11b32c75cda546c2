"""Models: the frozen open_clip backbone, CausalCLIP (mask + head), the linear-probe baseline."""

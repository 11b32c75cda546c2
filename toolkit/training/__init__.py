"""Training loops: detector heads on cached CLIP features (the purifier arrives with its own issue)."""

"""raysl: self-supervised contrastive image pretraining sweeps on Ray."""

__version__ = "0.1.0"

"""The GPU host: CUDA or MPS; preferred for training (``jobs.training.gpu``)."""

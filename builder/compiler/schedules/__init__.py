"""Schedules: how compiled kernels use the machine. TVM's default CPU pipeline schedules
nothing (BERT-base ~150x slower than PyTorch); our rules are core product."""

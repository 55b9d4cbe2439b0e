"""Triton merge kernels for CUDA tensors: one file per method family, the magnitude selection
of task arithmetic / TIES in `select/` (its design note is that package's docstring), shared
helpers in `utils.py`, the launchers gathered in `ops.py`.

Importing this package imports triton; `mergefast.kernels` only does so when it sees a CUDA
tensor (or when tests run Triton under TRITON_INTERPRET=1 on CPU tensors).
"""

"""mergefast: fast, mergekit-compatible merging of pre-trained language models.

Importing this package never initialises CUDA.
"""

__version__ = "0.1.0"

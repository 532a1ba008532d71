"""prism-plugin: the PRISM post-training method as plugins for LLaMA-Factory and EasyR1.

Importing the package is cheap: submodules (``format``, ``advantage``, ``losses``,
``tiny`` …) are imported on demand.
"""

__version__ = "0.1.0"

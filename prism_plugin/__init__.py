"""prism-plugin: the PRISM post-training method as plugins for LLaMA-Factory and EasyR1.

Importing the package is cheap: submodules (``layout``, ``advantage``, ``losses``, ``tiny`` …) are imported
on demand. Modules that moved keep their old import paths (:data:`MOVED_MODULES`): the old name is the new
module itself.
"""

import sys

__version__ = "0.1.0"

# old import path -> where the module lives now
MOVED_MODULES = {
    "prism_plugin.format": "prism_plugin.segment_split",
    "prism_plugin.discriminator.scorer": "prism_plugin.discriminator.rollout_scorer",
    "prism_plugin.discriminator.scoring": "prism_plugin.discriminator.segment_forward",
    "prism_plugin.discriminator.texts": "prism_plugin.discriminator.rendering",
    "prism_plugin.llamafactory.workflow": "prism_plugin.llamafactory.stages",
    "prism_plugin.llamafactory.arguments": "prism_plugin.arguments",
    "prism_plugin.llamafactory.align_workflow": "prism_plugin.llamafactory.align.workflow",
    "prism_plugin.llamafactory.align_trainer": "prism_plugin.llamafactory.align.trainer",
    "prism_plugin.llamafactory.align_data": "prism_plugin.llamafactory.align.data",
    "prism_plugin.llamafactory.disc_workflow": "prism_plugin.llamafactory.disc.workflow",
    "prism_plugin.llamafactory.disc_trainer": "prism_plugin.llamafactory.disc.trainer",
    "prism_plugin.llamafactory.pairs": "prism_plugin.llamafactory.disc.data",
}


class _MovedModules:
    """Imports an old path of :data:`MOVED_MODULES` as the module at its new path (a meta path finder and
    loader; plain classes, so that ``import prism_plugin`` at interpreter start-up stays cheap)."""

    def find_spec(self, name, path=None, target=None):  # noqa: ANN001, ANN201 (the finder protocol)
        if name not in MOVED_MODULES:
            return None
        from importlib.machinery import ModuleSpec

        return ModuleSpec(name, self)

    def create_module(self, spec):  # noqa: ANN001, ANN201
        import importlib

        return importlib.import_module(MOVED_MODULES[spec.name])

    def exec_module(self, module) -> None:  # noqa: ANN001
        """Nothing to run: the module at the new path has run already."""


if not any(isinstance(finder, _MovedModules) for finder in sys.meta_path):
    sys.meta_path.append(_MovedModules())

"""Interpreter start-up hook: patch LLaMA-Factory's modules as they are imported.

LLaMA-Factory has no plugin discovery, so ``prism_plugin_hook.pth`` (installed at the
site-packages root) calls :func:`install` in every interpreter, torchrun workers included.
It only appends a finder to ``sys.meta_path``; the patches themselves
(:mod:`prism_plugin.llamafactory.patches`) load when LLaMA-Factory's own modules do.
Kept import-free (``sys`` and ``os`` only) and exception-safe; ``PRISM_PLUGIN_DISABLE=1``
turns it off.

It speaks only about LLaMA-Factory, and at most one line per process: where LLaMA-Factory is not
installed (EasyR1's environment) it prints nothing, and registering the discriminator with
transformers' Auto classes never prints (a failure there is kept in :data:`failed`;
``import prism_plugin.discriminator`` raises it). Where LLaMA-Factory's internals differ from the
supported version, one line names the supported version(s) and stock LLaMA-Factory stays untouched.
"""

import os
import sys

DISABLE_ENV = "PRISM_PLUGIN_DISABLE"

# module imported by LLaMA-Factory -> function in prism_plugin.llamafactory.patches run right after it
TARGETS = {
    "llamafactory.hparams.parser": "patch_parser",
    "llamafactory.train.tuner": "patch_tuner",
    "llamafactory.data.template": "patch_template",
    "llamafactory.webui.interface": "patch_board",  # LlamaBoard: the PRISM stages in the Train tab
    # AutoConfig / AutoModel know the PRISM discriminator in every process, no trust_remote_code
    "transformers.models.auto.modeling_auto": "register_discriminator",
}

fired: list = []  # target modules patched in this interpreter, in order (tests and `doctor` read it)
failed: list = []  # (module, error) for patches that could not be applied
reported: list = []  # the one line this interpreter printed, if any


def report(message):
    """Print ``message`` to stderr unless this interpreter already printed one (one line per process)."""
    if not reported:
        reported.append(message)
        sys.stderr.write(message + "\n")


def _apply(patch_name, module):
    """Run one patch; a failure is recorded (and, for LLaMA-Factory, reported) and leaves stock code working."""
    is_llamafactory = module.__name__.split(".")[0] == "llamafactory"
    try:
        from prism_plugin.llamafactory import patches

        getattr(patches, patch_name)(module)
        fired.append(module.__name__)
        if is_llamafactory:
            note = patches.untested_version_note()
            if note:
                report(note)
    except Exception as exc:
        failed.append((module.__name__, repr(exc)))
        if is_llamafactory:
            report(f"prism-plugin: PRISM stages unavailable: {_with_versions(module.__name__, exc)}")


def _with_versions(name, exc):
    """``exc`` as one line that names the supported LLaMA-Factory versions."""
    text = " ".join(str(exc).split())
    if "llamafactory==" in text:  # UnsupportedLlamaFactoryError names them already
        return text
    try:
        from prism_plugin.llamafactory.patches import supported_versions

        supported = supported_versions()
    except Exception:
        supported = "the pinned llamafactory"
    return f"patching {name} failed ({text}); prism-plugin supports {supported}"


class _PatchingLoader:
    """Runs the real loader, then the patch for that module."""

    def __init__(self, loader, patch_name):
        self._loader = loader
        self._patch_name = patch_name

    def create_module(self, spec):
        create = getattr(self._loader, "create_module", None)
        return create(spec) if create is not None else None

    def exec_module(self, module):
        self._loader.exec_module(module)
        _apply(self._patch_name, module)

    def __getattr__(self, name):
        return getattr(self._loader, name)


class PrismFinder:
    """A ``sys.meta_path`` finder that wraps the loaders of the target modules only."""

    def find_spec(self, fullname, path=None, target=None):
        patch_name = TARGETS.get(fullname)
        if patch_name is None:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                if spec.loader is not None:
                    spec.loader = _PatchingLoader(spec.loader, patch_name)
                return spec
        return None


def install() -> bool:
    """Add the finder once per interpreter; returns whether it is active."""
    try:
        if os.environ.get(DISABLE_ENV, "").lower() in ("1", "true", "yes"):
            return False
        if any(isinstance(f, PrismFinder) for f in sys.meta_path):
            return True
        already = [name for name in TARGETS if name in sys.modules]
        for name in already:  # imported before the hook: patch in place
            _apply(TARGETS[name], sys.modules[name])
        sys.meta_path.insert(0, PrismFinder())  # ahead of PathFinder, which would answer first
        return True
    except Exception as exc:  # never break the interpreter's start-up
        sys.stderr.write(f"prism-plugin: start-up hook not installed: {exc!r}\n")
        return False

"""Whether a row's image decodes: checked once, where the row parser resolves the image, for every reader.

A file that exists but does not decode (truncated, corrupt, not an image at all) would otherwise stop a run
wherever the image is first opened — inside LLaMA-Factory's multimodal plugin at start-up, or halfway through
an evaluation — as a raw ``OSError``. Decoding it in the row parser turns it into a
:class:`~prism_plugin.errors.DatasetRowError` naming file, row and field, which the readers stop on or, with
``skip_invalid``, skip and count like any other bad row.

Cost: one full decode (``PIL.Image.load``) per distinct image, not per row; results are remembered for the
process (paths by path, size and modification time; embedded bytes by content hash, without keeping the
bytes). A decode takes milliseconds: measured on one core, about 5 ms for a 1024×1024 JPEG and 13 ms for a
1024×1024 PNG of a photo, so a data set with 100 000 distinct images of that size spends roughly 10 to 20
minutes in this check, once, when it is read (each process that reads it pays it: every rank of a run).
"""

from __future__ import annotations

import hashlib
import io
import os
from collections import OrderedDict

_REMEMBERED = 1 << 16
_checked: OrderedDict[tuple, str | None] = OrderedDict()


def decode_problem(image: str | bytes) -> str | None:
    """Why ``image`` (an existing file's path, or an encoded image's bytes) does not decode, as words that
    follow the image's name (``does not decode: image file is truncated``), or None when it decodes.
    Remembers the answer per distinct image (see the module docstring for the cost)."""
    if isinstance(image, bytes):
        key: tuple = ("bytes", hashlib.sha1(image).digest())
    else:
        stat = os.stat(image)
        key = ("path", image, stat.st_size, stat.st_mtime_ns)
    if key in _checked:
        _checked.move_to_end(key)
        return _checked[key]
    problem = _decode(io.BytesIO(image) if isinstance(image, bytes) else image)
    _checked[key] = problem
    if len(_checked) > _REMEMBERED:
        _checked.popitem(last=False)
    return problem


def _decode(source: str | io.BytesIO) -> str | None:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(source) as handle:
            handle.load()
    except UnidentifiedImageError:
        return "is not an image file (PIL cannot identify its format)"
    except Image.DecompressionBombError as exc:
        return f"is too large to decode: {exc}"
    except (OSError, ValueError, SyntaxError, EOFError) as exc:  # what PIL's decoders raise on corrupt data
        return f"does not decode: {exc}"
    return None

"""Images of dataset rows on their way out: written to disk once (rows name them by absolute path), or
inlined as ``data:`` URLs (requests to a chat-completions API).

Rows hand images on as :data:`prism_plugin.data.records.ImageRef`: an absolute path, or the encoded
file's bytes (``{"bytes": …}`` columns).
"""

from __future__ import annotations

import base64
import hashlib
import io
from collections.abc import Iterable
from pathlib import Path

from prism_plugin.data.records import DatasetRowError, ImageRef

# Formats sent as they are; any other is re-encoded as PNG. PNG and JPEG are what every OpenAI-compatible
# server we know decodes from a data URL (LLaMA-Factory's API takes png/jpg/jpeg/gif/bmp, OpenAI's png/jpeg/
# gif/webp).
_INLINE_FORMATS = {"PNG": "image/png", "JPEG": "image/jpeg"}


def image_paths(images: Iterable[ImageRef], image_dir: Path) -> list[str]:
    """Image references for a written row: absolute paths as they are; embedded bytes written once, by content
    hash, into ``image_dir`` and referenced by absolute path."""
    from PIL import Image

    paths = []
    for image in images:
        if isinstance(image, bytes):
            with Image.open(io.BytesIO(image)) as handle:
                suffix = (handle.format or "png").lower()
            target = image_dir / f"{hashlib.sha1(image).hexdigest()}.{suffix}"
            if not target.is_file():
                image_dir.mkdir(parents=True, exist_ok=True)
                target.write_bytes(image)
            paths.append(str(target.resolve()))
        else:
            paths.append(str(image))
    return paths


def data_url(image: ImageRef) -> str:
    """``data:image/…;base64,…`` for an image path or bytes: PNG and JPEG files as they are, other formats
    re-encoded as PNG. An unreadable image is a :class:`DatasetRowError` (reason ``missing_image``)."""
    from PIL import Image, UnidentifiedImageError

    try:
        data = image if isinstance(image, bytes) else Path(image).read_bytes()
        with Image.open(io.BytesIO(data)) as handle:
            mime = _INLINE_FORMATS.get(handle.format or "")
            if mime is None:
                buffer = io.BytesIO()
                handle.save(buffer, format="PNG")
                data, mime = buffer.getvalue(), "image/png"
    except (OSError, UnidentifiedImageError) as exc:
        where = "<bytes>" if isinstance(image, bytes) else str(image)
        raise DatasetRowError(None, None, "images", f"cannot read image {where}: {exc}", "missing_image") from exc
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"

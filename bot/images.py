"""Inbound images made fit for a vision model: decoded, turned upright, downscaled, re-encoded.

A phone photo is 12 megapixels and several megabytes; a vision model sees about a megapixel at
most and pays prompt tokens for every pixel it is sent, so the image is shrunk to `max_side`
before it goes anywhere. Re-encoding also drops every piece of metadata (EXIF can carry the
place a photo was taken). Decoding is CPU work: it runs in a worker thread, never on the loop.
"""

from __future__ import annotations

import asyncio
import io
import logging
import warnings

from PIL import Image, ImageOps, UnidentifiedImageError

from bot.errors import ImageTooLarge, ImageUnreadable
from bot.events import ImageAttachment
from bot.providers.base import ImagePart

log = logging.getLogger(__name__)

# Pixels a file may declare before it is refused undecoded: a few kilobytes of PNG can claim
# gigapixels (a decompression bomb). Well above any camera's output.
MAX_PIXELS = 80_000_000
JPEG_QUALITY = 85


async def fetch_and_prepare(image: ImageAttachment, max_bytes: int, max_side: int) -> ImagePart:
    """The attachment as the model gets it; ImageTooLarge or ImageUnreadable when it cannot be.

    The size the platform reported is checked before the download, and the bytes again after
    it (a platform may not say, or say wrong).
    """
    if image.size is not None and image.size > max_bytes:
        raise ImageTooLarge(f"{image.size} bytes, over images.max_bytes ({max_bytes})")
    data = await image.fetch()
    if len(data) > max_bytes:
        raise ImageTooLarge(f"{len(data)} bytes downloaded, over images.max_bytes ({max_bytes})")
    return await prepare(data, max_side)


async def prepare(data: bytes, max_side: int) -> ImagePart:
    """Decode, downscale and re-encode off the event loop."""
    return await asyncio.to_thread(downscale, data, max_side)


def downscale(data: bytes, max_side: int) -> ImagePart:
    """The image with its longest side at most `max_side` pixels, as JPEG (or PNG when it has
    transparency), upright and without metadata. Animated images keep their first frame."""
    try:
        with warnings.catch_warnings():
            # Pillow warns (and only warns) between its own limit and twice that; ours is firmer.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as opened:
                if opened.width * opened.height > MAX_PIXELS:
                    raise ImageTooLarge(f"{opened.width}x{opened.height} pixels")
                # A JPEG can be decoded straight at a fraction of its size: much less work.
                opened.draft("RGB", (max_side, max_side))
                opened.load()
                # Phones store the camera's orientation in EXIF rather than turning the pixels;
                # the EXIF goes, so the turn is applied first.
                image = ImageOps.exif_transpose(opened)
                image.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
                return _encode(image)
    except ImageTooLarge:
        raise
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError,
            ValueError, EOFError) as exc:
        # Pillow reports a damaged file in several ways depending on the format and where the
        # damage is; each is the same thing here.
        raise ImageUnreadable(f"{type(exc).__name__}: {exc}") from exc


def _encode(image: Image.Image) -> ImagePart:
    out = io.BytesIO()
    if _has_alpha(image):
        # JPEG has no transparency; flattening it onto black would lose what is drawn on it.
        image.convert("RGBA").save(out, format="PNG", optimize=True)
        return ImagePart(out.getvalue(), "image/png")
    # Nothing but the pixels is passed on: no exif, icc_profile or comment is given to save().
    image.convert("RGB").save(out, format="JPEG", quality=JPEG_QUALITY, optimize=True)
    return ImagePart(out.getvalue(), "image/jpeg")


def _has_alpha(image: Image.Image) -> bool:
    return image.mode in ("RGBA", "LA", "PA") or (image.mode == "P"
                                                  and "transparency" in image.info)

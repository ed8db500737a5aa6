"""`image_to_ndarray`: an image file from a multipart form, as a numpy array.

The pixel count is checked from the image header before any pixel is decoded, so a small
file that would expand into gigabytes (a decompression bomb) costs nothing.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import File

from asgiserve.adapters.body import invalid, require

if TYPE_CHECKING:
    from numpy.typing import NDArray

# The largest image `image_to_ndarray` decodes, in pixels (width x height). Read on every
# call, so setting it at start-up applies to every route; `image_adapter(max_pixels=...)`
# makes an adapter with a limit of its own.
MAX_IMAGE_PIXELS = 50_000_000

LOC = ("body", "img")


def decode_image(data: bytes, max_pixels: int) -> NDArray[Any]:
    """Bytes of any format PIL reads to an array (height, width[, channels])."""
    pil = require("PIL.Image", "image")
    np = require("numpy", "image")
    try:
        image = pil.open(io.BytesIO(data))
    except pil.DecompressionBombError as exc:
        raise invalid(LOC, f"image too large: {exc}", "image_too_large") from None
    except pil.UnidentifiedImageError:
        raise invalid(
            LOC, "not an image: PIL cannot identify the file's format", "image_invalid"
        ) from None
    except Exception as exc:  # PIL's other reader errors
        raise invalid(LOC, f"not an image PIL can read: {exc}", "image_invalid") from None
    with image:
        width, height = image.size
        if width * height > max_pixels:
            raise invalid(
                LOC,
                f"image too large: {width} x {height} = {width * height} pixels, "
                f"the limit is {max_pixels}",
                "image_too_large",
            )
        try:
            image.load()
        except Exception as exc:  # truncated or corrupt pixel data
            raise invalid(LOC, f"could not decode the image: {exc}", "image_invalid") from None
        result: NDArray[Any] = np.asarray(image)
        return result


ImageFile = Annotated[bytes, File(description="An image file in any format PIL reads.")]


def image_to_ndarray(img: ImageFile) -> NDArray[Any]:
    """Accepts a PIL-readable file from an HTTP form and convert it to a numpy array.

    A plain `def`: FastAPI runs it in a worker thread, as decoding is CPU work.
    """
    return decode_image(img, MAX_IMAGE_PIXELS)


def image_adapter(*, max_pixels: int) -> Callable[[bytes], NDArray[Any]]:
    """`image_to_ndarray` with a pixel limit of its own instead of `MAX_IMAGE_PIXELS`."""

    def image_to_ndarray(img: ImageFile) -> NDArray[Any]:
        return decode_image(img, max_pixels)

    image_to_ndarray.__doc__ = f"An image of at most {max_pixels} pixels as a numpy array."
    return image_to_ndarray

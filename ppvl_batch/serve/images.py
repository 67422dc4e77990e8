"""Images of a request: URL (data:, file://, http(s)) -> bytes -> checked RGB image."""

import asyncio
import base64
import binascii
import io
from pathlib import Path
from urllib.parse import unquote, urlparse

from PIL import Image

from ..documents.images import IMAGE_FORMATS, to_rgb
from .requests import ApiError, ServeOptions, bad_request


def decode_data_url(url: str, param: str) -> bytes:
    header, comma, payload = url.partition(",")
    if not comma or not header.endswith(";base64"):
        raise bad_request("only base64 data URLs are accepted (data:image/png;base64,...)", "invalid_image_url", param)
    try:
        return base64.b64decode("".join(payload.split()), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise bad_request(f"invalid base64 in the data URL: {exc}", "invalid_base64", param) from exc


def read_allowed_file(url: str, root: Path | None, limit: int, param: str) -> bytes:
    """Bytes of a file:// URL below `root` (symlinks resolved first, so a link cannot lead out)."""
    if root is None:
        raise bad_request("file:// URLs are disabled on this server (start it with --allow-files DIR)",
                          "file_urls_disabled", param)
    parsed = urlparse(url)
    shown = unquote(parsed.path)
    if parsed.netloc not in ("", "localhost"):
        raise bad_request("file:// URLs must name a local path", "invalid_image_url", param)
    try:
        path = Path(shown).resolve(strict=True)
    except (OSError, RuntimeError):
        raise bad_request(f"no such file: {shown}", "file_not_found", param) from None
    if not path.is_relative_to(root.resolve()):
        raise ApiError(403, f"{shown} is outside the folder this server may read", code="file_not_allowed", param=param)
    if not path.is_file():  # a folder, or a device or pipe that could be read forever
        raise bad_request(f"{shown} is not a regular file", "file_not_found", param)
    try:
        with open(path, "rb") as f:
            data = f.read(limit + 1)
    except OSError as exc:
        raise bad_request(f"cannot read {shown}: {exc.strerror or exc}", "file_unreadable", param) from exc
    if len(data) > limit:
        raise ApiError(413, f"the file is larger than {limit} bytes", code="image_too_large", param=param)
    return data


async def fetch_remote(url: str, options: ServeOptions, param: str) -> bytes:
    import httpx

    if not options.allow_remote_images:
        raise bad_request("http(s) image URLs are disabled on this server (start it with --allow-remote-images), "
                          "send the image as a data: URL", "remote_images_disabled", param)
    try:
        async with (
            httpx.AsyncClient(follow_redirects=True, timeout=options.remote_timeout) as client,
            client.stream("GET", url) as response,
        ):
            if response.status_code != 200:
                raise bad_request(f"fetching the image gave HTTP {response.status_code}", "image_fetch_failed", param)
            data = bytearray()
            async for chunk in response.aiter_bytes():
                data += chunk
                if len(data) > options.max_body_bytes:
                    raise ApiError(413, f"the image is larger than {options.max_body_bytes} bytes",
                                   code="image_too_large", param=param)
            return bytes(data)
    except httpx.HTTPError as exc:
        raise bad_request(f"cannot fetch the image: {exc}", "image_fetch_failed", param) from exc


def decode_image(data: bytes, max_pixels: int, param: str) -> Image.Image:
    """RGB image from encoded bytes. The pixel count is checked from the header before any pixel
    is decoded (decompression bombs); only the formats `scan` reads are tried (PIL's others
    include some that run external programs)."""
    Image.init()
    try:
        image = Image.open(io.BytesIO(data), formats=[f for f in sorted(IMAGE_FORMATS) if f in Image.OPEN])
    except Image.DecompressionBombError as exc:
        raise bad_request(f"image too large: {exc}", "image_too_large", param) from exc
    except Exception as exc:  # Pillow's parsers raise many types on hostile bytes; all mean "not an image"
        raise bad_request("the data is not a PNG, JPEG, TIFF, WebP, BMP or GIF image", "invalid_image", param) from exc
    if image.width * image.height > max_pixels:
        raise bad_request(f"image is {image.width}x{image.height} pixels; this server accepts at most {max_pixels}",
                          "image_too_large", param)
    try:
        image.load()
        return to_rgb(image)
    except Exception as exc:  # as above: struct.error, IndexError, ... from damaged data
        raise bad_request(f"the image data is truncated or corrupt: {exc}", "invalid_image", param) from exc


async def load_image(url: str, param: str, options: ServeOptions) -> Image.Image:
    scheme = url.split(":", 1)[0].lower() if ":" in url else ""
    if scheme == "data":
        data = decode_data_url(url, param)
    elif scheme == "file":
        data = await asyncio.to_thread(read_allowed_file, url, options.allow_files, options.max_body_bytes, param)
    elif scheme in ("http", "https"):
        data = await fetch_remote(url, options, param)
    else:
        raise bad_request("image URLs must be data:, file:// or http(s) URLs", "invalid_image_url", param)
    return await asyncio.to_thread(decode_image, data, options.max_image_pixels, param)

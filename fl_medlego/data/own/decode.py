"""One image file of a hospital's own dataset decoded to display intensities, then to a square uint8 array.

What a file becomes (the project's behaviour; other modules and the node cache rely on it):

- PNG, JPEG and BMP are read with Pillow; TIFF with tifffile (16-bit and float TIFFs), falling back to Pillow
  for colour models tifffile leaves raw (palette, CMYK, YCbCr) or files it cannot read. Palette, LA and RGBA
  images become RGB (alpha dropped). A Pillow file with several frames (an MPO photo) gives its first one.
- 8-bit images keep their intensities exactly: uint8 in, the same uint8 out when no resize is needed (MedMNIST
  exports round-trip bit for bit).
- Any other integer or float image without a window (16-bit PNG or TIFF, float TIFF) is scaled per image,
  min-max to [0, 255]: its darkest pixel becomes 0 and its brightest 255; a constant image becomes 0, and
  non-finite values become 0. Colour images with more than 8 bits are scaled over all channels together.
- DICOM is read with pydicom in `dicom` (see there: modality LUT, VOI LUT or window, MONOCHROME1 inverted).
  A multi-frame DICOM (or multi-page TIFF) is refused unless a 0-based `frame` names one frame.
- Resizing squashes the image to `size` x `size` (aspect ratio not kept, as MedMNIST's preprocessing) with
  Pillow's antialiased bilinear filter on float32 channels, then rounds with np.rint and clips to [0, 255].
- Grey -> RGB repeats the grey; RGB -> grey is ITU-R 601 luma exactly as Pillow's convert("L") computes it.

Any file that cannot be read is an `UnreadableImage` (a `UserError`) naming the file as the user wrote it
(relative to the dataset root), why, and the fix; no library exception escapes. Pillow's decompression-bomb
limit (`Image.MAX_IMAGE_PIXELS`, refused above twice it) guards the DICOM and tifffile readers too.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tifffile
from PIL import Image

from ...errors import UserError

DICOM_SUFFIXES = frozenset({".dcm", ".dicom"})
IMAGE_SUFFIXES: frozenset[str] = frozenset({".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"}) | DICOM_SUFFIXES
REEXPORT = "re-export the file or remove it from the dataset"
_TIFF_SUFFIXES = frozenset({".tif", ".tiff"})
_TIFF_PHOTOMETRICS = frozenset({0, 1, 2})  # MINISWHITE, MINISBLACK, RGB: what tifffile returns as pixels
_GREY_MODES = frozenset({"1", "L", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"})  # Pillow modes read as grey
_MAX_REASON = 160


class UnreadableImage(UserError):
    """A file of the dataset that cannot be decoded; the message names the file, the reason and the fix."""

    def __init__(self, path: str, reason: str, fix: str) -> None:
        self.path, self.reason, self.fix = path, reason, fix
        super().__init__(f"{path}: {reason}: {fix}")

    def __reduce__(self) -> tuple[type, tuple[str, str, str]]:  # keeps the fields when pickled (worker pools)
        return type(self), (self.path, self.reason, self.fix)


def is_dicom(path: Path) -> bool:
    """True for a .dcm / .dicom file, or a file with a non-image suffix (none, or a UID-like '.320') that
    starts with DICOM's 128-byte preamble and b"DICM"."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in DICOM_SUFFIXES:
        return True
    if suffix in IMAGE_SUFFIXES:
        return False
    try:
        with path.open("rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:] == b"DICM"


def is_image_file(path: Path) -> bool:
    """True for a file this module decodes: a known image suffix, or a DICOM file without one."""
    return Path(path).suffix.lower() in IMAGE_SUFFIXES or is_dicom(path)


def read_pixels(path: Path, frame: int | None = None, *, label: str | None = None) -> np.ndarray:
    """The file's display intensities in [0, 255]: float32 (H, W) for grey, (H, W, 3) for colour.

    `frame` picks one frame (0-based) of a multi-frame file; `label` is the name errors give the file.
    """
    path = Path(path)
    name = str(path) if label is None else label
    if not path.is_file():
        raise UnreadableImage(name, "no such file", "check the path or remove it from the dataset")
    if frame is not None and frame < 0:
        raise UnreadableImage(name, f"frame {frame} is negative", "frames are numbered from 0")
    suffix = path.suffix.lower()
    if is_dicom(path):
        from .dicom import read_dicom  # pydicom is imported only when a dataset has DICOM files

        return read_dicom(path, frame, name)
    if suffix not in IMAGE_SUFFIXES:
        known = ", ".join(sorted(IMAGE_SUFFIXES))
        raise UnreadableImage(name, f"unknown image type {suffix or '(no suffix)'!r}",
                              f"export it as one of {known} or remove it from the dataset")
    if suffix in _TIFF_SUFFIXES:
        try:
            pixels = _read_tiff(path, frame, name)
        except UnreadableImage:
            raise
        except Exception as err:  # tifffile could not: Pillow may (LZW without imagecodecs, old JPEG TIFFs)
            return _read_pillow(path, frame, name, first_error=err)
        if pixels is not None:
            return pixels
    return _read_pillow(path, frame, name)


def peek_channels(path: Path, *, label: str | None = None) -> int:
    """The channel count `read_pixels` gives the file (1 grey, 3 colour), read from its header only."""
    path = Path(path)
    name = str(path) if label is None else label
    if is_dicom(path):
        from .dicom import dicom_channels  # outside the try: a reader that is not installed is not the file's fault

        peek = dicom_channels
    else:
        peek = _image_channels
    try:
        return peek(path)
    except Exception as err:  # the same wide set of library errors as the readers below
        raise _unreadable(err, path, name) from err


def _image_channels(path: Path) -> int:
    """A TIFF's or Pillow image's channel count from its header."""
    if path.suffix.lower() in _TIFF_SUFFIXES:
        with tifffile.TiffFile(path) as tif:
            page = tif.pages[0]
            if int(page.photometric) in _TIFF_PHOTOMETRICS:
                return 3 if page.samplesperpixel >= 3 else 1
    with Image.open(path) as image:
        return 1 if image.mode in _GREY_MODES else 3


def to_uint8_resized(pixels: np.ndarray, size: int) -> np.ndarray:
    """uint8 (size, size, C), C = 1 for grey and 3 for colour; resized (antialiased bilinear, aspect ratio not
    kept) only when (H, W) differs, so an image already at `size` keeps its rounded values exactly."""
    if size < 1:
        raise ValueError(f"size must be at least 1, not {size}")
    arr = np.asarray(pixels, dtype=np.float32)
    arr = arr[..., None] if arr.ndim == 2 else arr
    if arr.ndim != 3 or arr.shape[2] not in (1, 3):
        raise ValueError(f"pixels must be (H, W) or (H, W, 3), not {np.shape(pixels)}")
    if arr.shape[:2] != (size, size):
        arr = np.stack([_resize_channel(arr[..., c], size) for c in range(arr.shape[2])], axis=-1)
    return np.clip(np.rint(arr), 0, 255).astype(np.uint8)


def decode_image(path: Path, size: int, channels: int, frame: int | None = None,
                 label: str | None = None) -> np.ndarray:
    """uint8 (size, size, channels) for a model: read, squashed to a square, converted to 1 or 3 channels.

    `label` is the path the errors name (the path relative to the dataset root).
    """
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, not {channels}")
    image = to_uint8_resized(read_pixels(path, frame, label=label), size)
    if channels == 3 and image.shape[2] == 1:
        return np.repeat(image, 3, axis=2)
    if channels == 1 and image.shape[2] == 3:
        return _luma(image)
    return image


def _resize_channel(channel: np.ndarray, size: int) -> np.ndarray:
    """One float32 channel resized by Pillow in mode "F" (bilinear; Pillow widens the filter when shrinking,
    so a downscale averages rather than aliases)."""
    image = Image.fromarray(np.ascontiguousarray(channel, dtype=np.float32))
    return np.asarray(image.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=None), dtype=np.float32)


def _luma(rgb: np.ndarray) -> np.ndarray:
    """(H, W, 1) ITU-R 601 luma of uint8 RGB with Pillow's integer arithmetic, so it equals convert("L")."""
    r, g, b = (rgb[..., c].astype(np.uint32) for c in range(3))
    return ((r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16).astype(np.uint8)[..., None]


def _min_max(values: np.ndarray) -> np.ndarray:
    """float32 values scaled so the image's finite minimum is 0 and its maximum 255; constant -> all 0."""
    values = np.asarray(values, dtype=np.float64)
    finite = np.isfinite(values)
    if not finite.any():
        return np.zeros(values.shape, np.float32)
    lo, hi = values[finite].min(), values[finite].max()
    if hi <= lo:
        return np.zeros(values.shape, np.float32)
    return np.where(finite, (values - lo) / (hi - lo) * 255.0, 0.0).astype(np.float32)


def _to_display(values: np.ndarray) -> np.ndarray:
    """uint8 kept exactly, bool as 0 / 255, any other integer or float image min-max to [0, 255]."""
    if values.dtype == np.uint8:
        return values.astype(np.float32)
    if values.dtype == np.bool_:
        return values.astype(np.float32) * 255.0
    return _min_max(values)


def _colour_or_grey(arr: np.ndarray) -> np.ndarray:
    """(H, W, S) samples to grey (H, W) or RGB (H, W, 3): alpha and extra samples dropped."""
    if arr.ndim == 3:
        return arr[..., :3] if arr.shape[2] >= 3 else arr[..., 0]
    return arr


def _short(err: BaseException, path: Path, name: str) -> str:
    """A library's message on one short line, with the absolute path replaced by the user's name for it."""
    text = str(err).strip().replace(str(path), name)
    text = text.splitlines()[0].rstrip(" .:") if text else type(err).__name__
    return text if len(text) <= _MAX_REASON else text[: _MAX_REASON - 3] + "..."


def _unreadable(err: BaseException, path: Path, name: str) -> UnreadableImage:
    return UnreadableImage(name, _short(err, path, name), REEXPORT)


def _check_pixels(name: str, count: int) -> None:
    """Refuse what Pillow would refuse as a decompression bomb (more than twice MAX_IMAGE_PIXELS)."""
    limit = Image.MAX_IMAGE_PIXELS
    if limit is not None and count > 2 * limit:
        raise UnreadableImage(name, f"{count} pixels exceed the limit of {2 * limit} (a possible decompression "
                              "bomb)", "export it smaller or remove it from the dataset")


def _frame_index(name: str, frames: int, frame: int | None) -> int | None:
    """The frame to decode (None: the file's only frame), refusing a multi-frame file without `frame`."""
    if frame is None or (frames == 1 and frame == 0):
        if frames > 1:
            raise UnreadableImage(name, f"it has {frames} frames",
                                  "register it with --frame K to use one frame, or export single frames")
        return None
    if frame >= frames:
        raise UnreadableImage(name, f"frame {frame} does not exist (it has {frames}, numbered from 0)",
                              f"register it with --frame K for K from 0 to {frames - 1}")
    return frame


def _read_pillow(path: Path, frame: int | None, name: str, first_error: BaseException | None = None) -> np.ndarray:
    """PNG / JPEG / BMP (and TIFFs tifffile leaves to it) through Pillow, converted to L, RGB or a wide mode."""
    # Pillow raises OSError, UnidentifiedImageError, DecompressionBombError, ValueError, EOFError, SyntaxError
    # and more on bad files; all of them are the file's problem here.
    try:
        with Image.open(path) as image:
            frames = getattr(image, "n_frames", 1)
            if frame is not None:
                index = _frame_index(name, frames, frame)
                image.seek(index or 0)
            image.load()
            if image.mode in _GREY_MODES or image.mode == "RGB":
                arr = np.asarray(image)
            else:  # palette, alpha and other colour models: RGB, alpha dropped
                arr = np.asarray(image.convert("RGB"))
    except UnreadableImage:
        raise
    except Exception as err:
        raise _unreadable(first_error or err, path, name) from err
    return _to_display(arr)


def _read_tiff(path: Path, frame: int | None, name: str) -> np.ndarray | None:
    """A TIFF through tifffile (any bit depth), or None when its colour model is Pillow's to convert."""
    with tifffile.TiffFile(path) as tif:
        photometric = int(tif.pages[0].photometric)
        if photometric not in _TIFF_PHOTOMETRICS:
            return None
        series = tif.series[0]
        axes, shape = series.axes, series.shape
        _check_pixels(name, int(np.prod(shape)) // max(1, dict(zip(axes, shape)).get("S", 1)))
        arr = series.asarray()
    if "S" in axes:
        arr = np.moveaxis(arr, axes.index("S"), -1)
        axes = axes.replace("S", "") + "S"
    plane = "YXS" if axes.endswith("S") else "YX"  # the axes of one frame; any before them count frames
    if not axes.endswith(plane):
        return None
    arr = arr.reshape((-1, *arr.shape[-len(plane):]))
    index = _frame_index(name, arr.shape[0], frame)
    pixels = _to_display(_colour_or_grey(arr[index or 0]))
    return 255.0 - pixels if photometric == 0 else pixels

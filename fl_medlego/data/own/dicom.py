"""A DICOM file's pixels for display, with pydicom (compressed transfer syntaxes through pylibjpeg when installed).

Monochrome pixels get the modality LUT (RescaleSlope / RescaleIntercept), then the first VOI LUT or window
centre / width where present, mapped linearly from the window's output range to [0, 255]. Without one, an
8-bit unsigned image with slope 1 and intercept 0 is kept exactly as stored, anything else is scaled min-max.
MONOCHROME1 is inverted (255 - value) after that. RGB, YBR_* (converted to RGB) and palette-colour DICOMs are
colour. A file without pixel data (a structured report), a multi-frame file without a chosen frame, and a
transfer syntax without an installed decoder are each an `UnreadableImage` naming the file and the fix.

`decode.read_pixels` calls `read_dicom` for DICOM files; this module is imported only when one is read.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi, apply_voi_lut, get_decoder
from pydicom.pixels.decoders.base import Decoder
from pydicom.pixels.processing import apply_windowing, convert_color_space
from pydicom.uid import UID

from .decode import (
    REEXPORT,
    UnreadableImage,
    _check_pixels,
    _colour_or_grey,
    _frame_index,
    _min_max,
    _to_display,
    _unreadable,
)

_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")


def dicom_channels(path: Path) -> int:
    """The channel count `read_dicom` gives the file (1 monochrome, 3 colour), from its header alone."""
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    return 1 if str(ds.get("PhotometricInterpretation", "")).upper().startswith("MONOCHROME") else 3


def read_dicom(path: Path, frame: int | None, name: str) -> np.ndarray:
    """A DICOM file's pixels for display: colour as RGB, monochrome through modality LUT, VOI and MONOCHROME1."""
    # pydicom raises InvalidDicomError, AttributeError, KeyError, ValueError, TypeError, RuntimeError ...
    # on malformed files and headers; all of them are the file's problem here.
    try:
        ds = pydicom.dcmread(path)
    except InvalidDicomError:
        raise UnreadableImage(name, "not a DICOM file (no 'DICM' file meta header)", REEXPORT) from None
    except Exception as err:
        raise _unreadable(err, path, name) from err
    try:
        if not any(keyword in ds for keyword in _PIXEL_KEYWORDS):
            raise UnreadableImage(name, "has no pixel data (not an image: e.g. a structured report)",
                                  "remove it from the dataset")
        _check_pixels(name, int(ds.Rows) * int(ds.Columns))
        index = _frame_index(name, int(ds.get("NumberOfFrames") or 1), frame)
        arr, info = _decoder(ds, name).as_array(ds, index=index, as_rgb=True)
        photometric = str(info.get("photometric_interpretation") or ds.PhotometricInterpretation).upper()
        if photometric in ("YBR_FULL", "YBR_FULL_422"):  # the decoder left it: convert here
            arr, photometric = convert_color_space(arr, photometric, "RGB"), "RGB"
        if photometric == "PALETTE COLOR":
            rgb = apply_color_lut(arr, ds)
            return rgb.astype(np.float32) / 257.0 if rgb.dtype == np.uint16 else rgb.astype(np.float32)
        if arr.ndim == 3:
            return _to_display(_colour_or_grey(arr))
        pixels = _dicom_grey(arr, ds)
    except UnreadableImage:
        raise
    except Exception as err:
        raise _unreadable(err, path, name) from err
    return 255.0 - pixels if photometric == "MONOCHROME1" else pixels


def _decoder(ds: pydicom.Dataset, name: str) -> Decoder:
    """pydicom's decoder for the file's transfer syntax, refusing one whose plugins are not installed."""
    uid = UID(ds.file_meta.get("TransferSyntaxUID") or "")
    if not uid:
        raise UnreadableImage(name, "has no transfer syntax in its file meta", REEXPORT)
    try:
        decoder = get_decoder(uid)
    except NotImplementedError:
        raise UnreadableImage(name, f"its transfer syntax {uid.name} cannot be decoded (video or private)",
                              "export single frames as images") from None
    if not decoder.is_available:
        packages = ("pyjpegls" if "JPEG-LS" in uid.name else
                    "pylibjpeg pylibjpeg-openjpeg" if "JPEG 2000" in uid.name else "pylibjpeg pylibjpeg-libjpeg")
        raise UnreadableImage(name, f"no decoder is installed for its transfer syntax {uid.name}",
                              f"pip install {packages}")
    return decoder


def _dicom_grey(arr: np.ndarray, ds: pydicom.Dataset) -> np.ndarray:
    """Monochrome stored values -> modality values -> [0, 255] by the first VOI LUT / window, else as stored
    (8-bit unsigned, identity rescale) or min-max."""
    values = apply_modality_lut(arr, ds)
    item = _voi_lut(ds)
    if item is not None:
        entries, first = int(item.LUTDescriptor[0]) or 2**16, int(item.LUTDescriptor[1])
        out = apply_voi_lut(np.rint(values).astype(np.int64), ds, index=0)
        lut = apply_voi(np.arange(first, first + entries, dtype=np.int64), ds, 0)
        lo, hi = float(lut.min()), float(lut.max())
    elif ds.get("WindowCenter") is not None and ds.get("WindowWidth") is not None:
        out = apply_voi_lut(values, ds, index=0)
        # The window's output range as pydicom defines it (from BitsStored and the rescale): its ends are
        # what the window maps everything below and above it to.
        lo, hi = (float(v) for v in apply_windowing(np.array([-np.inf, np.inf]), ds, 0))
    else:
        slope, intercept = ds.get("RescaleSlope"), ds.get("RescaleIntercept")
        identity = (not ds.get("ModalityLUTSequence") and float(1 if slope is None else slope) == 1
                    and float(0 if intercept is None else intercept) == 0)
        return arr.astype(np.float32) if arr.dtype == np.uint8 and identity else _min_max(values)
    if hi <= lo:
        return np.zeros(out.shape, np.float32)
    return np.clip((np.asarray(out, np.float64) - lo) / (hi - lo) * 255.0, 0.0, 255.0).astype(np.float32)


def _voi_lut(ds: pydicom.Dataset) -> pydicom.Dataset | None:
    """The first VOI LUT Sequence item when usable (pydicom prefers it to a window), else None."""
    sequence = ds.get("VOILUTSequence")
    if not sequence:
        return None
    item = sequence[0]
    return item if item.get("LUTDescriptor") is not None and item.get("LUTData") is not None else None

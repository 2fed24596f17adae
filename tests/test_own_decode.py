"""Decoding one file of a hospital's own dataset: exact 8-bit round trips, min-max for wide images, the DICOM
pixel pipeline (modality LUT, window, MONOCHROME1, colour, frames) and one-line refusals of unreadable files."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pydicom
import pytest
import tifffile
from PIL import Image
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    BasicTextSRStorage,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    SecondaryCaptureImageStorage,
    generate_uid,
)

from fl_medlego.data.own.decode import (
    IMAGE_SUFFIXES,
    UnreadableImage,
    decode_image,
    is_dicom,
    is_image_file,
    peek_channels,
    read_pixels,
    to_uint8_resized,
)
from fl_medlego.errors import UserError

RNG = np.random.default_rng(0)


def _grey8(h: int = 28, w: int = 28) -> np.ndarray:
    return RNG.integers(0, 256, (h, w), dtype=np.uint8)


def _write_dicom(path: Path, pixels: np.ndarray | None, *, photometric: str = "MONOCHROME2", frames: int = 0,
                 syntax: str = ExplicitVRLittleEndian, encoded: bytes | None = None, **tags) -> Path:
    """A minimal DICOM file: Secondary Capture with `pixels` ((F,) H, W (, 3)), or an SR without pixel data."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage if pixels is not None else BasicTextSRStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = syntax
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality = "OT" if pixels is not None else "SR"
    if pixels is not None:
        colour = photometric not in ("MONOCHROME1", "MONOCHROME2")
        shape = pixels.shape[1:] if frames else pixels.shape
        ds.Rows, ds.Columns = shape[:2]
        ds.SamplesPerPixel = 3 if colour else 1
        ds.PhotometricInterpretation = photometric
        ds.BitsAllocated = ds.BitsStored = pixels.dtype.itemsize * 8
        ds.HighBit = ds.BitsStored - 1
        ds.PixelRepresentation = 1 if pixels.dtype.kind == "i" else 0
        if colour:
            ds.PlanarConfiguration = 0
        if frames:
            ds.NumberOfFrames = frames
        ds.PixelData = encoded if encoded is not None else pixels.tobytes()
    for key, value in tags.items():
        setattr(ds, key, value)
    ds.save_as(path, enforce_file_format=True)
    return path


# ---- 8-bit images: exact ----

def test_grey_png_round_trips_exactly(tmp_path):
    grey = _grey8()
    Image.fromarray(grey).save(tmp_path / "g.png")
    pixels = read_pixels(tmp_path / "g.png")
    assert pixels.dtype == np.float32 and pixels.shape == (28, 28)
    out = decode_image(tmp_path / "g.png", 28, 1)
    assert out.dtype == np.uint8 and out.shape == (28, 28, 1)
    np.testing.assert_array_equal(out[..., 0], grey)


def test_rgb_png_round_trips_exactly(tmp_path):
    rgb = RNG.integers(0, 256, (28, 28, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "c.png")
    np.testing.assert_array_equal(decode_image(tmp_path / "c.png", 28, 3), rgb)


def test_alpha_and_palette_images_become_rgb_without_alpha(tmp_path):
    rgba = RNG.integers(0, 256, (8, 8, 4), dtype=np.uint8)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    np.testing.assert_array_equal(read_pixels(tmp_path / "a.png"), rgba[..., :3])
    grey = _grey8(8, 8)
    Image.fromarray(np.stack([grey, 255 - grey], -1), "LA").save(tmp_path / "la.png")
    np.testing.assert_array_equal(decode_image(tmp_path / "la.png", 8, 1)[..., 0], grey)
    Image.fromarray(rgba[..., :3]).convert("P", palette=Image.Palette.ADAPTIVE, colors=16).save(tmp_path / "p.png")
    palette = Image.open(tmp_path / "p.png").convert("RGB")
    np.testing.assert_array_equal(decode_image(tmp_path / "p.png", 8, 3), np.asarray(palette))


# ---- wider images: per-image min-max ----

def test_16bit_png_is_min_max_scaled_keeping_order(tmp_path):
    wide = (RNG.permutation(32 * 32).reshape(32, 32) * 50 + 1000).astype(np.uint16)
    Image.fromarray(wide).save(tmp_path / "w.png")
    pixels = read_pixels(tmp_path / "w.png")
    assert pixels.min() == 0 and pixels.max() == 255
    order = np.argsort(wide, axis=None)
    assert np.all(np.diff(pixels.ravel()[order]) > 0)
    np.testing.assert_allclose(pixels, (wide - 1000.0) / (wide.max() - 1000.0) * 255, atol=1e-3)


def test_constant_16bit_image_becomes_zero(tmp_path):
    Image.fromarray(np.full((8, 8), 4000, np.uint16)).save(tmp_path / "flat.png")
    assert not read_pixels(tmp_path / "flat.png").any()


def test_16bit_and_float_tiffs_through_tifffile(tmp_path):
    wide = np.arange(40 * 30, dtype=np.uint16).reshape(40, 30) * 40
    tifffile.imwrite(tmp_path / "w.tif", wide)
    pixels = read_pixels(tmp_path / "w.tif")
    assert pixels.shape == (40, 30) and pixels[0, 0] == 0 and pixels[-1, -1] == 255
    np.testing.assert_allclose(pixels, wide / wide.max() * 255, atol=1e-3)
    floats = np.linspace(-1.0, 3.0, 64, dtype=np.float32).reshape(8, 8)
    tifffile.imwrite(tmp_path / "f.tiff", floats)
    np.testing.assert_allclose(read_pixels(tmp_path / "f.tiff"), (floats + 1) / 4 * 255, atol=1e-3)
    grey = _grey8()
    tifffile.imwrite(tmp_path / "g.tif", grey)
    np.testing.assert_array_equal(decode_image(tmp_path / "g.tif", 28, 1)[..., 0], grey)


def test_multipage_tiff_needs_a_frame(tmp_path):
    stack = RNG.integers(0, 256, (3, 8, 8), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "s.tif", stack, photometric="minisblack")
    with pytest.raises(UnreadableImage, match="has 3 frames.*--frame K"):
        read_pixels(tmp_path / "s.tif")
    np.testing.assert_array_equal(read_pixels(tmp_path / "s.tif", frame=2), stack[2])


# ---- JPEG, resizing and channels ----

def test_jpeg_decodes_to_the_requested_shape(tmp_path):
    rgb = np.zeros((40, 30, 3), np.uint8)
    rgb[..., 0] = 200
    Image.fromarray(rgb).save(tmp_path / "x.jpg", quality=95)
    out = decode_image(tmp_path / "x.jpg", 28, 3)
    assert out.shape == (28, 28, 3) and out.dtype == np.uint8
    assert abs(int(out[..., 0].mean()) - 200) < 6 and out[..., 1].mean() < 6
    assert decode_image(tmp_path / "x.jpg", 28, 1).shape == (28, 28, 1)


def test_downscale_is_antialiased(tmp_path):
    board = (np.indices((64, 64)).sum(0) % 2 * 255).astype(np.uint8)  # 1-pixel checkerboard
    Image.fromarray(board).save(tmp_path / "b.png")
    out = decode_image(tmp_path / "b.png", 28, 1)
    assert out.shape == (28, 28, 1)
    assert 110 <= out.min() and out.max() <= 145  # averaged to mid-grey, not aliased to 0 / 255


def test_to_uint8_resized_rounds_and_clips():
    out = to_uint8_resized(np.array([[-3.0, 0.4], [254.6, 300.0]], np.float32), 2)
    np.testing.assert_array_equal(out[..., 0], [[0, 0], [255, 255]])
    assert to_uint8_resized(np.zeros((5, 7, 3), np.float32), 4).shape == (4, 4, 3)
    with pytest.raises(ValueError):
        to_uint8_resized(np.zeros((4, 4, 2), np.float32), 4)


def test_grey_to_rgb_repeats_and_rgb_to_grey_is_pillow_luma(tmp_path):
    grey = _grey8()
    Image.fromarray(grey).save(tmp_path / "g.png")
    out = decode_image(tmp_path / "g.png", 28, 3)
    assert out.shape == (28, 28, 3) and all(np.array_equal(out[..., c], grey) for c in range(3))
    rgb = RNG.integers(0, 256, (28, 28, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "c.png")
    luma = decode_image(tmp_path / "c.png", 28, 1)
    np.testing.assert_array_equal(luma[..., 0], np.asarray(Image.fromarray(rgb).convert("L")))
    assert not np.array_equal(luma[..., 0], rgb[..., 0])


# ---- DICOM ----

def test_dicom_rescale_then_window(tmp_path):
    stored = np.full((4, 4), 600, np.uint16)  # 600 * 2 - 1024 = 176 HU, inside the window
    stored[0, 0], stored[0, 1] = 100, 2000     # -824 HU (below), 2976 HU (above)
    path = _write_dicom(tmp_path / "ct.dcm", stored, RescaleSlope=2, RescaleIntercept=-1024,
                        WindowCenter=40, WindowWidth=400)
    pixels = read_pixels(path)
    center, width, hu = 40.0, 400.0, 176.0
    expected = ((hu - (center - 0.5)) / (width - 1) + 0.5) * 255  # DICOM PS3.3 C.11.2.1.2.1, LINEAR
    assert pixels[1, 1] == pytest.approx(expected, abs=1e-3)
    assert pixels[0, 0] == 0 and pixels[0, 1] == 255
    assert decode_image(path, 4, 1)[1, 1, 0] == round(expected)


def test_dicom_without_window_min_max_after_rescale(tmp_path):
    stored = np.arange(16, dtype=np.uint16).reshape(4, 4) * 100 + 50
    pixels = read_pixels(_write_dicom(tmp_path / "x.dcm", stored, RescaleSlope=1, RescaleIntercept=-1024))
    np.testing.assert_allclose(pixels, (stored - 50) / 1500 * 255, atol=1e-3)


def test_dicom_monochrome1_is_inverted(tmp_path):
    grey = _grey8(8, 8)
    path = _write_dicom(tmp_path / "m1.dcm", grey, photometric="MONOCHROME1")
    np.testing.assert_array_equal(read_pixels(path), 255 - grey.astype(np.float32))


def test_dicom_uint8_without_window_is_kept_exactly(tmp_path):
    grey = _grey8()
    path = _write_dicom(tmp_path / "g.dcm", grey)
    np.testing.assert_array_equal(decode_image(path, 28, 1)[..., 0], grey)


def test_rgb_dicom_is_colour(tmp_path):
    rgb = RNG.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    path = _write_dicom(tmp_path / "rgb.dcm", rgb, photometric="RGB")
    np.testing.assert_array_equal(decode_image(path, 8, 3), rgb)


def test_jpeg_compressed_ybr_dicom_decodes_to_rgb(tmp_path):
    rgb = np.zeros((16, 16, 3), np.uint8)
    rgb[..., 0], rgb[..., 2] = 220, 40
    Image.fromarray(rgb).save(tmp_path / "x.jpg", quality=95)
    encoded = encapsulate([(tmp_path / "x.jpg").read_bytes()])
    path = _write_dicom(tmp_path / "j.dcm", rgb, photometric="YBR_FULL_422", syntax=JPEGBaseline8Bit,
                        encoded=encoded)
    out = read_pixels(path)
    assert out.shape == (16, 16, 3)
    assert np.abs(out - rgb).max() < 8  # converted once: a second YBR->RGB pass would shift the colours


def test_missing_decoder_names_the_transfer_syntax_and_the_install(tmp_path, monkeypatch):
    from pydicom.pixels.decoders.base import Decoder

    monkeypatch.setattr(Decoder, "is_available", property(lambda self: False))
    path = _write_dicom(tmp_path / "j2k.dcm", _grey8(8, 8), syntax=JPEG2000Lossless,
                        encoded=encapsulate([b"\xff\x4f\xff\x51" + b"\0" * 60]))
    with pytest.raises(UnreadableImage, match=r"^j2k\.dcm: .*JPEG 2000.*: pip install pylibjpeg pylibjpeg-"):
        read_pixels(path, label="j2k.dcm")


def test_multiframe_dicom_needs_a_frame(tmp_path):
    frames = np.stack([np.full((4, 4), v, np.uint8) for v in (10, 20, 30)])
    path = _write_dicom(tmp_path / "mf.dcm", frames, frames=3)
    with pytest.raises(UnreadableImage, match=r"^site/mf\.dcm: it has 3 frames: register it with --frame K"):
        decode_image(path, 4, 1, label="site/mf.dcm")
    assert np.all(read_pixels(path, frame=1) == 20)
    with pytest.raises(UnreadableImage, match="frame 3 does not exist"):
        read_pixels(path, frame=3)


def test_dicom_without_pixel_data_is_refused(tmp_path):
    path = _write_dicom(tmp_path / "sr.dcm", None)
    with pytest.raises(UnreadableImage, match=r"^sr\.dcm: has no pixel data \(not an image"):
        read_pixels(path, label="sr.dcm")


def test_is_dicom_reads_the_preamble_of_a_file_without_suffix(tmp_path):
    grey = _grey8(4, 4)
    path = _write_dicom(tmp_path / "IM0001", grey)
    uid_named = _write_dicom(tmp_path / "1.2.840.10008.5.1.320", _grey8(4, 4))
    (tmp_path / "notes").write_text("x" * 200)
    assert is_dicom(path) and is_image_file(path) and is_dicom(uid_named)
    assert not is_dicom(tmp_path / "notes") and not is_image_file(tmp_path / "notes")
    assert is_dicom(tmp_path / "missing.DCM") and is_image_file(tmp_path / "a.PNG")
    assert {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".dcm", ".dicom"} == IMAGE_SUFFIXES
    np.testing.assert_array_equal(read_pixels(path), grey)  # decoded as DICOM, not refused as unknown


def test_peek_channels_matches_what_read_pixels_gives(tmp_path):
    grey, rgb = _grey8(8, 8), RNG.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    Image.fromarray(grey).save(tmp_path / "g.png")
    Image.fromarray(grey > 127).save(tmp_path / "bits.png")
    Image.fromarray(rgb).save(tmp_path / "c.jpg")
    Image.fromarray(np.dstack([rgb, grey]), "RGBA").save(tmp_path / "a.png")
    Image.fromarray(grey.astype(np.uint16) * 200).save(tmp_path / "w.png")
    tifffile.imwrite(tmp_path / "g.tif", grey.astype(np.uint16))
    tifffile.imwrite(tmp_path / "c.tif", rgb, photometric="rgb")
    _write_dicom(tmp_path / "g.dcm", grey)
    _write_dicom(tmp_path / "c.dcm", rgb, photometric="RGB")
    seen = {}
    for path in sorted(tmp_path.iterdir()):
        pixels = read_pixels(path)
        seen[path.name] = peek_channels(path)
        assert seen[path.name] == (1 if pixels.ndim == 2 else 3), path.name
    assert sorted(seen.values()) == [1, 1, 1, 1, 1, 3, 3, 3, 3]
    np.testing.assert_array_equal(read_pixels(tmp_path / "bits.png"), (grey > 127) * 255.0)
    (tmp_path / "x.png").write_text("not an image")
    with pytest.raises(UnreadableImage, match=r"^site/x\.png: "):
        peek_channels(tmp_path / "x.png", label="site/x.png")


# ---- refusals ----

def test_truncated_png_is_refused_naming_the_relative_label(tmp_path):
    Image.fromarray(RNG.integers(0, 256, (64, 64), dtype=np.uint8)).save(tmp_path / "t.png")
    data = (tmp_path / "t.png").read_bytes()
    (tmp_path / "t.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(UnreadableImage) as caught:
        decode_image(tmp_path / "t.png", 28, 1, label="siteA/images/t.png")
    message = str(caught.value)
    assert message.startswith("siteA/images/t.png: ") and message.endswith("remove it from the dataset")
    assert "truncated" in caught.value.reason and str(tmp_path) not in message and "\n" not in message
    assert isinstance(caught.value, UserError) and caught.value.path == "siteA/images/t.png"


def test_text_file_named_png_is_refused(tmp_path):
    (tmp_path / "x.png").write_text("patient list, not an image\n")
    with pytest.raises(UnreadableImage, match=r"^img/x\.png: .*re-export the file or remove it") as caught:
        decode_image(tmp_path / "x.png", 28, 1, label="img/x.png")
    assert str(tmp_path) not in str(caught.value)
    (tmp_path / "y.tif").write_text("not a tiff either")
    with pytest.raises(UnreadableImage, match=r"^y\.tif: "):
        read_pixels(tmp_path / "y.tif", label="y.tif")
    (tmp_path / "z.dcm").write_text("nor a dicom")
    with pytest.raises(UnreadableImage, match=r"^z\.dcm: .*re-export"):
        read_pixels(tmp_path / "z.dcm", label="z.dcm")


def test_unknown_suffix_and_missing_file_are_refused(tmp_path):
    (tmp_path / "scan.nii").write_bytes(b"\0" * 400)
    with pytest.raises(UnreadableImage, match=r"^scan\.nii: unknown image type '\.nii': export it as one of"):
        read_pixels(tmp_path / "scan.nii", label="scan.nii")
    with pytest.raises(UnreadableImage, match=r"^gone\.png: no such file"):
        read_pixels(tmp_path / "gone.png", label="gone.png")


def test_decompression_bombs_are_refused_by_every_reader(tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    Image.fromarray(_grey8(16, 16)).save(tmp_path / "b.png")
    tifffile.imwrite(tmp_path / "b.tif", _grey8(16, 16))
    _write_dicom(tmp_path / "b.dcm", _grey8(16, 16))
    for name in ("b.png", "b.tif", "b.dcm"):
        with pytest.raises(UnreadableImage, match=rf"^{name}: .*(bomb|exceeds limit)"):
            read_pixels(tmp_path / name, label=name)


def test_unreadable_image_survives_pickling():
    err = pickle.loads(pickle.dumps(UnreadableImage("a/b.png", "truncated", "re-export it")))
    assert (err.path, err.reason, err.fix, str(err)) == ("a/b.png", "truncated", "re-export it",
                                                         "a/b.png: truncated: re-export it")


def test_the_dicom_reader_is_its_own_module_loaded_only_for_dicom_files(tmp_path):
    """read_pixels hands DICOM files to dicom.read_dicom; reading a PNG does not import pydicom."""
    import subprocess
    import sys

    from fl_medlego.data.own import dicom

    path = _write_dicom(tmp_path / "g.dcm", _grey8(4, 4))
    np.testing.assert_array_equal(dicom.read_dicom(path, None, "g.dcm"), read_pixels(path))
    assert dicom.dicom_channels(path) == peek_channels(path) == 1
    Image.fromarray(_grey8(4, 4)).save(tmp_path / "g.png")
    code = ("import sys; from fl_medlego.data.own.decode import read_pixels; read_pixels(sys.argv[1]); "
            "sys.exit('pydicom' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code, str(tmp_path / "g.png")], timeout=60).returncode == 0


def test_pydicom_reads_what_the_helper_writes(tmp_path):
    """The tests' DICOM writer makes files a plain dcmread accepts (so the DICOM tests test the decoder)."""
    ds = pydicom.dcmread(_write_dicom(tmp_path / "ok.dcm", _grey8(4, 4), WindowCenter=10, WindowWidth=20))
    assert ds.Rows == 4 and ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian

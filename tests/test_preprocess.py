"""The image processor equals transformers' ConvNextImageProcessor bit for bit (tolerance 0) on real photographs,
odd sizes and every kind of input it turns into 8-bit RGB; its config files round-trip; bad input is named."""

import json

import numpy as np
import pytest

pytest.importorskip("PIL")
skdata = pytest.importorskip("skimage.data")
transformers = pytest.importorskip("transformers")

from PIL import Image  # noqa: E402
from transformers import ConvNextImageProcessor  # noqa: E402
from transformers.image_utils import load_image  # noqa: E402

from regnet_core.checkpoint import DEFAULT_PREPROCESSOR, PREPROCESSOR_NAME  # noqa: E402
from regnet_core.formats.keras_applications import PREPROCESSOR as KERAS_PREPROCESSOR  # noqa: E402
from regnet_core.preprocess import (  # noqa: E402
    ImageInputError,
    ImageProcessor,
    PreprocessorConfigError,
    to_uint8,
)

PHOTOS = ["astronaut", "chelsea", "coffee", "rocket", "colorwheel"]
GRAY = ["camera", "coins", "page"]


def _settings(**changes):
    return {**DEFAULT_PREPROCESSOR, **changes}


def _theirs(image, **changes):
    """transformers' output for an image it takes as RGB (PIL image or HWC array)."""
    processor = ConvNextImageProcessor(**_settings(**changes))
    out = processor(image, return_tensors="np", input_data_format="channels_last")["pixel_values"]
    return out


def _ours(image, **changes):
    return ImageProcessor.from_dict(_settings(**changes))(image)


def _assert_identical(ours, theirs):
    assert ours.dtype == np.float32 and ours.shape == theirs.shape
    assert np.array_equal(ours, theirs.astype(np.float32)), float(np.abs(ours - theirs).max())


@pytest.fixture(scope="module")
def photos():
    return {name: getattr(skdata, name)() for name in PHOTOS}


# ----------------------------------------------------------------------------- real photographs
@pytest.mark.parametrize("size", [224, 160, 384, 448])
def test_photographs_equal_transformers_bit_for_bit(photos, size):
    for name, pixels in photos.items():
        theirs = _theirs(Image.fromarray(pixels), size={"shortest_edge": size})
        _assert_identical(_ours(pixels, size={"shortest_edge": size}), theirs)
        _assert_identical(_ours(Image.fromarray(pixels), size={"shortest_edge": size}), theirs)
        assert theirs.shape == (1, 3, size, size), name


def test_channels_last_is_the_same_batch_transposed(photos):
    processor = ImageProcessor()
    images = list(photos.values())[:3]
    first, last = processor(images), processor(images, data_format="channels_last")
    assert last.shape == (3, 224, 224, 3) and np.array_equal(last, first.transpose(0, 2, 3, 1))
    assert np.array_equal(processor(images, data_format="NHWC"), last)


def test_a_batch_equals_its_images_one_by_one(photos, tmp_path):
    path = tmp_path / "coffee.png"
    Image.fromarray(photos["coffee"]).save(path)
    images = [photos["astronaut"], Image.fromarray(photos["chelsea"]), path, str(path), skdata.camera()]
    processor = ImageProcessor()
    batch = processor(images)
    assert batch.shape == (5, 3, 224, 224)
    for index, image in enumerate(images):
        assert np.array_equal(batch[index], processor(image)[0])
    four_d = np.stack([photos["astronaut"][:300, :400], photos["coffee"][:300, :400]])
    assert np.array_equal(processor(four_d), processor([four_d[0], four_d[1]]))
    assert np.array_equal(processor(tuple(images[:2])), batch[:2])


# ----------------------------------------------------------------------------- odd sizes and settings
@pytest.mark.parametrize(
    "shape", [(333, 517), (517, 333), (1, 1), (1, 2), (2, 1), (3, 3), (7, 1500), (1500, 7), (255, 257)]
)
@pytest.mark.parametrize("size", [224, 384])
def test_odd_sizes_equal_transformers(photos, retina, shape, size):
    pixels = np.resize(photos["coffee"], shape + (3,)) if min(shape) < 10 else retina[: shape[0], : shape[1]]
    _assert_identical(_ours(pixels, size={"shortest_edge": size}), _theirs(pixels, size={"shortest_edge": size}))


@pytest.fixture(scope="module")
def retina():
    return skdata.retina()  # 1411 x 1411


@pytest.fixture(scope="module")
def odd(photos):
    return np.ascontiguousarray(photos["coffee"][:333, :517])


@pytest.mark.parametrize(
    "changes",
    [
        {"crop_pct": 1.25},  # shorter side resized below the crop: zero padding, as transformers pads
        {"crop_pct": 0.95, "size": {"shortest_edge": 100}},
        {"do_resize": False},
        {"do_rescale": False},
        {"do_normalize": False},
        {"do_rescale": False, "do_normalize": False},
        {"image_mean": 0.5, "image_std": 0.25},
        {"rescale_factor": 1 / 127.5, "image_mean": [1.0, 1.0, 1.0], "image_std": [1.0, 1.0, 1.0]},
        *({"resample": resample} for resample in range(6)),
    ],
    ids=lambda changes: ",".join(f"{k}={v}" for k, v in changes.items()),
)
def test_settings_equal_transformers(odd, changes):
    _assert_identical(_ours(odd, **changes), _theirs(odd, **changes))


def test_padding_of_a_small_resize(odd):
    out = _ours(odd[:3, :400], crop_pct=1.25)  # 3x400 -> 179x23866, then a 224x224 crop padded with zeros
    _assert_identical(out, _theirs(odd[:3, :400], crop_pct=1.25))
    zero = (0 - np.float32(0.485)) / np.float32(0.229)
    assert out[0, 0, 0, 0] == zero and out[0, 0, 112, 112] != zero


# ----------------------------------------------------------------------------- grayscale, alpha, other modes
@pytest.mark.parametrize("name", GRAY)
def test_grayscale_equals_transformers_on_the_rgb_image(name):
    gray = getattr(skdata, name)()
    rgb = Image.fromarray(gray).convert("RGB")  # what transformers' pipeline feeds its processor
    theirs = _theirs(rgb)
    for image in (gray, gray[:, :, None], Image.fromarray(gray)):
        _assert_identical(_ours(image), theirs)
    _assert_identical(_ours(gray, size={"shortest_edge": 384}), _theirs(rgb, size={"shortest_edge": 384}))


def test_transformers_processor_alone_refuses_grayscale_and_rgba():
    with pytest.raises(ValueError):
        ConvNextImageProcessor(**DEFAULT_PREPROCESSOR)(skdata.camera(), return_tensors="np")
    with pytest.raises(ValueError):
        ConvNextImageProcessor(**DEFAULT_PREPROCESSOR)(skdata.logo(), return_tensors="np")


def test_rgba_drops_alpha_as_pillow_and_the_pipeline_do(photos):
    alpha = np.linspace(0, 255, 451 * 300).reshape(300, 451).astype(np.uint8)
    for rgba in (skdata.logo(), np.dstack([photos["chelsea"], alpha])):  # a real RGBA file, and varying alpha
        assert rgba.shape[2] == 4
        theirs = _theirs(Image.fromarray(rgba).convert("RGB"))
        _assert_identical(_ours(rgba), theirs)
        _assert_identical(_ours(Image.fromarray(rgba)), theirs)
        _assert_identical(_ours(rgba), _theirs(np.ascontiguousarray(rgba[..., :3])))


@pytest.mark.parametrize("mode", ["P", "LA", "CMYK", "1", "YCbCr", "RGBX"])
def test_other_pil_modes_go_through_pillow_convert(photos, mode):
    image = Image.fromarray(photos["chelsea"]).convert(mode)
    _assert_identical(_ours(image), _theirs(image.convert("RGB")))


# ----------------------------------------------------------------------------- 16-bit and float
def test_sixteen_bit_scales_by_257_and_rounds():
    values = np.array([0, 128, 129, 257, 385, 386, 32767, 65406, 65407, 65535], np.uint16)
    assert to_uint8(values).tolist() == [0, 0, 1, 1, 1, 2, 127, 254, 255, 255]
    every = np.arange(65536, dtype=np.uint16)
    assert np.array_equal(to_uint8(every), np.rint(every / 257).astype(np.uint8))


def test_sixteen_bit_images_equal_transformers_on_their_8_bit_image(tmp_path):
    rng = np.random.default_rng(0)
    photo = skdata.astronaut()
    wide = photo.astype(np.int32) * 257 + rng.integers(-128, 129, photo.shape)
    rgb16 = np.clip(wide, 0, 65535).astype(np.uint16)
    eight = to_uint8(rgb16)
    assert np.array_equal(eight, photo)  # 16-bit noise below one 8-bit step rounds away
    _assert_identical(_ours(rgb16), _theirs(eight))

    gray16 = np.clip(skdata.camera().astype(np.int32) * 257 + rng.integers(-128, 129, (512, 512)), 0, 65535)
    gray16 = gray16.astype(np.uint16)
    png = tmp_path / "gray16.png"
    Image.fromarray(gray16).save(png)
    assert Image.open(png).mode == "I;16"
    theirs = _theirs(Image.fromarray(skdata.camera()).convert("RGB"))
    for image in (
        gray16,
        Image.fromarray(gray16),
        png,
        Image.frombytes("I;16B", (512, 512), gray16.byteswap().tobytes()),
    ):
        _assert_identical(_ours(image), theirs)
    # transformers' pipeline clips 16-bit values to 255 (almost white); its processor refuses them
    assert (np.asarray(load_image(str(png))) == 255).mean() > 0.9
    with pytest.raises(ValueError):
        ConvNextImageProcessor(**DEFAULT_PREPROCESSOR)(np.stack([gray16] * 3, -1), return_tensors="np")


def test_floats_in_0_1_equal_transformers_on_their_8_bit_image(photos):
    pixels = photos["rocket"]
    theirs = _theirs(pixels)
    for dtype in (np.float64, np.float32, np.float16):
        _assert_identical(_ours((pixels / 255).astype(dtype)), theirs)
    _assert_identical(
        _ours(Image.fromarray((pixels[..., 0] / 255).astype(np.float32))), _theirs(np.stack([pixels[..., 0]] * 3, -1))
    )
    # rounding, not transformers' truncation: every k / 255 comes back as k even in float16
    k = np.arange(256)
    assert np.array_equal(to_uint8((k / 255).astype(np.float16)), k)
    truncated = ((k / 255).astype(np.float16).astype(np.float64) * 255).astype(np.float32).astype(np.uint8)
    assert (truncated != k).sum() > 100  # what transformers' to_pil_image would make of them


def test_whole_number_floats_and_wide_integers_are_8_bit_values(photos):
    pixels = photos["rocket"]
    _assert_identical(_ours(pixels.astype(np.float32)), _theirs(pixels.astype(np.float32)))
    _assert_identical(_ours(pixels.astype(np.int64)), _theirs(pixels))
    _assert_identical(
        _ours(Image.fromarray(skdata.camera().astype(np.int32))),
        _theirs(Image.fromarray(skdata.camera()).convert("RGB")),
    )


# ----------------------------------------------------------------------------- files
def test_files_equal_transformers_and_exif_orientation_is_applied(photos, tmp_path):
    image = Image.fromarray(photos["chelsea"])
    for suffix in (".png", ".jpg", ".bmp"):
        path = tmp_path / f"cat{suffix}"
        image.save(path)
        theirs = _theirs(Image.open(path).convert("RGB"))
        _assert_identical(_ours(path), theirs)
        _assert_identical(_ours(str(path)), theirs)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    rotated = tmp_path / "rotated.jpg"
    image.save(rotated, exif=exif.tobytes())
    theirs = _theirs(load_image(str(rotated)))  # the pipeline's loader turns it upright
    _assert_identical(_ours(rotated), theirs)
    _assert_identical(_ours(Image.open(rotated)), theirs)
    assert not np.array_equal(_ours(rotated), _theirs(Image.open(rotated).convert("RGB")))


# ----------------------------------------------------------------------------- preprocessor_config.json
def test_default_is_the_checkpoints_preprocessor_and_round_trips(tmp_path):
    processor = ImageProcessor()
    assert processor.to_dict() == DEFAULT_PREPROCESSOR
    assert ImageProcessor.default() == processor
    path = processor.save_pretrained(tmp_path)
    assert path == tmp_path / PREPROCESSOR_NAME
    assert json.loads(path.read_text()) == DEFAULT_PREPROCESSOR
    assert ImageProcessor.from_pretrained(tmp_path) == processor
    assert ImageProcessor.from_pretrained(path) == processor


def test_our_file_loads_in_transformers_and_theirs_in_ours(photos, tmp_path):
    ours = ImageProcessor(size=192, crop_pct=0.9, resample=2, image_mean=[0.4, 0.5, 0.6], custom_key=[1, 2])
    ours.save_pretrained(tmp_path / "ours")
    theirs = ConvNextImageProcessor.from_pretrained(tmp_path / "ours")
    assert theirs.size == {"shortest_edge": 192} and theirs.crop_pct == 0.9 and theirs.resample == 2
    image = photos["chelsea"]
    _assert_identical(ours(image), theirs(image, return_tensors="np")["pixel_values"])
    assert json.loads((tmp_path / "ours" / PREPROCESSOR_NAME).read_text())["custom_key"] == [1, 2]

    theirs = ConvNextImageProcessor(size={"shortest_edge": 320}, crop_pct=0.95, resample=3, do_normalize=False)
    theirs.save_pretrained(tmp_path / "theirs")
    loaded = ImageProcessor.from_pretrained(tmp_path / "theirs")
    assert loaded.size == 320 and loaded.crop_pct == 0.95 and not loaded.do_normalize
    _assert_identical(loaded(image), theirs(image, return_tensors="np")["pixel_values"])
    saved = json.loads((tmp_path / "theirs" / PREPROCESSOR_NAME).read_text())
    assert loaded.to_dict() == saved  # every key transformers wrote is kept, unknown ones too


@pytest.mark.parametrize(
    "config",
    [
        # the form of facebook/regnet-* hub files: a feature extractor, size as an int, no rescale keys
        {
            "crop_pct": 0.875,
            "do_normalize": True,
            "do_resize": True,
            "feature_extractor_type": "ConvNextFeatureExtractor",
            "image_mean": [0.485, 0.456, 0.406],
            "image_std": [0.229, 0.224, 0.225],
            "resample": 3,
            "size": 224,
        },
        {},  # every setting missing: transformers' class defaults (384, bilinear, mean and std 0.5)
        {"size": {"shortest_edge": 256}, "crop_pct": None, "image_mean": None, "image_std": None},
        KERAS_PREPROCESSOR,
    ],
    ids=["hub-legacy", "empty", "nulls", "keras-applications"],
)
def test_a_file_means_what_it_means_to_transformers(photos, tmp_path, config):
    (tmp_path / PREPROCESSOR_NAME).write_text(json.dumps(config))
    theirs = ConvNextImageProcessor.from_pretrained(tmp_path)
    ours = ImageProcessor.from_pretrained(tmp_path)
    for name in ("astronaut", "coffee"):
        _assert_identical(ours(photos[name]), theirs(photos[name], return_tensors="np")["pixel_values"])
    assert ImageProcessor.from_dict(ours.to_dict()) == ours
    for key, value in config.items():
        if key not in ("size", "crop_pct", "image_mean", "image_std"):
            assert ours.to_dict()[key] == value


# ----------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    "image, message",
    [
        (np.zeros(10, np.uint8), "expected an array of shape (H, W) or (H, W, C)"),
        (np.zeros((2, 2, 2, 2, 3), np.uint8), "got 5 dimensions"),
        (np.zeros((8, 8, 2), np.uint8), "expected channels last with 1 (gray), 3 (RGB) or 4 (RGBA) channels"),
        (np.zeros((3, 32, 32), np.uint8), "looks channels-first"),
        (np.zeros((0, 5, 3), np.uint8), "at least 1x1 pixels"),
        (np.zeros((4, 4, 3), bool), "got dtype bool"),
        (np.zeros((4, 4, 3), np.complex64), "got dtype complex64"),
        (np.full((4, 4, 3), 300, np.int32), "values 0..255"),
        (np.full((4, 4, 3), -1, np.int16), "values 0..255"),
        (np.full((4, 4, 3), 1.5), "in [0, 1] (or whole numbers 0..255), got values in [1.5, 1.5]"),
        (np.full((4, 4, 3), 256.0), "got values in [256, 256]"),
        (np.full((4, 4, 3), np.nan, np.float32), "finite"),
        ([], "expected at least one image, got an empty batch"),
        ([[1, 2], [3, 4]], "expected a path, a PIL image or a numpy array (H, W, C), got builtins.list"),
        (b"raw bytes", "got builtins.bytes"),
    ],
)
def test_bad_images_raise_value_errors_naming_expected_and_got(image, message):
    with pytest.raises(ImageInputError, match="expected") as error:
        ImageProcessor()(image)
    assert isinstance(error.value, ValueError) and message in str(error.value)


def test_bad_files_name_the_file(tmp_path, photos):
    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    truncated = tmp_path / "cut.png"
    Image.fromarray(photos["coffee"]).save(truncated)
    truncated.write_bytes(truncated.read_bytes()[:2000])
    good = tmp_path / "good.png"
    Image.fromarray(photos["coffee"]).save(good)
    cases = [
        (tmp_path / "missing.jpg", "expected an image file, got no such file"),
        (tmp_path, "expected an image file, got a directory"),
        (text, "expected an image file (PNG, JPEG, ...), got a file Pillow cannot identify"),
        (truncated, "expected a readable image file, cannot decode it"),
    ]
    for path, message in cases:
        with pytest.raises(ImageInputError) as error:
            ImageProcessor()([good, path])
        assert message in str(error.value) and f"image 1 {path}" in str(error.value)


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"size": {"height": 224, "width": 224}}, 'size must be a positive integer or {"shortest_edge": N}'),
        ({"size": 0}, "got 0"),
        ({"resample": 9}, "resample must be a Pillow filter number 0..5"),
        ({"resample": None}, "resample must be a Pillow filter number 0..5 (3 = bicubic) or one of nearest"),
        ({"crop_pct": 0}, "crop_pct must be positive"),
        ({"do_resize": "yes"}, "do_resize must be true or false, got 'yes'"),
        ({"rescale_factor": None}, "rescale_factor must be a finite number, got None"),
        ({"image_mean": [0.5, 0.5]}, "image_mean must be one number or 3 (R, G, B), got 2"),
        ({"image_std": [0.2, 0.0, 0.2]}, "image_std must not contain 0"),
        ({"image_processor_type": "ViTImageProcessor"}, "expected image_processor_type ConvNextImageProcessor"),
        ({"feature_extractor_type": "ViTFeatureExtractor"}, "expected feature_extractor_type ConvNextFeatureExtractor"),
    ],
)
def test_bad_settings_raise_value_errors(changes, message):
    config = dict(DEFAULT_PREPROCESSOR)
    if "feature_extractor_type" in changes:  # a legacy file names a feature extractor instead
        del config["image_processor_type"]
    with pytest.raises(PreprocessorConfigError) as error:
        ImageProcessor.from_dict({**config, **changes})
    assert isinstance(error.value, ValueError) and message in str(error.value)


def test_bad_files_and_layouts(tmp_path):
    with pytest.raises(PreprocessorConfigError, match="expected a preprocessor config file"):
        ImageProcessor.from_pretrained(tmp_path)
    (tmp_path / PREPROCESSOR_NAME).write_text("{not json")
    with pytest.raises(PreprocessorConfigError, match="expected JSON preprocessor settings"):
        ImageProcessor.from_pretrained(tmp_path)
    (tmp_path / PREPROCESSOR_NAME).write_text("[1, 2]")
    with pytest.raises(PreprocessorConfigError, match="expected a JSON object"):
        ImageProcessor.from_pretrained(tmp_path)
    with pytest.raises(ValueError, match="data_format must be 'channels_first'"):
        ImageProcessor()(np.zeros((8, 8, 3), np.uint8), data_format="CHW")
    with pytest.raises(ImageInputError, match="expected images of one size to batch"):
        ImageProcessor(do_resize=False)([np.zeros((8, 8, 3), np.uint8), np.zeros((9, 8, 3), np.uint8)])


def test_importing_the_core_does_not_load_pillow():
    import subprocess
    import sys

    code = "import sys, regnet_core, regnet_core.cli; print('PIL' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"

"""`predict` and `regnet predict` give transformers' image-classification pipeline's labels and scores."""

import json

import numpy as np
import pytest

pytest.importorskip("PIL")
skdata = pytest.importorskip("skimage.data")

from PIL import Image  # noqa: E402

from regnet_core import build_model_spec, random_state  # noqa: E402
from regnet_core.backends import resolve_checkpoint  # noqa: E402
from regnet_core.checkpoint import PREPROCESSOR_NAME, save_checkpoint  # noqa: E402
from regnet_core.classify import (  # noqa: E402
    ImageClassifier,
    NoClassifierError,
    class_names,
    imagenet_labels,
    predict,
    score_function,
)
from regnet_core.cli import main  # noqa: E402
from regnet_core.parity import LOGITS_ATOL  # noqa: E402
from regnet_core.preprocess import ImageInputError, PreprocessorConfigError  # noqa: E402
from tests.helpers import requires, tiny_config  # noqa: E402
from tests.peers import PEERS  # noqa: E402

# Parity bounds logits to LOGITS_ATOL between implementations; a softmax or sigmoid score then moves by
# a factor within exp(+-2 * LOGITS_ATOL), so scores agree to this relative tolerance. Even transformers'
# PyTorch model and ours differ by float32 rounding: from_pretrained leaves its weights where the
# safetensors offsets put them, and oneDNN's 1x1 convolutions round differently by weight alignment.
SCORE_RTOL = 2 * LOGITS_ATOL
PHOTOS = ["chelsea", "coffee", "astronaut", "rocket"]


def _x002(directory, id2label=None):
    """regnet-x-002 with seeded random weights and BN statistics, the head scaled so the scores are peaked."""
    config, state, _, _ = resolve_checkpoint("regnet-x-002")
    state = dict(state)
    state["classifier.1.weight"] = state["classifier.1.weight"] * 10
    if id2label is not None:
        config = config.copy(id2label=id2label)
    save_checkpoint(directory, config, state, architecture="RegNetForImageClassification")
    return directory


@pytest.fixture(scope="module")
def imagenet_ckpt(tmp_path_factory):
    return _x002(tmp_path_factory.mktemp("x002-imagenet"), dict(enumerate(imagenet_labels())))


@pytest.fixture(scope="module")
def placeholder_ckpt(tmp_path_factory):
    return _x002(tmp_path_factory.mktemp("x002-placeholders"))


@pytest.fixture(scope="module")
def photo_files(tmp_path_factory):
    directory = tmp_path_factory.mktemp("photos")
    paths = []
    for name in PHOTOS:
        path = directory / f"{name}.{'jpg' if name in ('chelsea', 'rocket') else 'png'}"
        Image.fromarray(getattr(skdata, name)()).save(path)
        paths.append(path)
    gray = directory / "camera.png"
    Image.fromarray(skdata.camera()).save(gray)  # grayscale: the pipeline and we both make it RGB
    return paths + [gray]


def _pipeline(directory, **overrides):
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("torch")
    model = transformers.RegNetForImageClassification.from_pretrained(directory, **overrides).eval()
    processor = transformers.ConvNextImageProcessor.from_pretrained(directory)
    return transformers.pipeline("image-classification", model=model, image_processor=processor, framework="pt")


def _assert_same(ours, theirs):
    """The same scores position by position; the same labels, except that near-ties may swap."""
    np.testing.assert_allclose(_scores(ours), _scores(theirs), rtol=SCORE_RTOL, atol=0)
    for mine, reference in zip(ours, theirs, strict=True):
        scores = {entry["label"]: entry["score"] for entry in reference}
        scale = max(abs(entry["score"]) for entry in reference)
        for position, entry in enumerate(mine):
            if entry["label"] == reference[position]["label"]:
                continue
            # a different label here is allowed only where the reference scores tie within the tolerance
            tied = abs(reference[position]["score"] - scores.get(entry["label"], reference[-1]["score"]))
            assert tied <= 2 * SCORE_RTOL * scale, (position, entry, reference[position])


def _labels(results):
    return [[entry["label"] for entry in entries] for entries in results]


def _scores(results):
    return np.array([[entry["score"] for entry in entries] for entries in results])


# ----------------------------------------------------------------------------- labels
def test_imagenet_names_ship_in_class_order():
    names = imagenet_labels()
    assert len(names) == 1000 and len(set(names)) == 999  # "crane" twice: 134 (the bird) and 517 (the machine)
    assert names[0] == "tench, Tinca tinca" and names[1] == "goldfish, Carassius auratus"
    assert names[134] == names[517] == "crane"
    assert names[281] == "tabby, tabby cat" and names[633] == "loupe, jeweler's loupe"
    assert names[999] == "toilet tissue, toilet paper, bathroom tissue"
    info = PEERS / "timm" / "data" / "_info"
    if info.is_dir():  # the data they were copied from: timm's synset order and WordNet lemmas
        synsets = (info / "imagenet_synsets.txt").read_text().split()
        lemmas = dict(line.split("\t", 1) for line in (info / "imagenet_synset_to_lemma.txt").read_text().splitlines())
        assert list(names) == [lemmas[synset].strip() for synset in synsets]


def test_labels_are_id2label_unless_1000_placeholders(imagenet_ckpt, placeholder_ckpt):
    config, *_ = resolve_checkpoint(str(placeholder_ckpt))
    assert config.id2label[0] == "LABEL_0" and class_names(config) == list(imagenet_labels())
    assert class_names(tiny_config(num_labels=3)) == ["LABEL_0", "LABEL_1", "LABEL_2"]
    named = tiny_config(num_labels=2, id2label={0: "cat", 1: "dog"})
    assert class_names(named) == ["cat", "dog"]


def test_score_function_is_chosen_as_the_pipeline_chooses():
    assert score_function(tiny_config(num_labels=5)) == "softmax"
    assert score_function(tiny_config(num_labels=1)) == "sigmoid"
    assert score_function(tiny_config(num_labels=5, problem_type="multi_label_classification")) == "sigmoid"
    assert score_function(tiny_config(num_labels=5, problem_type="regression")) == "softmax"  # as the pipeline


# ----------------------------------------------------------------------------- against the pipeline
@pytest.fixture(scope="module")
def expected(imagenet_ckpt, photo_files):
    """The pipeline's top 5 for every photo."""
    return _pipeline(imagenet_ckpt)([str(path) for path in photo_files], top_k=5)


def test_pytorch_predictions_equal_the_pipeline(imagenet_ckpt, photo_files, expected):
    images = [str(path) for path in photo_files]
    classifier = ImageClassifier.from_checkpoint(imagenet_ckpt, "pt")
    _assert_same(classifier(images, top_k=5), expected)
    _assert_same(classifier([Image.open(path) for path in photo_files], top_k=5), expected)
    assert _scores(expected)[:, 0].max() > 0.3  # peaked scores: the comparison is not between near-uniform ones
    every = classifier(images[:1], top_k=None)
    assert len(every[0]) == 1000 and sorted(e["label"] for e in every[0]) == sorted(imagenet_labels())
    assert every[0][:5] == classifier(images[:1])[0]
    assert predict(imagenet_ckpt, images[0], top_k=3) == [classifier(images[:1])[0][:3]]


def test_placeholder_labels_become_imagenet_names(placeholder_ckpt, imagenet_ckpt, photo_files, expected):
    images = [str(path) for path in photo_files]
    ours = predict(placeholder_ckpt, images, top_k=5)
    assert ours == predict(imagenet_ckpt, images, top_k=5)
    _assert_same(ours, expected)


@pytest.mark.parametrize("framework", ["tf", "flax"])
def test_every_framework_gives_the_same_top_k(imagenet_ckpt, photo_files, expected, framework):
    pytest.importorskip({"tf": "tensorflow", "flax": "flax"}[framework])
    images = [str(path) for path in photo_files]
    got = ImageClassifier.from_checkpoint(imagenet_ckpt, framework)(images, top_k=5, batch_size=len(images))
    _assert_same(got, expected)


def test_batches_rank_as_single_images(imagenet_ckpt, photo_files):
    classifier = ImageClassifier.from_checkpoint(imagenet_ckpt, "pt")
    images = [str(path) for path in photo_files]
    _assert_same(classifier(images, batch_size=3), classifier(images))


def test_the_checkpoints_preprocessor_is_used(tmp_path, photo_files):
    directory = _x002(tmp_path / "ckpt", dict(enumerate(imagenet_labels())))
    settings = json.loads((directory / PREPROCESSOR_NAME).read_text())
    settings.update(size={"shortest_edge": 160}, resample=2, crop_pct=0.9, image_mean=[0.5, 0.5, 0.5])
    (directory / PREPROCESSOR_NAME).write_text(json.dumps(settings))
    images = [str(path) for path in photo_files[:2]]
    classifier = ImageClassifier.from_checkpoint(directory)
    assert classifier.processor.size == 160 and classifier.processor.resample == 2
    _assert_same(classifier(images), _pipeline(directory)(images, top_k=5))
    (directory / PREPROCESSOR_NAME).write_text('{"size": {"height": 160, "width": 160}}')
    with pytest.raises(PreprocessorConfigError, match="size must be"):
        predict(directory, images)


@pytest.mark.parametrize(
    "fields",
    [
        {"num_labels": 5, "problem_type": "multi_label_classification"},
        {"num_labels": 1},
        {"num_labels": 3, "id2label": {0: "cat", 1: "dog", 2: "bird"}},
    ],
    ids=["multi-label", "one-label", "named"],
)
def test_sigmoid_softmax_and_own_labels_equal_the_pipeline(tmp_path, photo_files, fields):
    config = tiny_config(**fields)
    save_checkpoint(
        tmp_path, config, random_state(build_model_spec(config), 4), architecture="RegNetForImageClassification"
    )
    images = [str(path) for path in photo_files[:2]]
    pipe = _pipeline(tmp_path)
    expected = pipe(images, top_k=10)  # more than there are labels: all of them
    _assert_same(predict(tmp_path, images, top_k=10), expected)
    assert len(expected[0]) == config.num_labels
    logits = predict(tmp_path, images, function_to_apply="none")
    _assert_same(logits, pipe(images, function_to_apply="none"))
    if config.num_labels > 1 and config.problem_type is None:
        assert all(min(e["score"] for e in entries) < 0 for entries in logits)  # raw logits, not scores


# ----------------------------------------------------------------------------- refusals
def test_a_trunk_is_refused_before_loading(tmp_path, photo_files):
    with pytest.raises(NoClassifierError, match=r"expected a checkpoint with a classifier .* got a trunk"):
        predict("regnet-y-10b-seer", photo_files[0])  # refused before 10B random weights are drawn
    config = tiny_config(num_labels=0)
    save_checkpoint(
        tmp_path, config, random_state(build_model_spec(config), 0, with_head=False), architecture="RegNetModel"
    )
    with pytest.raises(NoClassifierError, match="RegNetModel"):
        predict(tmp_path, photo_files[0])


def test_bad_arguments_are_value_errors(imagenet_ckpt, photo_files, tmp_path):
    with pytest.raises(ValueError, match="expected top_k a positive integer"):
        predict(imagenet_ckpt, photo_files[0], top_k=0)
    with pytest.raises(ValueError, match="expected function_to_apply one of softmax, sigmoid, none"):
        predict(imagenet_ckpt, photo_files[0], function_to_apply="relu")
    with pytest.raises(ImageInputError, match="expected at least one image"):
        predict(imagenet_ckpt, [])
    with pytest.raises(ImageInputError, match="no such file"):
        predict(imagenet_ckpt, [photo_files[0], tmp_path / "missing.png"])
    with pytest.raises(ValueError, match="unknown framework"):
        predict(imagenet_ckpt, photo_files[0], framework="mxnet")


# ----------------------------------------------------------------------------- command line
def _run(capsys, *argv):
    code = main([str(arg) for arg in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_prints_top_k_with_scores(capsys, imagenet_ckpt, photo_files):
    images = photo_files[:2]
    code, out, err = _run(capsys, "predict", imagenet_ckpt, *images, "--top-k", "3")
    assert code == 0 and str(imagenet_ckpt) in err
    expected = predict(imagenet_ckpt, images, top_k=3)
    lines = out.splitlines()
    assert len(lines) == 2 * 4
    for index, (path, entries) in enumerate(zip(images, expected, strict=True)):
        assert lines[4 * index] == str(path)
        assert lines[4 * index + 1 : 4 * index + 4] == [f"  {e['score']:.4f}  {e['label']}" for e in entries]


def test_cli_json_is_the_pipelines_answer(capsys, imagenet_ckpt, photo_files):
    images = [str(path) for path in photo_files[:2]]
    code, out, _ = _run(capsys, "predict", imagenet_ckpt, *images, "--json")
    assert code == 0
    assert json.loads(out) == predict(imagenet_ckpt, images)
    _assert_same(json.loads(out), _pipeline(imagenet_ckpt)(images, top_k=5))
    code, out, _ = _run(capsys, "predict", "regnet-x-002", images[0], "--json", "--top-k", "2", "--seed", "1")
    result = json.loads(out)
    assert code == 0 and len(result) == 1 and len(result[0]) == 2
    assert result[0][0]["label"] in imagenet_labels() and result[0][0]["score"] >= result[0][1]["score"]


@requires("tensorflow")
def test_cli_runs_the_nhwc_backends(capsys, imagenet_ckpt, photo_files):
    code, out, _ = _run(capsys, "predict", imagenet_ckpt, photo_files[0], "--json", "--framework", "tensorflow")
    assert code == 0
    assert _labels(json.loads(out)) == _labels(predict(imagenet_ckpt, photo_files[0]))


@pytest.mark.parametrize(
    "argv, message",
    [
        (["{ckpt}", "{dir}/missing.jpg"], "expected an image file, got no such file"),
        (["{ckpt}", "{dir}/notes.txt"], "got a file Pillow cannot identify"),
        (["{ckpt}", "{image}", "--top-k", "0"], "expected a positive integer, got '0'"),
        (["{ckpt}", "{image}", "--framework", "mxnet"], "unknown framework 'mxnet'"),
        (["regnet-y-10b-seer", "{image}"], "expected a checkpoint with a classifier"),
        (["regnet-z-999", "{image}"], "regnet-z-999"),
        (["{dir}", "{image}"], "{dir}"),
        (["{ckpt}"], "the following arguments are required"),
    ],
)
def test_cli_errors_exit_2_with_one_line(capsys, tmp_path, imagenet_ckpt, photo_files, argv, message):
    (tmp_path / "notes.txt").write_text("not an image")
    values = {"ckpt": imagenet_ckpt, "dir": tmp_path, "image": photo_files[0]}
    code, out, err = _run(capsys, "predict", *[arg.format(**values) for arg in argv])
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("regnet: error: ") and message.format(**values) in err

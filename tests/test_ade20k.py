import numpy as np
import pytest
from PIL import Image

from layerprobe.data.preprocess import ade20k
from layerprobe.data.synthetic import write_dataset


def test_label_mapping_reduce_zero_label():
    raw = np.array([[0, 1, 2], [149, 150, 0]], np.uint8)
    out = ade20k.reduce_zero_label(raw)
    assert out.tolist() == [[255, 0, 1], [148, 149, 255]]


def test_label_above_150_names_file(tmp_path):
    path = tmp_path / "bad.png"
    Image.fromarray(np.full((4, 4), 151, np.uint8)).save(path)
    with pytest.raises(ade20k.DatasetError, match="bad.png.*151"):
        ade20k.read_label(path)


def test_class_names_are_ade20k():
    assert len(ade20k.CLASS_NAMES) == 150
    assert ade20k.CLASS_NAMES[0] == "wall" and ade20k.CLASS_NAMES[2] == "sky" and ade20k.CLASS_NAMES[-1] == "flag"


def test_synthetic_dataset_has_ade_layout_and_is_deterministic(tmp_path):
    a = write_dataset(tmp_path / "a" / "ADEChallengeData2016", training=3, validation=2)
    b = write_dataset(tmp_path / "b" / "ADEChallengeData2016", training=3, validation=2)
    assert ade20k.check_layout(a) == {"training": 3, "validation": 2}
    for split in ade20k.SPLITS:
        for sa, sb in zip(ade20k.list_samples(a, split), ade20k.list_samples(b, split)):
            assert sa.image_id == sb.image_id and sa.image_id.startswith("ADE_")
            assert sa.image.read_bytes() == sb.image.read_bytes()
            image, label = ade20k.read_sample(sa)
            assert (image.height, image.width) == label.shape
            present = set(np.unique(label)) - {255}
            assert len(present) >= 2 and max(present) < 150


@pytest.mark.parametrize("fault", ["corrupt_image", "missing_annotation", "size_mismatch", "empty_split"])
def test_bad_dataset_files_are_named(tmp_path, fault):
    root = write_dataset(tmp_path / "ADEChallengeData2016", training=2, validation=1)
    image = root / "images/training/ADE_train_00000001.jpg"
    annotation = root / "annotations/training/ADE_train_00000001.png"
    if fault == "corrupt_image":
        image.write_bytes(b"not a jpeg")
        expected = "ADE_train_00000001.jpg"
    elif fault == "missing_annotation":
        annotation.unlink()
        expected = "ADE_train_00000001.png: missing annotation"
    elif fault == "size_mismatch":
        Image.fromarray(np.ones((5, 5), np.uint8)).save(annotation)
        expected = "ADE_train_00000001.png: size"
    else:
        for f in (root / "images/validation").iterdir():
            f.unlink()
        expected = "validation: empty split"
    with pytest.raises(ade20k.DatasetError, match=expected):
        for split in ade20k.SPLITS:
            for sample in ade20k.list_samples(root, split):
                ade20k.read_sample(sample)


def _exif_jpeg(path, array: np.ndarray, orientation: int) -> None:
    image = Image.fromarray(array)
    exif = image.getexif()
    exif[0x0112] = orientation
    image.save(path, exif=exif, quality=95)


def test_exif_orientation_is_applied_and_logged_as_mmseg_does(tmp_path, caplog):
    """Orientation 6 (rotate 90 CW to display): the pixel at the top-left of the stored image ends
    up at the top-right. A square image keeps its size, so only applying the tag aligns it."""
    stored = np.zeros((8, 8, 3), np.uint8)
    stored[0, 0] = 255
    _exif_jpeg(tmp_path / "x.jpg", stored, 6)
    with caplog.at_level("INFO", logger="layerprobe.ade20k"):
        shown = np.asarray(ade20k.read_image(tmp_path / "x.jpg"))
    assert shown[0, -1].min() > 200 and shown[0, 0].max() < 60
    assert "x.jpg: EXIF orientation 6 applied" in caplog.text
    plain = tmp_path / "plain.jpg"
    Image.fromarray(stored).save(plain, quality=95)
    with caplog.at_level("INFO", logger="layerprobe.ade20k"):
        caplog.clear()
        assert np.asarray(ade20k.read_image(plain))[0, 0].min() > 200 and "EXIF" not in caplog.text


def test_rotated_image_whose_label_no_longer_fits_names_both_files(tmp_path):
    root = write_dataset(tmp_path / "ADEChallengeData2016", training=1, validation=1, height=20, width=30)
    image = root / "images/training/ADE_train_00000001.jpg"
    _exif_jpeg(image, np.asarray(Image.open(image)), 6)  # displayed 20 wide, 30 high; label 30 x 20
    with pytest.raises(ade20k.DatasetError, match=r"ADE_train_00000001.png: size .*ADE_train_00000001.jpg.*EXIF"):
        ade20k.read_sample(ade20k.list_samples(root, "training")[0])


def test_duplicate_stems_are_an_error_naming_both_files(tmp_path):
    root = write_dataset(tmp_path / "ADEChallengeData2016", training=2, validation=1)
    jpg = root / "images/training/ADE_train_00000002.jpg"
    Image.open(jpg).save(jpg.with_suffix(".png"))
    with pytest.raises(ade20k.DatasetError, match=r"ADE_train_00000002.jpg and .*ADE_train_00000002.png"):
        ade20k.check_layout(root)

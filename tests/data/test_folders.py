"""Image-file datasets read back through the registry: imagefolder, imagenet (+ SimCLR lists), labeled_list."""
from pathlib import Path

import pytest
import torch

from semiclust.data.datasets import UNLABELED, build_dataset
from semiclust.data.decode import UnreadableImage, decode_pixels, decode_rgb
from semiclust.data.subsets import CANONICAL_LISTS, choose_labeled, match_list
from semiclust.errors import SemiclustError
from semiclust.config.schema import Labels
from tests.data.files import corrupt, decoded, image_tree, labeled_list_dataset, save, stripes

SIMCLR = Path(__file__).resolve().parents[3] / "shared" / "data" / "simclr_subsets"


def test_decode_reads_png_jpeg_and_bmp_and_names_unreadable_files(tmp_path):
    pixels = stripes(1, 0)
    for suffix in (".png", ".bmp"):  # lossless: exact pixels; BMP goes through the PIL fallback
        assert torch.equal(decode_rgb(save(tmp_path / f"a{suffix}", pixels)), torch.from_numpy(pixels).permute(2, 0, 1))
    jpeg = save(tmp_path / "a.jpg", pixels)
    assert torch.equal(decode_rgb(jpeg), decoded(jpeg))  # same libjpeg decode as PIL's
    with pytest.raises(UnreadableImage, match="not found"):
        decode_rgb(tmp_path / "missing.png")
    with pytest.raises(UnreadableImage) as caught:
        decode_rgb(corrupt(tmp_path / "bad.png"))
    assert caught.value.path.endswith("bad.png") and caught.value.reason


def test_sixteen_bit_png_and_animated_gif_decode_to_uint8_rgb(tmp_path):
    import numpy as np
    from PIL import Image

    ramp = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000)  # 0 .. 63000 in 16 bits
    Image.fromarray(ramp).save(tmp_path / "deep.png")
    decoded16 = decode_rgb(tmp_path / "deep.png")
    assert decoded16.dtype == torch.uint8 and decoded16.shape == (3, 8, 8)
    assert torch.allclose(decoded16[0].float(), torch.from_numpy(ramp / 257.0).float(), atol=1.0)  # scaled, not wrapped
    frames = [Image.fromarray(stripes(i, i)) for i in range(3)]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    assert decode_rgb(tmp_path / "anim.gif").shape == (3, 12, 12)


def test_imagefolder_lists_classes_files_and_eval_split(tmp_path):
    train = image_tree(tmp_path / "train", ["b_class", "a_class"], per_class=3)
    image_tree(tmp_path / "val", ["a_class", "b_class"], per_class=2, start_seed=77)
    dataset = build_dataset("imagefolder", {"root": str(tmp_path)})
    assert dataset.classes == ["a_class", "b_class"] and dataset.problems == [] and dataset.channels == 3
    assert dataset.train.files == [p.relative_to(tmp_path / "train").as_posix() for p in train]
    assert dataset.train.labels.tolist() == [0, 0, 0, 1, 1, 1] and dataset.test.labels.tolist() == [0, 0, 1, 1]
    assert torch.equal(decode_rgb(dataset.train.path(4)), decoded(train[4]))
    assert dataset.mean == (0.485, 0.456, 0.406)
    without_eval = build_dataset("imagefolder", {"root": str(tmp_path), "eval_dir": None})
    assert without_eval.test is None


def test_grey_images_decode_to_one_channel_with_their_values_and_colour_ones_to_their_luma(tmp_path):
    """channels 1: a grey PNG (mode L, or RGB with R = G = B) keeps its values exactly; a colour image becomes its
    ITU-R 601 luma in thousandths, rounded half up (computed here with numpy from PIL's RGB decode)."""
    import numpy as np
    from PIL import Image

    (grey_png,) = image_tree(tmp_path / "grey", ["a"], per_class=1, grey=True)
    with Image.open(grey_png) as image:
        assert image.mode == "L"
        plane = torch.from_numpy(np.asarray(image).copy()).unsqueeze(0)
    assert plane.shape == (1, 12, 12) and torch.equal(decode_pixels(grey_png, channels=1), plane)
    triple = save(tmp_path / "triple.png", np.repeat(plane.permute(1, 2, 0).numpy(), 3, axis=-1))
    assert torch.equal(decode_pixels(triple, channels=1), plane)
    colour = save(tmp_path / "colour.png", stripes(2, 5))
    rgb = decoded(colour).numpy().astype(np.int64)
    luma = torch.from_numpy(((299 * rgb[0] + 587 * rgb[1] + 114 * rgb[2] + 500) // 1000).astype(np.uint8)).unsqueeze(0)
    assert torch.equal(decode_pixels(colour, channels=1), luma) and not np.array_equal(luma[0].numpy(), rgb[0])
    assert torch.equal(decode_pixels(colour), decode_rgb(colour))  # 3 channels: the RGB decode


def test_a_grey_imagefolder_is_one_channel_with_grey_normalisation_and_bad_channels_are_named(tmp_path):
    image_tree(tmp_path / "train", ["a", "b"], per_class=2, grey=True)
    image_tree(tmp_path / "val", ["a", "b"], per_class=1, start_seed=9, grey=True)
    dataset = build_dataset("imagefolder", {"root": str(tmp_path), "channels": 1})
    assert dataset.channels == dataset.train.channels == dataset.test.channels == 1
    assert (dataset.mean, dataset.std) == ((0.449,), (0.226,))
    assert build_dataset("imagefolder", {"root": str(tmp_path)}).channels == 3  # the default stays RGB
    own = build_dataset("imagefolder", {"root": str(tmp_path), "channels": 1, "mean": [0.3], "std": [0.4]})
    assert (own.mean, own.std) == ((0.3,), (0.4,))
    with pytest.raises(SemiclustError, match=r"channels is 2: .* 3 channels \(RGB, the default\) or 1 \(grey"):
        build_dataset("imagefolder", {"root": str(tmp_path), "channels": 2})
    for odd in (True, 1.0, "1"):  # YAML's `yes`, a float, a string: named, not a crash in the loader
        with pytest.raises(SemiclustError, match="channels is"):
            build_dataset("imagefolder", {"root": str(tmp_path), "channels": odd})
    with pytest.raises(SemiclustError, match=r"need one value each \(grey, channels: 1\).*\[0.5, 0.5, 0.5\]"):
        build_dataset("imagefolder", {"root": str(tmp_path), "channels": 1, "mean": [0.5, 0.5, 0.5]})
    listed = labeled_list_dataset(tmp_path / "listed")
    assert build_dataset("labeled_list", {**listed, "channels": 1}).train.channels == 1


def test_imagefolder_reports_empty_class_loose_images_and_unknown_eval_class(tmp_path):
    image_tree(tmp_path / "train", ["a", "b"], per_class=2)
    (tmp_path / "train" / "empty").mkdir()
    save(tmp_path / "train" / "loose.png", stripes(0, 1))
    image_tree(tmp_path / "val", ["a", "zebra"], per_class=1)
    problems = build_dataset("imagefolder", {"root": str(tmp_path)}).problems
    assert any("'empty' has no images" in p for p in problems)
    assert any("outside any class folder" in p for p in problems)
    assert any("'zebra'" in p and "outside the class set" in p for p in problems)


def test_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(SemiclustError, match=r"train' is not a directory.*ImageFolder layout"):
        build_dataset("imagefolder", {"root": str(tmp_path / "nowhere")})
    with pytest.raises(SemiclustError, match="valprep"):
        build_dataset("imagenet", {"root": str(tmp_path / "nowhere")})


def _tiny_imagenet(root: Path, names: dict[str, list[str]]) -> None:
    for wnid, files in names.items():
        for i, name in enumerate(files):
            save(root / "train" / wnid / name, stripes(i % 4, i))
            save(root / "val" / wnid / f"ILSVRC2012_val_{wnid}_{i}.JPEG", stripes(i % 4, 100 + i))


def test_imagenet_subset_from_a_simclr_style_list_of_file_names(tmp_path):
    _tiny_imagenet(tmp_path, {"n01": ["n01_1.JPEG", "n01_2.JPEG", "n01_3.JPEG"], "n02": ["n02_7.JPEG", "n02_9.JPEG"]})
    dataset = build_dataset("imagenet", {"root": str(tmp_path)})
    listing = tmp_path / "my_list.txt"
    listing.write_text("n02_9.JPEG\nn01_2.JPEG\n")
    subset = choose_labeled(dataset.train, Labels(list=listing), 0, dataset.num_classes)
    assert [dataset.train.files[i] for i in subset.indices] == ["n01/n01_2.JPEG", "n02/n02_9.JPEG"]
    assert subset.canonical is None and "custom list" in subset.identity
    listing.write_text("n01_2.JPEG\nn05_1.JPEG\n")
    with pytest.raises(SemiclustError, match=r"1 of its 2 entries name no training image.*'n05_1.JPEG'"):
        choose_labeled(dataset.train, Labels(list=listing), 0, dataset.num_classes)


@pytest.mark.skipif(not SIMCLR.is_dir(), reason="the canonical SimCLR lists live in ../shared, absent here")
@pytest.mark.parametrize("name, count", [("1percent.txt", 12_811), ("10percent.txt", 128_116)])
def test_canonical_simclr_lists_are_recognised_by_hash(tmp_path, name, count):
    listed = (SIMCLR / name).read_text().split()
    assert len(listed) == count
    chosen = listed[:3]  # a tiny ImageNet holding three of the list's images, in their wnid folders
    by_wnid: dict[str, list[str]] = {}
    for file in chosen:
        by_wnid.setdefault(file.split("_")[0], []).append(file)
    _tiny_imagenet(tmp_path, by_wnid)
    dataset = build_dataset("imagenet", {"root": str(tmp_path)})
    match = match_list(SIMCLR / name, dataset.train)
    assert match.canonical == CANONICAL_LISTS[match.sha256] and f"{count:,}" in match.canonical
    assert sorted(dataset.train.files[i].split("/")[1] for i in match.indices) == sorted(chosen)
    assert len(match.missing) == count - 3


def test_labeled_list_reads_csv_unlabeled_folders_and_eval_list(tmp_path):
    options = labeled_list_dataset(tmp_path, per_class=2, unlabeled_per_class=3, eval_per_class=1)
    dataset = build_dataset("labeled_list", options)
    assert dataset.classes == ["cat", "dog", "fox", "owl"] and dataset.problems == []
    labels = dataset.train.labels
    assert labels[:8].tolist() == [0, 0, 1, 1, 2, 2, 3, 3] and (labels[8:] == UNLABELED).all() and len(labels) == 20
    assert all(Path(f).is_absolute() and Path(f).is_file() for f in dataset.train.files)
    assert dataset.test.labels.tolist() == [0, 1, 2, 3]
    subset = choose_labeled(dataset.train, Labels(fraction=1.0), 0, dataset.num_classes)
    assert subset.indices.tolist() == list(range(8)) and subset.description == "every labeled image"


def test_labeled_list_problems_missing_files_unknown_labels_empty_class(tmp_path):
    options = labeled_list_dataset(tmp_path, per_class=1, unlabeled_per_class=1, eval_per_class=1)
    text = (tmp_path / "labels.csv").read_text().replace("labeled/owl0.png,owl", "labeled/gone.png,owl")
    (tmp_path / "labels.csv").write_text(text)
    (tmp_path / "eval.csv").write_text("held_out/cat0.png,cat\nheld_out/dog0.png,wolf\n")
    problems = build_dataset("labeled_list", options).problems
    assert any("1 missing file" in p and "'labeled/gone.png'" in p for p in problems)
    assert any("class 'owl' has no readable labeled image" in p for p in problems)
    assert any("outside the class set" in p and "'wolf'" in p for p in problems)


def test_labeled_list_rejects_malformed_lines_and_sorts_numeric_classes(tmp_path):
    (tmp_path / "bad.csv").write_text("a.png,1\njust-a-path\n")
    with pytest.raises(SemiclustError, match=r"line 2 \('just-a-path'\) is not 'path,label'"):
        build_dataset("labeled_list", {"labeled": str(tmp_path / "bad.csv")})
    for label in ("10", "9", "2"):
        save(tmp_path / f"{label}.png", stripes(0, int(label)))
    (tmp_path / "digits.txt").write_text("10.png 10\n9.png 9\n2.png 2\n")  # whitespace-separated text works too
    assert build_dataset("labeled_list", {"labeled": str(tmp_path / "digits.txt")}).classes == ["2", "9", "10"]

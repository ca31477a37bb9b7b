"""`semiclust data check`: every problem of a damaged folder reported with a non-zero exit; clean data exits 0."""
import copy

import pytest
import yaml

from semiclust.cli import main
from tests.data.files import corrupt, image_tree, labeled_list_dataset
from tests.helpers import TINY_RECIPE


def check(capsys, tmp_path, data: dict, *extra: str) -> tuple[int, str]:
    raw = copy.deepcopy(TINY_RECIPE)
    raw["data"].update(data)
    raw["data"]["loader"] = {"workers": 0}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(SystemExit) as info:
        main(["data", "check", str(path), *extra])
    captured = capsys.readouterr()
    return info.value.code or 0, " ".join((captured.out + captured.err).split())  # rich wraps long lines


def test_folder_with_missing_file_unreadable_image_and_empty_class_fails(capsys, tmp_path):
    image_tree(tmp_path / "train", ["ant", "bee", "cow"], per_class=4)
    image_tree(tmp_path / "val", ["ant", "bee", "cow"], per_class=1, start_seed=50)
    (tmp_path / "train" / "dog").mkdir()  # an empty class
    corrupt(tmp_path / "train" / "bee" / "bee_9.png")  # an unreadable image
    listing = tmp_path / "labeled.txt"
    listing.write_text("ant_0.png\nbee_1.png\ncow_2.png\ncow_404.png\n")  # a missing file
    code, out = check(capsys, tmp_path, {"dataset": "imagefolder", "options": {"root": str(tmp_path)},
                                         "labels": {"list": str(listing)}})
    assert code == 1
    assert "class 'dog' has no images" in out
    assert "unreadable image" in out and "bee_9.png" in out
    assert "1 of its 4 entries name no training image" in out and "'cow_404.png'" in out
    assert "custom list, not a canonical SimCLR list" in out
    assert "ant │ 1 │ 3 │ 1" in out  # class table: labeled / unlabeled / eval


def test_labeled_and_eval_overlap_is_a_problem(capsys, tmp_path):
    options = labeled_list_dataset(tmp_path, per_class=2, unlabeled_per_class=2, eval_per_class=1)
    (tmp_path / "eval.csv").write_text("labeled/cat0.png,cat\nheld_out/dog0.png,dog\n")
    code, out = check(capsys, tmp_path, {"dataset": "labeled_list", "options": options, "labels": {"fraction": 1.0}})
    assert code == 1 and "1 labeled training image(s) also appear in the evaluation set" in out


def test_clean_folder_exits_zero_and_reports_sizes(capsys, tmp_path):
    options = labeled_list_dataset(tmp_path, per_class=2, unlabeled_per_class=2, eval_per_class=1)
    code, out = check(capsys, tmp_path, {"dataset": "labeled_list", "options": options, "labels": {"fraction": 1.0}},
                      "--all")
    assert code == 0 and "no problems found" in out
    assert "(no label) │ - │ 8" in out and "decoded every file" in out and "width 12..12" in out


def test_a_pool_for_a_method_without_labels_has_no_labeled_subset_to_miss(tmp_path):
    """`data check` of a SwAV recipe on a `pool` (the run `label suggest` makes): its clusters have no labeled
    image by design, which is not a problem (it used to be: '30 class(es) have no labeled image', exit 1)."""
    import copy

    from semiclust.data.check import data_report
    from semiclust.config.loader import resolve
    from tests.data.files import image_tree
    from tests.helpers import TINY_RECIPE

    image_tree(tmp_path / "images", ["a", "b"], per_class=6)
    raw = copy.deepcopy(TINY_RECIPE)
    raw["data"].update({"dataset": "pool", "options": {"root": str(tmp_path / "images"), "clusters": 4}})
    raw["method"] = {"name": "swav"}
    report = data_report(resolve(raw))
    assert report.ok, report.problems
    assert report.subset is None and len(report.rows) == 4 and report.unlabeled_only == 12

"""Recipe validation: every error path names the dotted key, the bad value and the closest fix."""
import copy

import pytest
import yaml

from semiclust.errors import SemiclustError
from semiclust.config.loader import apply_overrides, dump_yaml, load_recipe, resolve as validate
from tests.helpers import TINY_RECIPE


def error_for(raw: dict) -> str:
    with pytest.raises(SemiclustError) as info:
        validate(raw, "r.yaml")
    return str(info.value)


def changed(path: str, value) -> dict:
    raw = copy.deepcopy(TINY_RECIPE)
    *parents, last = path.split(".")
    node = raw
    for key in parents:
        node = node[key]
    node[last] = value
    return raw


def test_the_tiny_recipe_is_valid_and_fills_method_defaults():
    recipe = validate(copy.deepcopy(TINY_RECIPE))
    assert recipe.method.assignment.name == "sinkhorn" and recipe.model.head.batchnorm
    daino = validate(changed("method.name", "daino"))
    assert daino.method.assignment.name == "center_sharpen"
    assert daino.model.head.activation == "gelu" and daino.model.head.layers == 3
    assert daino.model.head.hidden == 16  # what the recipe sets wins over the method's default


def test_misspelled_key_names_path_and_suggestion():
    raw = copy.deepcopy(TINY_RECIPE)
    raw["method"]["temperatur"] = 0.2
    message = error_for(raw)
    assert "'method.temperatur' is not a known key" in message
    assert "did you mean 'method.temperature'" in message
    raw = copy.deepcopy(TINY_RECIPE)
    raw["data"]["unlabeled"]["crops"][1]["sizes"] = 4
    message = error_for(raw)
    assert "data.unlabeled.crops[1].sizes" in message and "did you mean 'data.unlabeled.crops[1].size'" in message


def test_misspelled_top_level_and_nested_union_keys():
    raw = copy.deepcopy(TINY_RECIPE)
    raw["schedul"] = {"epochs": 3}
    assert "did you mean 'schedule'" in error_for(raw)
    raw = copy.deepcopy(TINY_RECIPE)
    raw["method"]["assignment"] = {"name": "sinkhorn", "epsilonn": 0.1}
    assert "did you mean 'method.assignment.epsilon'" in error_for(raw)


def test_wrong_type_names_path_and_value():
    message = error_for(changed("schedule.epochs", "many"))
    assert "'schedule.epochs' = 'many'" in message and "integer" in message
    message = error_for(changed("method.label_smoothing", 2.0))
    assert "method.label_smoothing" in message and "less than 1" in message


def test_unknown_registry_names_suggest_the_closest():
    assert "unknown dataset 'digts'. Did you mean 'digits'?" in error_for(changed("data.dataset", "digts"))
    assert "unknown method 'suav'. Did you mean 'suave'?" in error_for(changed("method.name", "suav"))
    message = error_for(changed("model.backbone.name", "resnet18_cifr"))
    assert "unknown backbone 'resnet18_cifr'" in message and "resnet18_cifar" in message
    message = error_for(changed("method.assignment", {"name": "sinkorn"}))
    assert "method.assignment.name" in message and "Did you mean 'sinkhorn'" in message
    message = error_for(changed("optim.name", "lamb"))
    assert "'optim.name' is 'lamb'" in message


def test_cross_field_rules():
    assert "exactly one of per_class, fraction or list" in error_for(changed("data.labels", {"per_class": 2, "fraction": 0.1}))
    raw = changed("method.queue", {"length": 64})
    raw["method"]["assignment"] = {"name": "center_sharpen"}
    assert "method.queue is used only by assignments that take a queue (sinkhorn)" in error_for(raw)
    assert "first 3 unlabeled crops" in error_for(changed("method.target_crops", 3))  # third crop is 4 px
    dino_globals = changed("data.unlabeled", {"crops": [{"count": 1, "size": 8, "blur": {"p": 1.0}},
                                                        {"count": 1, "size": 8, "solarize": 0.2},
                                                        {"count": 2, "size": 4}]})
    assert validate(dino_globals).method.target_crops == 2  # two differently augmented global crops
    assert "count must be 1" in error_for(changed("data.labeled", {"size": 8, "count": 2}))
    assert "cannot exceed 1.0" in error_for(changed("data.labeled", {"size": 8, "scale": [0.5, 1.5]}))


def test_overrides_apply_before_validation_and_are_type_checked(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(TINY_RECIPE))
    recipe = load_recipe(path, ["method.temperature=0.2", "data.batch.unlabeled=32", "method.queue.length=64"])
    assert recipe.method.temperature == 0.2 and recipe.data.batch.unlabeled == 32 and recipe.method.queue.length == 64
    with pytest.raises(SemiclustError, match="'optim.lr' = 'fast'"):
        load_recipe(path, ["optim.lr=fast"])
    with pytest.raises(SemiclustError, match="did you mean 'optim.momentum'"):
        load_recipe(path, ["optim.momentun=0.5"])
    with pytest.raises(SemiclustError, match="key.path=value"):
        load_recipe(path, ["optim.lr"])
    with pytest.raises(SemiclustError, match="holds a value"):
        apply_overrides(TINY_RECIPE, ["seed.value=3"])


def test_a_number_in_an_override_indexes_a_list():
    """`data.unlabeled.crops.1.count=2` changes the second crop group only; a bad index names the valid ones."""
    changed = apply_overrides(TINY_RECIPE, ["data.unlabeled.crops.1.count=3", "data.unlabeled.crops.0.erase.p=0.5"])
    crops, before = changed["data"]["unlabeled"]["crops"], TINY_RECIPE["data"]["unlabeled"]["crops"]
    assert crops[1]["count"] == 3 and crops[0]["erase"] == {"p": 0.5} and crops[0]["size"] == before[0]["size"]
    assert "erase" not in before[0] and before[1]["count"] != 3  # the recipe given is left as it was
    assert validate(changed).data.unlabeled.crops[0].erase.p == 0.5
    with pytest.raises(SemiclustError, match=r"is a list of 2 item\(s\), so its keys are the indices 0 to 1, not '2'"):
        apply_overrides(TINY_RECIPE, ["data.unlabeled.crops.2.count=3"])
    with pytest.raises(SemiclustError, match="not 'first'"):
        apply_overrides(TINY_RECIPE, ["data.unlabeled.crops.first.count=3"])
    with pytest.raises(SemiclustError, match="not 'x'"):
        apply_overrides(TINY_RECIPE, ["data.unlabeled.crops.x=3"])


def test_an_override_of_one_assignment_key_keeps_the_methods_assignment():
    """`--set method.assignment.epsilon=0.1` on a recipe that names no assignment changes that key of the method's
    own (Suave: sinkhorn) and keeps its other defaults; naming another assignment still works."""
    raw = copy.deepcopy(TINY_RECIPE)
    raw["method"] = {"name": "suave"}
    recipe = validate(apply_overrides(raw, ["method.assignment.epsilon=0.1"]))
    assert (recipe.method.assignment.name, recipe.method.assignment.epsilon, recipe.method.assignment.iterations) == (
        "sinkhorn", 0.1, 3)
    daino = validate(apply_overrides({**raw, "method": {"name": "daino"}}, ["method.assignment.temperature=0.05"]))
    assert (daino.method.assignment.name, daino.method.assignment.temperature) == ("center_sharpen", 0.05)
    other = validate(apply_overrides(raw, ["method.assignment.name=center_sharpen"]))
    assert other.method.assignment.name == "center_sharpen"


def test_file_errors(tmp_path):
    with pytest.raises(SemiclustError, match="does not exist"):
        load_recipe(tmp_path / "missing.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: x\ndata: [unclosed\n")
    with pytest.raises(SemiclustError, match="not valid YAML"):
        load_recipe(broken)
    listing = tmp_path / "list.yaml"
    listing.write_text("- a\n- b\n")
    with pytest.raises(SemiclustError, match="must be a YAML mapping"):
        load_recipe(listing)


def test_dump_round_trips_exactly():
    recipe = validate(copy.deepcopy(TINY_RECIPE))
    assert validate(yaml.safe_load(dump_yaml(recipe))) == recipe


def test_shipped_recipes_validate():
    from semiclust.config.shipped import shipped_recipes

    shipped = shipped_recipes()
    assert {"digits_suave", "digits_daino", "digits_supervised"} <= set(shipped)
    for path in shipped.values():
        load_recipe(path)


def test_a_bare_off_for_data_cache_means_off_as_yaml_reads_it():
    """`--set data.cache=off` and `cache: off` in YAML arrive as False (YAML 1.1); they mean "off", not an error."""
    from semiclust.config.loader import load_recipe

    assert load_recipe("digits_suave", ["data.cache=off"]).data.cache == "off"
    assert load_recipe("digits_suave", ["data.cache=auto"]).data.cache == "auto"


@pytest.mark.parametrize("method, key, value, owners", [
    ("supervised", "queue", {"length": 64}, "suave, swav"),
    ("daino", "queue", {"length": 64, "start_epoch": 1}, "suave, swav"),
    ("suave", "teacher", {"momentum": 0.996}, "daino, dino"),
    ("supervised", "teacher", {"momentum_end": 0.999}, "daino, dino"),
])
def test_an_option_the_chosen_method_does_not_take_is_an_error_naming_the_method(method, key, value, owners):
    """Each method owns its recipe section (issue 26): a `supervised` recipe with method.queue.length: 64 validated,
    and the queue was silently never built."""
    raw = changed(f"method.{key}", value)
    raw["method"]["name"] = method
    assert f"method '{method}' does not take '{key}' (an option of {owners})" in error_for(raw)


def test_a_recipe_written_before_methods_owned_their_sections_still_reads():
    """`semiclust recipe show` printed method.queue and method.teacher for every method: a recipe that carries the
    one its method does not take, at its old defaults, reads as before (the section is dropped); one whose value
    would now be ignored is refused (above). The recipe of every shipped method shows only its own section."""
    from semiclust.config.loader import resolve

    for method in ("suave", "swav", "daino", "dino", "supervised"):
        raw = copy.deepcopy(TINY_RECIPE)
        raw["method"] = {"name": method, "queue": {"length": 0, "start_epoch": 0},
                         "teacher": {"momentum": 0.99, "momentum_end": 1.0}}
        dumped = resolve(raw).model_dump(mode="json")["method"]
        assert ("queue" in dumped) == (method in ("suave", "swav"))
        assert ("teacher" in dumped) == (method in ("daino", "dino"))


def test_a_saved_recipe_keeps_loading_with_the_sections_its_method_ignored():
    """A checkpoint or run directory of an earlier version saved every method's recipe with both sections, whatever
    they held (a value there did nothing): it reads back with the section its method does not take dropped."""
    from semiclust.config.validation import validate_saved

    saved = validate(copy.deepcopy(TINY_RECIPE)).model_dump(mode="json")
    saved["method"]["teacher"] = {"momentum": 0.5, "momentum_end": 0.7}  # ignored by suave then
    recipe = validate_saved(saved, "the checkpoint's recipe")
    assert recipe.method.queue.length == 0 and "teacher" not in recipe.model_dump(mode="json")["method"]

"""`semiclust export --format hub --out DIR`: the folder timm loads and the Hugging Face Hub publishes.

timm reads a model from a folder holding `config.json` and `model.safetensors`:
`timm.create_model('local-dir:DIR', pretrained=True)`; the same folder, uploaded (`huggingface-cli upload`,
or timm's `push_to_hf_hub` for a model in memory), loads with `hf-hub:USER/REPO`. The folder holds the
backbone under timm's names (what `--content backbone` exports), timm's config (architecture, the model
arguments training used, num_classes 0, the evaluation preprocessing), `recipe.yaml` and a model card
(`README.md`: method, data, labeled subset hashes, the evaluation and its protocol, versions).
"""
from __future__ import annotations

import json
from pathlib import Path

import yaml

from semiclust.engine.checkpoint import Checkpoint, classifier_network, load_checkpoint, with_network
from semiclust.errors import SemiclustError
from semiclust.export.safetensors import export_metadata, timm_load_code
from semiclust.methods import METHODS
from semiclust.models.backbones import HUB_WEIGHTS
from semiclust.storage.atomic import write_text
from semiclust.storage.tensors import write_safetensors
from semiclust.config.validation import dump_yaml

HUB_FILES = ("config.json", HUB_WEIGHTS, "README.md", "recipe.yaml")
MAX_CONFIG_BYTES = 1 << 20  # a hub config.json semiclust writes is a few KB


def dict_or_empty(value) -> dict:
    return value if isinstance(value, dict) else {}


def check_hub_folder(out: Path) -> None:
    """`--out` must be a new or empty folder, or a previous hub export (whose files are replaced)."""
    if out.exists() and not out.is_dir():
        raise SemiclustError(f"--out '{out}' is a file; --format hub writes a folder: give a new folder's path.")
    if not out.is_dir() or not any(out.iterdir()):
        return
    config = out / "config.json"
    try:  # a config.json of any size or shape is read no further than needed to tell
        previous = config.stat().st_size <= MAX_CONFIG_BYTES and "semiclust" in dict_or_empty(json.loads(config.read_text()))
    except (OSError, ValueError, RecursionError):
        previous = False
    if not previous:
        raise SemiclustError(f"--out '{out}' is a folder that already holds files and is not a previous `semiclust "
                             "export --format hub`; give a new or empty folder (nothing in it was changed).")


def hub_config(metadata: dict[str, str], backbone) -> dict:
    """timm's config.json: what `timm.create_model('local-dir:...')` builds (architecture, model_args, no
    classifier) and the preprocessing of semiclust's evaluation view (input size, crop, mean/std)."""
    view, cfg = json.loads(metadata["eval_view"]), getattr(backbone, "pretrained_cfg", None) or {}
    model_args = {**json.loads(metadata["timm_kwargs"]), "in_chans": int(metadata["in_chans"])}
    pretrained_cfg = {
        "input_size": json.loads(metadata["input_size"]), "interpolation": view["interpolation"],
        "crop_pct": view["size"] / (view["resize"] or view["size"]), "crop_mode": "center",
        "mean": json.loads(metadata["mean"]), "std": json.loads(metadata["std"]), "num_classes": 0,
        # a fixed-size model is rebuilt at input_size; training already ran it at the evaluation size
        "fixed_input_size": bool(cfg.get("fixed_input_size")) and not model_args.get("dynamic_img_size"),
        **{key: cfg[key] for key in ("first_conv", "classifier") if cfg.get(key)},
    }
    provenance = {key: metadata[key] for key in ("recipe_name", "recipe_sha256", "labeled_sha256", "step",
                                                 "semiclust_version", "network")}
    return {"architecture": metadata["architecture"], "num_classes": 0, "num_features": backbone.num_features,
            "model_args": model_args, "pretrained_cfg": pretrained_cfg,
            "semiclust": {**provenance, "classes": json.loads(metadata["classes"]), "format_version": metadata["format_version"]}}


def card_data(checkpoint: Checkpoint) -> list[str]:
    """The model card's data section: the data set, and which training images had labels (with hashes)."""
    data, labels = checkpoint.recipe["data"], checkpoint.recipe["data"]["labels"]
    drawn = {k: v for k, v in labels.items() if v is not None}
    lines = [f"- data set: `{data['dataset']}` with options `{json.dumps(data['options'], sort_keys=True)}`, "
             f"{len(checkpoint.classes)} classes",
             f"- labeled subset: {len(checkpoint.labeled_indices)} training images (`data.labels`: "
             f"`{json.dumps(drawn)}`), SHA-256 of the sorted indices `{checkpoint.labeled_sha256}`"]
    if checkpoint.labeled_list_sha256:
        lines.append(f"- labeled list file SHA-256 `{checkpoint.labeled_list_sha256}`")
    if checkpoint.recipe["method"]["name"] == "supervised":
        return lines + ["- training used the labeled images only"]
    if checkpoint.classifier.matched:
        return lines + ["- training used no labels (the labeled subset is only the kNN diagnostic's memory)"]
    return lines + ["- every training image was also used without its label (the unlabeled stream)"]


def card_evaluation(checkpoint: Checkpoint) -> list[str]:
    """The evaluation result and its protocol: which network, which split and view, and which step."""
    info, view, step = checkpoint.classifier, checkpoint.recipe["data"]["eval"], checkpoint.step
    network = "the EMA teacher" if info.prefix == "teacher" else "the trained network"
    if checkpoint.eval is None:
        return [f"No evaluation: the data set has no evaluation split (step {step})."]
    result = checkpoint.eval
    matched = " (prototypes matched to classes by the Hungarian algorithm)" if info.matched else ""
    return [f"- top-1 **{result['top1']:.2f}%**, top-5 {result['top5']:.2f}% on the {result['n']} images of the "
            f"`{result['split']}` split",
            f"- protocol: the prototype classifier of {network} (argmax of the prototype scores{matched}), one "
            f"centre view (`{json.dumps(view)}`), evaluated once at the **final** step {step} "
            "(not the best evaluation during training)",
            "- this folder holds the backbone only (the features that classifier used); export the whole classifier "
            "with `semiclust export --content classifier` or `--format onnx`"]


def model_card(checkpoint: Checkpoint, metadata: dict[str, str], folder: Path) -> str:
    """README.md of the folder: a Hugging Face model card (front matter) saying what the model is and how it was made."""
    recipe, name = checkpoint.recipe, checkpoint.recipe["method"]["name"]
    load = "\n".join(line.replace(str(folder), "DIR") for line in timm_load_code(metadata, str(folder)))
    front = {"library_name": "timm", "tags": ["semiclust", name, "semi-supervised", "image-feature-extraction"]}
    return "\n".join([
        "---", yaml.safe_dump(front, sort_keys=False).strip(), "---", "",
        f"# {recipe['name']}: {metadata['architecture']} trained with {name}", "",
        f"A `{metadata['architecture']}` backbone trained by semiclust {metadata['semiclust_version']} with "
        f"`{name}` ({METHODS.summary(name) if name in METHODS.names() else name}).", "",
        "## Load", "", "```python", load, "```", "",
        "Published on the Hugging Face Hub, the same call takes `hf-hub:USER/REPO` instead of `local-dir:DIR`.", "",
        "## Preprocessing", "",
        f"Evaluation view `{metadata['eval_view']}`, mean `{metadata['mean']}`, std `{metadata['std']}`, "
        f"input size `{metadata['input_size']}` (also in config.json's `pretrained_cfg`).", "",
        "## Data", "", *card_data(checkpoint), "",
        "## Evaluation", "", *card_evaluation(checkpoint), "",
        "## Recipe", "",
        f"`recipe.yaml` in this folder is the recipe exactly as it ran (`{recipe['name']}`, SHA-256 of its canonical "
        f"JSON `{metadata['recipe_sha256']}`); `semiclust train recipe.yaml` trains it again.", "",
        "## Versions", "",
        f"semiclust {metadata['semiclust_version']}, checkpoint step {metadata['step']}, export format "
        f"{metadata['format_version']}.", ""])


def export_hub(checkpoint: Path, out: Path, network: str | None = None) -> dict[str, str]:
    """Write the hub-format folder of a checkpoint's evaluated backbone (Daino: the teacher's) to `out`; each file
    is written atomically and config.json last, so a folder with a new config.json is complete."""
    out = Path(out)
    check_hub_folder(out)
    chosen = with_network(load_checkpoint(Path(checkpoint)), network)
    network, recipe = classifier_network(chosen)
    metadata = {**export_metadata(chosen, "backbone"), "file_format": "hub"}
    tensors = {k: v.detach().contiguous().cpu() for k, v in network.backbone.state_dict().items()}
    write_safetensors(tensors, metadata, out / HUB_WEIGHTS)
    write_text(out / "recipe.yaml", dump_yaml(recipe))  # as the run directory's recipe.yaml
    write_text(out / "README.md", model_card(chosen, metadata, out))
    write_text(out / "config.json", json.dumps(hub_config(metadata, network.backbone), indent=2) + "\n")
    return metadata

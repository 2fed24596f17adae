"""Class prompts for the cross-modal kind: MedMNIST's own label names, cleaned up, in per-modality templates.

A label name is public (it is in `medmnist.INFO`), so prompts may be shared and used as negatives by
any site. The clean-up map turns MedMNIST's raw names into what a radiology or pathology text would
say ("femur-left" -> "left femur"); the templates say which modality the image is ("a chest x-ray
showing pneumonia."). Each modality has one training template and held-out paraphrases for the
unseen-prompt test (MedCT-VLM's unseen text prompts). Multi-label sets (ChestMNIST) are scored per
class with CT-CLIP's prompt pair: "{finding}." against "not {finding}.", in the same template.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..data.medmnist_source import _medmnist_info, canonical_flag
from ..metrics import MULTI_LABEL

# Raw MedMNIST label -> what a clinical text would call it. Labels that read well already are not listed.
CLEAN_LABELS: dict[str, dict[str, str]] = {
    "bloodmnist": {
        "immature granulocytes(myelocytes, metamyelocytes and promyelocytes)": "immature granulocyte",
    },
    "breastmnist": {"normal, benign": "benign or normal tissue", "malignant": "malignant tumor"},
    "pneumoniamnist": {"normal": "normal lungs"},
    "retinamnist": {str(g): f"diabetic retinopathy grade {g}" for g in range(5)},
    "tissuemnist": {
        "Collecting Duct, Connecting Tubule": "collecting duct or connecting tubule",
        "Distal Convoluted Tubule": "distal convoluted tubule", "Glomerular endothelial cells":
        "glomerular endothelial cells", "Interstitial endothelial cells": "interstitial endothelial cells",
        "Leukocytes": "leukocytes", "Podocytes": "podocytes", "Proximal Tubule Segments": "proximal tubule",
        "Thick Ascending Limb": "thick ascending limb",
    },
    "chestmnist": {"pleural": "pleural thickening"},
    "octmnist": {"normal": "a normal retina"},
    **{flag: {"femur-left": "left femur", "femur-right": "right femur", "kidney-left": "left kidney",
              "kidney-right": "right kidney", "lung-left": "left lung", "lung-right": "right lung"}
       for flag in ("organamnist", "organcmnist", "organsmnist")},
}


@dataclass(frozen=True)
class Templates:
    train: str  # the one prompt template sites train with
    unseen: tuple[str, ...]  # paraphrases never seen in training (the unseen-prompt test)
    modality: str  # the modality's public name as a prompt (the first stage of two-stage routing)


# "{}" is the cleaned label. The modality word is in every template: it is what tells modalities apart.
TEMPLATES: dict[str, Templates] = {
    "bloodmnist": Templates("a blood cell microscopy image, cell type: {}.",
                            ("a peripheral blood smear showing this cell: {}.",
                             "stained blood cell under a microscope: {}."),
                            "a blood cell microscopy image."),
    "breastmnist": Templates("a breast ultrasound image of {}.",
                             ("breast sonography showing {}.", "an ultrasound scan of the breast with {}."),
                             "a breast ultrasound image."),
    "organamnist": Templates("an axial abdominal CT slice of the {}.",
                             ("a computed tomography image, axial view, showing the {}.",
                              "axial CT of the abdomen centred on the {}."),
                             "an axial abdominal CT slice."),
    "organcmnist": Templates("a coronal abdominal CT slice of the {}.",
                             ("a computed tomography image, coronal view, showing the {}.",
                              "coronal CT of the abdomen centred on the {}."),
                             "a coronal abdominal CT slice."),
    "organsmnist": Templates("a sagittal abdominal CT slice of the {}.",
                             ("a computed tomography image, sagittal view, showing the {}.",
                              "sagittal CT of the abdomen centred on the {}."),
                             "a sagittal abdominal CT slice."),
    "pneumoniamnist": Templates("a pediatric chest x-ray of {}.",
                                ("a chest radiograph of a child showing {}.", "a frontal chest x-ray with {}."),
                                "a pediatric chest x-ray."),
    "chestmnist": Templates("a chest x-ray showing {}.",
                            ("a frontal chest radiograph with {}.", "chest radiography: {}."),
                            "a chest x-ray."),
    "dermamnist": Templates("a dermatoscopy image of {}.",
                            ("a dermoscopic photograph of a skin lesion: {}.", "skin lesion imaging showing {}."),
                            "a dermatoscopy image of a skin lesion."),
    "pathmnist": Templates("a colorectal histopathology image of {}.",
                           ("an H&E stained colon tissue patch showing {}.", "histology of colorectal tissue: {}."),
                           "a colorectal histopathology image."),
    "octmnist": Templates("a retinal OCT scan showing {}.",
                          ("optical coherence tomography of the retina with {}.", "an OCT B-scan showing {}."),
                          "a retinal OCT scan."),
    "retinamnist": Templates("a retinal fundus photograph with {}.",
                             ("a fundus image of the eye showing {}.", "retinal photography: {}."),
                             "a retinal fundus photograph."),
    "tissuemnist": Templates("a kidney cortex microscopy image of {}.",
                             ("a microscopy image of renal tissue showing {}.", "kidney histology: {}."),
                             "a kidney cortex microscopy image."),
}
NEGATION = "no {}"  # CT-CLIP's "not {pathology}" pair prompt, worded as a report would


OWN_TEMPLATE = "a medical image of {}."  # a site's own classes, unless its registration sets a template


def supported_flags() -> list[str]:
    return sorted(TEMPLATES)


def class_names(flag: str) -> list[str]:
    """The cleaned label of every class of a MedMNIST set, in class-index order."""
    flag = canonical_flag(flag)
    labels = _medmnist_info().INFO[flag]["label"]
    clean = CLEAN_LABELS.get(flag, {})
    return [clean.get(labels[str(i)], labels[str(i)]) for i in range(len(labels))]


def is_multi_label(flag: str) -> bool:
    return _medmnist_info().INFO[canonical_flag(flag)]["task"] == MULTI_LABEL


def _templates(flag: str) -> Templates:
    flag = canonical_flag(flag)
    if flag not in TEMPLATES:
        raise ValueError(f"the cross-modal kind has no prompt templates for {flag!r}; supported: {supported_flags()}")
    return TEMPLATES[flag]


def class_prompts(flag: str, template: str | None = None) -> list[str]:
    """One prompt per class (multi-class and binary sets), in class-index order."""
    template = template or _templates(flag).train
    return [template.format(name) for name in class_names(flag)]


def pair_prompts(flag: str, template: str | None = None) -> list[str]:
    """Multi-label sets: per class, the finding's prompt then its negation's (2 x classes prompts, interleaved)."""
    template = template or _templates(flag).train
    return [template.format(text) for name in class_names(flag) for text in (name, NEGATION.format(name))]


def site_prompts(flag: str, template: str | None = None) -> list[str]:
    """The prompts a site of `flag` scores its images against (pairs for multi-label sets)."""
    return pair_prompts(flag, template) if is_multi_label(flag) else class_prompts(flag, template)


def unseen_templates(flag: str) -> tuple[str, ...]:
    return _templates(flag).unseen


def own_prompts(class_names: tuple[str, ...] | list[str], multi_label: bool, template: str = "") -> list[str]:
    """A site with its own images: its class names in its own template (pairs with their negation when
    multi-label), so that a hospital's vocabulary becomes the generalist's prompts."""
    template = template or OWN_TEMPLATE
    if template.count("{}") != 1:
        raise ValueError(f"prompt template {template!r} must hold {{}} once, where the class name goes")
    if multi_label:
        return [template.format(text) for name in class_names for text in (name, NEGATION.format(name))]
    return [template.format(name) for name in class_names]


def vocabulary(exclude: str = "") -> list[str]:
    """Every other supported modality's class prompts: public negatives, so that a site's training also
    pushes its images away from other modalities' classes (without them nothing separates modalities).
    A site with its own images (exclude="") gets every supported modality's."""
    own = canonical_flag(exclude) if exclude else ""
    return [p for flag in supported_flags() if flag != own for p in class_prompts(flag)]


def modality_prompt(flag: str) -> str:
    """The modality's public name as a prompt ("a pediatric chest x-ray."): two-stage routing's first stage."""
    return _templates(flag).modality


def ensemble_templates(flag: str) -> tuple[str, ...]:
    """Every template of a set, the training one first: a prompt ensemble averages a class over them."""
    return (_templates(flag).train, *_templates(flag).unseen)

"""A site with its own images in the cross-modal kind: its class names, in the template it registered, are its
prompts (what the coordinator never needs: prompts are built at the site); held-out paraphrases are left out,
the union of labels counts it (the run's MedMNIST blocks and its own)."""

import csv
from types import SimpleNamespace

import pytest

from fl_medlego.cli import main
from fl_medlego.config import parse_run_config
from fl_medlego.crossmodal import metrics as metrics_of
from fl_medlego.site import load_site_data

TINY = {"kind": "cross-modal", "data.max-train": 24, "data.max-eval": 24, "train.local-epochs": 1,
        "train.batch-size": 12, "lora.rank": 2}
TEMPLATE = "a peripheral blood smear showing a {}."
SYNONYMS = {"basophil": "basophilic granulocyte", "eosinophil": "eosinophilic granulocyte",
            "erythroblast": "nucleated red blood cell", "lymphocyte": "lymphoid cell",
            "monocyte": "mononuclear phagocyte", "neutrophil": "segmented neutrophil granulocyte",
            "platelet": "thrombocyte"}


def test_a_cross_modal_site_reads_its_own_class_names_in_its_own_template(tmp_path, monkeypatch):
    monkeypatch.setenv("FL_MEDLEGO_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("FL_MEDLEGO_DATASETS", str(tmp_path / "registry"))
    assert main(["data", "export", "blood", "--to", str(tmp_path / "export")]) == 0
    # The hospital's own words for blood's classes (synonyms, not MedMNIST's names): classes.txt and manifest.
    classes, manifest = tmp_path / "export" / "classes.txt", tmp_path / "export" / "manifest.csv"
    names = classes.read_text().splitlines()
    classes.write_text("\n".join(SYNONYMS.get(name, name) for name in names) + "\n")
    with manifest.open(newline="") as f:
        rows = [{**row, "label": SYNONYMS.get(row["label"], row["label"])} for row in csv.DictReader(f)]
    with manifest.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    assert main(["site", "data", "add", "smears", "--source", "manifest", "--path", str(manifest),
                 "--prompt-template", TEMPLATE]) == 0

    cfg = parse_run_config({**TINY, "sites": "blood,smears"})
    data = load_site_data(cfg, "smears", {"dataset": "smears"})
    assert set(SYNONYMS.values()) <= set(data.class_names) and data.prompt_template == TEMPLATE
    trainer = cfg.kind_site()
    model = trainer.build_model(data, None, None)
    assert model.prompts == [TEMPLATE.format(name) for name in data.class_names]

    result = trainer.train(data, None, None)
    assert result.state.head == {}
    scores = trainer.evaluate(data, result.update, None)
    assert set(scores) >= {"acc", "auc", "f1", "loss"} and 0 <= scores["acc"] <= 1
    # held-out paraphrases exist for MedMNIST sets only; the union test counts the site: blood's 8 prompts and
    # its own 8 at once. Its own class on top implies its own block on top, and its own prompts on top.
    assert metrics_of.UNSEEN_PREFIX + "acc" not in scores
    assert 0 <= scores[metrics_of.UNION_ACC] <= scores[metrics_of.MODALITY_SHARE] <= 1
    assert scores[metrics_of.UNION_ACC] <= scores["acc"] + 1e-6  # float32 against float64


def test_a_template_without_a_place_for_the_name_is_refused(tmp_path, monkeypatch, capsys):
    from fl_medlego.crossmodal.prompts import own_prompts

    with pytest.raises(ValueError, match="must hold"):
        own_prompts(("a", "b"), False, "a chest x-ray")
    assert own_prompts(("effusion",), True, "x {}") == ["x effusion", "x no effusion"]
    monkeypatch.setenv("FL_MEDLEGO_DATASETS", str(tmp_path / "registry"))
    assert main(["data", "export", "breast", "--to", str(tmp_path / "export")]) == 0
    assert main(["site", "data", "add", "us", "--source", "manifest", "--path", str(tmp_path / "export" /
                 "manifest.csv"), "--prompt-template", "a breast ultrasound", "--no-check"]) == 2
    assert "--prompt-template" in capsys.readouterr().out and not (tmp_path / "registry").exists()


def test_the_union_of_labels_finds_each_images_block_and_class(monkeypatch):
    """Prompts embedded as one-hot directions: an image equal to a prompt's direction tops that prompt. The own
    block may be anywhere (a MedMNIST site's place in the run, or last for a site with its own images)."""
    import torch

    from fl_medlego.crossmodal import scoring

    blocks = [["a0", "a1", "a2"], ["b0", "b1"], ["own0", "own1"]]
    prompts = [p for block in blocks for p in block]
    directions = torch.eye(len(prompts))
    # the modality names of two-stage routing: own's points at own0 only, so an image like own1 is named "a"
    # (all names score 0 for it: the first wins)
    names = {"name-a": directions[:3].sum(0) / 3 ** 0.5, "name-b": directions[3:5].sum(0) / 2 ** 0.5,
             "name-own": directions[5]}
    monkeypatch.setattr(scoring, "_text_embeddings",
                        lambda model, ps: torch.stack([names[p] if p in names else directions[prompts.index(p)]
                                                       for p in ps]))
    # four images of the own block (labels 0, 1, 1, 0): tops own0 (right), own1 (right), own0 (wrong class,
    # right block), a2 (wrong block)
    images = directions[[5, 6, 5, 2]]
    labels = torch.tensor([0, 1, 1, 0])
    model = SimpleNamespace(logit_scale=30.0)
    scores = scoring.union_of_labels(model, images, labels, blocks, own=2)
    # pooled routing picks the block of each image's top prompt here (one prompt at 30, the rest at 0), and the
    # class inside the own block is right for images 0 and 1 only
    assert scores == {metrics_of.UNION_ACC: 0.5, metrics_of.MODALITY_SHARE: 0.75,
                      "pooled-route-share": 0.75, "pooled-route-acc": 0.5}
    named = scoring.union_of_labels(model, images, labels, blocks, own=2, names=list(names))
    assert named["named-route-share"] == 0.5 and named["named-route-acc"] == 0.25  # images 0, 2 named own; 0 right
    # the same images read as block b's (own=1): prompts 3 and 4 are b's, so none is inside it
    b = scoring.union_of_labels(model, images, labels, blocks, own=1)
    assert b[metrics_of.MODALITY_SHARE] == 0.0 and b["pooled-route-share"] == 0.0


def test_pooled_routing_can_choose_a_block_whose_prompts_agree_over_a_single_top_prompt(monkeypatch):
    """Two-stage routing's pooled score is a log-sum-exp per block: a block whose prompts all score high beats a
    block with one slightly higher prompt, which the flat union's argmax would pick."""
    import torch

    from fl_medlego.crossmodal import scoring

    blocks = [["a0", "a1", "a2"], ["b0"]]
    cosine = {"a0": 0.9, "a1": 0.9, "a2": 0.9, "b0": 0.92}  # of the one image with each prompt
    monkeypatch.setattr(scoring, "_text_embeddings", lambda model, ps: torch.tensor([[cosine[p]] for p in ps]))
    scores = scoring.union_of_labels(SimpleNamespace(logit_scale=30.0), torch.ones(1, 1), torch.tensor([0]), blocks,
                                     own=0)
    assert scores[metrics_of.MODALITY_SHARE] == 0.0  # the flat argmax: b0
    assert scores["pooled-route-share"] == 1.0 and scores["pooled-route-acc"] == 1.0  # 30*0.9 + log 3 > 30*0.92


def test_a_prompt_shared_word_for_word_with_a_medmnist_set_counts_as_the_sites_own():
    """The README's example template is ChestMNIST's training template; an own class named like a MedMNIST class
    gives the same prompt, which must not sit in two blocks (the tie would go to the MedMNIST block)."""
    from fl_medlego.crossmodal.prompts import class_prompts, own_prompts
    from fl_medlego.crossmodal.scoring import own_site_blocks

    blood = class_prompts("blood")
    mine = own_prompts(["neutrophil", "blast"], False, "a blood cell microscopy image, cell type: {}.")
    assert mine[0] in blood  # the same words as blood's neutrophil prompt
    blocks = own_site_blocks(["blood", "breast"], mine)
    assert blocks[-1] == mine and mine[0] not in blocks[0] and len(blocks[0]) == len(blood) - 1
    assert blocks[1] == class_prompts("breast")
    assert sum(map(len, blocks)) == len({p for block in blocks for p in block})  # every prompt once

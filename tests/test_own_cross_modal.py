"""A site with its own images in the cross-modal kind: its class names, in the template it registered, are its
prompts (what the coordinator never needs: prompts are built at the site); the MedMNIST-only tests are left out."""

import pytest

from fl_medlego.cli import main
from fl_medlego.config import parse_run_config
from fl_medlego.crossmodal import metrics as metrics_of
from fl_medlego.site import load_site_data

TINY = {"kind": "cross-modal", "data.max-train": 24, "data.max-eval": 24, "train.local-epochs": 1,
        "train.batch-size": 12, "lora.rank": 2}
TEMPLATE = "a peripheral blood smear showing a {}."


def test_a_cross_modal_site_reads_its_own_class_names_in_its_own_template(tmp_path, monkeypatch):
    monkeypatch.setenv("FL_MEDLEGO_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("FL_MEDLEGO_DATASETS", str(tmp_path / "registry"))
    assert main(["data", "export", "blood", "--to", str(tmp_path / "export")]) == 0
    classes = tmp_path / "export" / "classes.txt"
    renamed = ["segmented neutrophil granulocyte" if c == "neutrophil" else c for c in classes.read_text().split("\n")]
    classes.write_text("\n".join(renamed))  # the hospital's own word for a class: its manifest says it too
    manifest = tmp_path / "export" / "manifest.csv"
    manifest.write_text(manifest.read_text().replace(",neutrophil,", ",segmented neutrophil granulocyte,"))
    assert main(["site", "data", "add", "smears", "--source", "manifest", "--path", str(manifest),
                 "--prompt-template", TEMPLATE]) == 0

    cfg = parse_run_config({**TINY, "sites": "blood,smears"})
    data = load_site_data(cfg, "smears", {"dataset": "smears"})
    assert "segmented neutrophil granulocyte" in data.class_names and data.prompt_template == TEMPLATE
    trainer = cfg.kind_site()
    model = trainer.build_model(data, None, None)
    assert model.prompts == [TEMPLATE.format(name) for name in data.class_names]

    result = trainer.train(data, None, None)
    assert result.state.head == {}
    scores = trainer.evaluate(data, result.update, None)
    assert set(scores) >= {"acc", "auc", "f1", "loss"} and 0 <= scores["acc"] <= 1
    # held-out paraphrases and the union of MedMNIST labels exist for MedMNIST sets only
    assert metrics_of.UNION_ACC not in scores and metrics_of.UNSEEN_PREFIX + "acc" not in scores


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

"""A site refuses to start without readable data, certificate and key, and says which."""

import pytest

from fl_medlego.cli import main
from fl_medlego.clients.site_node import SiteNodeConfig, check_site, create_site_keys, supernode_command
from fl_medlego.errors import UserError


def write_config(tmp_path, data_root="bundled", site="blood"):
    key, _ = create_site_keys(tmp_path, site)
    (tmp_path / "ca.crt").write_text("-----BEGIN CERTIFICATE-----\n")
    path = tmp_path / "site.toml"
    path.write_text(f'site = "{site}"\ndata-root = "{data_root}"\nsuperlink = "127.0.0.1:8000"\n'
                    f'root-certificates = "ca.crt"\nprivate-key = "{key.name}"\nport = 9100\n')
    return path


def test_a_good_site_config_builds_the_supernode_command(tmp_path):
    config = SiteNodeConfig.from_file(write_config(tmp_path))
    assert "bundled sample of bloodmnist" in check_site(config)
    command = " ".join(supernode_command(config))
    assert "--auth-supernode-private-key" in command and "site='blood'" in command and "--root-certificates" in command


def test_missing_data_refuses_to_start(tmp_path, capsys):
    config = SiteNodeConfig.from_file(write_config(tmp_path, data_root=str(tmp_path / "empty")))
    with pytest.raises(UserError, match=f"site blood cannot read its data: data folder {tmp_path / 'empty'} does not"):
        check_site(config)
    assert main(["site", "start", str(tmp_path / "site.toml")]) == 2
    assert "cannot read its data" in capsys.readouterr().out
    assert not (tmp_path / "empty").exists()  # a start that fails creates nothing either


def test_missing_key_or_unknown_keys_are_named(tmp_path):
    path = write_config(tmp_path)
    (tmp_path / "blood_key").unlink()
    with pytest.raises(FileNotFoundError, match="private key"):
        check_site(SiteNodeConfig.from_file(path))
    path.write_text(path.read_text() + 'colour = "red"\n')
    with pytest.raises(ValueError, match="unknown keys \\['colour'\\]"):
        SiteNodeConfig.from_file(path)


def test_private_keys_are_never_overwritten(tmp_path):
    create_site_keys(tmp_path, "breast")
    with pytest.raises(FileExistsError, match="refusing to overwrite"):
        create_site_keys(tmp_path, "breast")
    assert oct((tmp_path / "breast_key").stat().st_mode)[-3:] == "600"


def test_a_site_config_names_its_registered_dataset_and_the_start_checks_it(tmp_path, monkeypatch, capsys):
    """`dataset = "NAME"` instead of data-root: the SuperNode passes it on; the start refuses a dataset that is not
    registered here, or whose files changed since it was."""
    import os

    monkeypatch.setenv("FL_MEDLEGO_DATASETS", str(tmp_path / "registry"))
    path = write_config(tmp_path, site="smears")
    path.write_text(path.read_text().replace('data-root = "bundled"', 'dataset = "smears"'))
    config = SiteNodeConfig.from_file(path)
    assert config.node_config() == {"site": "smears", "dataset": "smears"}  # no data-root: the dataset is its data
    assert "dataset='smears'" in " ".join(supernode_command(config))
    with pytest.raises(UserError, match="unknown registered dataset 'smears'"):
        check_site(config)

    assert main(["data", "export", "blood", "--to", str(tmp_path / "export")]) == 0
    manifest = tmp_path / "export" / "manifest.csv"
    assert main(["site", "data", "add", "smears", "--source", "manifest", "--path", str(manifest)]) == 0
    assert "own manifest dataset: 1050 images, 8 classes" in check_site(config)
    image = tmp_path / "export" / "images" / "train" / "000000.png"
    os.utime(image, ns=(0, 0))  # changed since registration: the site must not train on it
    capsys.readouterr()
    assert main(["site", "start", str(path), "--dry-run"]) == 2
    assert "changed since it was registered" in capsys.readouterr().out

    both = path.read_text() + 'data-root = "bundled"\n'
    path.write_text(both)
    with pytest.raises(ValueError, match="either data-root .* or dataset"):
        SiteNodeConfig.from_file(path)


def test_a_site_that_is_no_medmnist_set_reading_a_data_root_is_told_to_register_its_images(tmp_path):
    config = SiteNodeConfig.from_file(write_config(tmp_path, site="cxr"))
    with pytest.raises(UserError, match="site cxr reads its data from data-root.*site data add cxr.*dataset = \"cxr\""):
        check_site(config)

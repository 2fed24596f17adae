"""Every report writer replaces its file whole: a write that fails midway leaves the old file and nothing beside it."""

import matplotlib
import pytest
from matplotlib.figure import Figure

from fl_medlego import report, wire
from fl_medlego.compare import figures, scaling, table

matplotlib.use("Agg")


class DiskFull(OSError):
    pass


def _half_written_savefig(self, path, **kwargs):
    with open(path, "wb") as f:
        f.write(b"half a PNG")
    raise DiskFull("no space left on device")


def _blank(*args, **kwargs):
    return Figure()


CURVES = {"medlego": {wire.VAL_ACC: [0.5, 0.6], wire.TEST_ACC: [0.4, 0.5]}}
FIGURE_WRITERS = {
    "table.png": lambda path: figures.heatmap({}, path),
    "energy_sweep.png": lambda path: figures.energy_plot([], path),
    "scaling.png": lambda path: scaling.plot({"medlego": {"2": {"mean": 1.0, "std": 0.0}}}, path),
    "summary.png": lambda path: report.run_figure({}, [], path),
    "new_task.png": lambda path: report.learning_curve_figure("blood", CURVES, path),
}


@pytest.mark.parametrize("name", FIGURE_WRITERS)
def test_a_figure_that_fails_to_save_leaves_the_old_file(tmp_path, monkeypatch, name):
    monkeypatch.setattr(figures, "heatmap_figure", _blank)
    monkeypatch.setattr(figures, "energy_figure", _blank)
    monkeypatch.setattr(report, "summary_figure", _blank)
    monkeypatch.setattr(Figure, "savefig", _half_written_savefig)
    path = tmp_path / name
    path.write_bytes(b"the old figure")
    with pytest.raises(DiskFull):
        FIGURE_WRITERS[name](path)
    assert path.read_bytes() == b"the old figure"
    assert [p.name for p in tmp_path.iterdir()] == [name]


def test_a_table_that_fails_midway_leaves_the_old_csv(tmp_path):
    path = tmp_path / "table.csv"
    path.write_text("the old table\n")
    metrics = {"acc": 0.5, "auc": 0.5, "f1": 0.5, "loss": 1.0}
    results = {"rows": {"medlego": {"0": {"test": {"a": metrics, "b": {}}}}}}  # site b lacks its metrics
    with pytest.raises(KeyError):
        table.to_csv(results, path)
    assert path.read_text() == "the old table\n"
    assert [p.name for p in tmp_path.iterdir()] == ["table.csv"]


def test_the_markdown_table_is_written_through_a_temporary(tmp_path, monkeypatch):
    written = []
    monkeypatch.setattr(table, "write_text_atomic", lambda path, text: written.append(path))
    monkeypatch.setattr(table, "to_csv", lambda results, path: None)
    monkeypatch.setattr(figures, "heatmap", lambda results, path: None)
    monkeypatch.setattr(table, "to_markdown", lambda results: "| table |")
    monkeypatch.setattr(table, "energy_sweep", lambda results: [])
    table.render_comparison({}, tmp_path)
    assert written == [tmp_path / "table.md"] and not (tmp_path / "table.md").exists()

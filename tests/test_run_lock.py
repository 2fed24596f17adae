"""A run folder belongs to the live run that writes it: a second run (a resume, or a new run pointed at it)
is refused while the first is alive, and may take it once the first released it or its process died."""

import json
import os
import re
import subprocess
import sys
import textwrap

import pytest

from fl_medlego.errors import UserError
from fl_medlego.results import RunResults

SETTINGS = {"seed": 0, "strategy": "medlego"}

# A run in another process: it takes the folder, says so, then lives until it is killed.
HOLDER = textwrap.dedent("""
    import sys, time
    from fl_medlego.results import RunResults
    results = RunResults(sys.argv[1], {"seed": 0, "strategy": "medlego"}, resume=sys.argv[2] == "resume", run_id=42)
    print("holding", flush=True)
    time.sleep(600)
""")


@pytest.fixture
def live_run_in_another_process(tmp_path):
    """(pid, run folder) of a run that holds its folder from a second process; killed by pid at the end."""
    run_dir = tmp_path / "run"
    RunResults(run_dir, SETTINGS).release()  # a run folder that a live run now resumes
    process = subprocess.Popen([sys.executable, "-c", HOLDER, str(run_dir), "resume"], stdout=subprocess.PIPE,
                               text=True)
    try:
        assert process.stdout.readline().strip() == "holding", "the holder did not take the folder"
        yield process, run_dir
    finally:
        process.kill()  # by its pid; a no-op once it has been reaped
        process.wait(timeout=30)
        process.stdout.close()


def test_a_folder_that_a_live_run_in_another_process_holds_is_refused_naming_the_pid_and_flwr_stop(
        live_run_in_another_process):
    process, run_dir = live_run_in_another_process
    staging = run_dir / "round-001.tmp"  # the live run is writing its round 1
    staging.mkdir()
    refusal = rf"{re.escape(str(run_dir))} is in use by a live run \(pid {process.pid}\).*`flwr stop 42`"
    for resume in (True, False):
        with pytest.raises(UserError, match=refusal):
            RunResults(run_dir, SETTINGS, resume=resume)
    assert staging.is_dir()  # a refused resume touches nothing of the live run's
    assert json.loads((run_dir / ".lock").read_text()) == {"pid": process.pid, "run_id": 42}


def test_once_the_holding_process_is_killed_its_folder_resumes(live_run_in_another_process):
    process, run_dir = live_run_in_another_process
    process.kill()
    assert process.wait(timeout=30) != 0  # killed, not ended: the kernel released its lock
    (run_dir / "round-001.tmp").mkdir()  # what it left half written
    resumed = RunResults(run_dir, SETTINGS, resume=True, run_id=43)
    assert not (run_dir / "round-001.tmp").exists()  # the stale round is the resumed run's to clean
    assert json.loads((run_dir / ".lock").read_text()) == {"pid": os.getpid(), "run_id": 43}
    resumed.release()


def test_in_one_process_the_second_run_is_refused_until_the_first_releases_the_folder(tmp_path):
    first = RunResults(tmp_path, SETTINGS, run_id=7)
    with pytest.raises(UserError, match=r"in use by a live run .*`flwr stop 7`"):
        RunResults(tmp_path, SETTINGS, resume=True)
    with pytest.raises(UserError, match="in use by a live run"):
        RunResults(tmp_path, SETTINGS)  # a new run pointed at the folder, too
    first.log("train", round=1, site="blood")  # the refusals did not disturb the live run
    first.release()
    second = RunResults(tmp_path, SETTINGS, resume=True)
    second.log("train", round=2, site="blood")
    second.release()
    events = [json.loads(line)["round"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert events == [1, 2]


def test_a_refused_resume_with_other_settings_leaves_the_folder_free(tmp_path):
    RunResults(tmp_path, SETTINGS).release()
    with pytest.raises(ValueError, match="other settings"):
        RunResults(tmp_path, {**SETTINGS, "seed": 1}, resume=True)
    RunResults(tmp_path, SETTINGS, resume=True).release()  # the refusal did not keep the lock


def test_a_run_results_that_is_dropped_frees_its_folder(tmp_path):
    RunResults(tmp_path, SETTINGS)  # not kept: the object, and with it the lock, is gone
    RunResults(tmp_path, SETTINGS, resume=True).release()

"""Tuning: a few trials fill the database; later builds apply its records without measuring;
workloads shared between models are not tuned again; databases never cross targets.

Tuning imports TVM's tensor intrinsics (about a minute on 2 cores, once per process); the trial
budgets here are tiny. Speed is measured by benchmarks, not here.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests import builders
from tests.conftest import ort_outputs, save
from tests.tolerances import ARTIFACT_ATOL, ARTIFACT_RTOL

TRIALS = 4


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    from edgepress.compiler.cli import main

    folder = tmp_path_factory.mktemp("tuning")
    source = save(builders.conv_relu(), folder / "tiny.onnx")
    db = folder / "db"
    args = ["--target", "x86_64", "--tuning-db", str(db), "--tune-trials", str(TRIALS), "-q"]
    assert main([str(source), "-o", str(folder / "first"), *args]) == 0
    assert main([str(source), "-o", str(folder / "second"), *args]) == 0
    return folder, source, db


def _tuning(folder):
    return json.loads((folder / "report.json").read_text())["tuning"]


def test_first_build_tunes_and_fills_the_database(tuned):
    folder, _, db = tuned
    tuning = _tuning(folder / "first")
    assert 1 <= tuning["trials_measured"] <= TRIALS
    assert tuning["tasks"] and all(t["tuned"] and not t["from_database"] for t in tuning["tasks"])
    records = (db / "database_tuning_record.json").read_text().strip().splitlines()
    assert len(records) >= 1
    assert json.loads((db / "target.json").read_text())["kind"] == "llvm"
    (conv,) = [t["name"] for t in tuning["tasks"] if "conv2d" in t["name"]]
    assert f"| {conv} | 1 | yes | this build |" in (folder / "first" / "report.md").read_text()


def test_second_build_applies_records_without_measuring(tuned):
    folder, _, _ = tuned
    tuning = _tuning(folder / "second")
    assert tuning["trials_measured"] == 0
    assert all(t["tuned"] and t["from_database"] for t in tuning["tasks"])


def test_tuned_artifact_matches_onnxruntime(tuned, cli, tmp_path):
    folder, source, _ = tuned
    x = np.random.default_rng(11).standard_normal((1, 3, 8, 8)).astype(np.float32)
    np.savez(tmp_path / "in.npz", x=x)
    r = cli("run", folder / "second", "--inputs", tmp_path / "in.npz", "-o", tmp_path / "o.npz")
    assert r.code == 0, r.err
    (ref,) = ort_outputs(source, {"x": x})
    np.testing.assert_allclose(
        np.load(tmp_path / "o.npz")["y"], ref, rtol=ARTIFACT_RTOL, atol=ARTIFACT_ATOL
    )


def test_workload_from_another_model_is_not_tuned_again(tuned, cli):
    folder, _, db = tuned
    other = save(builders.conv_relu_pool(), folder / "other.onnx")
    r = cli(
        other,
        "--target",
        "x86_64",
        "-o",
        folder / "other",
        "--tuning-db",
        db,
        "--tune-trials",
        "2",
        "-q",
    )
    assert r.code == 0, r.err
    tasks = _tuning(folder / "other")["tasks"]
    convs = [t for t in tasks if "conv2d" in t["name"]]  # the same conv + relu workload
    assert convs and all(t["from_database"] for t in convs)
    assert any("pool" in t["name"] and not t["from_database"] for t in tasks)


def test_time_budget_stops_tuning(tuned, cli):
    """--tune-minutes alone: a budget spent before the first candidate is built measures
    nothing (the builder refuses candidates past the deadline, even in the first round, which
    MetaSchedule reports only once every task has had it); the build still succeeds, untuned."""
    folder, source, _ = tuned
    r = cli(
        source,
        "--target",
        "x86_64",
        "-o",
        folder / "timed",
        "--tuning-db",
        folder / "timed-db",
        "--tune-minutes",
        "0.000001",  # 60 us: spent before the first candidate on any machine
        "-q",
    )
    assert r.code == 0, r.err
    tuning = _tuning(folder / "timed")
    assert tuning["trials_measured"] == 0
    assert not any(t["tuned"] for t in tuning["tasks"])
    assert json.loads((folder / "timed" / "report.json").read_text())["status"] == "ok"


def test_database_of_another_target_is_refused(tuned, cli):
    folder, source, db = tuned
    r = cli(
        source, "--target", "x86_64", "--mcpu", "skylake", "-o", folder / "skl", "--tuning-db", db
    )
    assert r.code == 2
    assert f"--tuning-db {db}: this tuning database holds records for target" in r.err
    assert "never applied across targets" in r.err


def test_cannot_tune_where_nothing_can_be_timed(tuned, cli, tmp_path):
    _, source, _ = tuned
    r = cli(source, "--target", "arm64", "-o", tmp_path / "a", "--tune-trials", "2")
    assert r.code == 2 and "cannot tune" in r.err and "qemu" in r.err


def test_untuned_build_says_so(cli, tmp_path):
    source = save(builders.conv_relu(), tmp_path / "tiny.onnx")
    assert cli(source, "--target", "x86_64", "-o", tmp_path / "o", "-q").code == 0
    assert json.loads((tmp_path / "o" / "report.json").read_text())["tuning"] is None
    assert "No tuning records for this target" in (tmp_path / "o" / "report.md").read_text()


def test_shipped_records_apply_to_their_target_only(tuned, cli, tmp_path, monkeypatch):
    """Records exported as edgepress ships them are applied to a build with no database of its
    own (nothing measured, every task 'shipped'), and never to another target's build."""
    from edgepress.backends.tuning import database as tuning_module

    folder, source, db = tuned
    target = json.loads((db / "target.json").read_text())
    shipped = tmp_path / "tuned"
    monkeypatch.setattr(tuning_module, "SHIPPED_DIR", shipped)
    count = tuning_module.export_best_records(
        db, shipped / tuning_module.target_key(target), target
    )
    records = (db / "database_tuning_record.json").read_text().splitlines()
    workloads = {json.loads(line)[0] for line in records}
    assert len(records) > len(workloads) == count  # the best record of each workload only

    assert cli(source, "--target", "x86_64", "-o", tmp_path / "s", "-q").code == 0
    tuning = _tuning(tmp_path / "s")
    assert tuning["trials_measured"] == 0 and tuning["shipped"]
    assert tuning["tasks"] and {t["record"] for t in tuning["tasks"]} == {"shipped"}
    kernels = json.loads((tmp_path / "s" / "report.json").read_text())["kernels"]
    assert kernels and {k["schedule"] for k in kernels} == {"tuned"}

    r = cli(source, "--target", "x86_64", "-o", tmp_path / "n", "-q", "--no-shipped-records")
    assert r.code == 0 and _tuning(tmp_path / "n") is None
    r = cli(source, "--target", "x86_64", "--mcpu", "skylake", "-o", tmp_path / "k", "-q")
    assert r.code == 0 and _tuning(tmp_path / "k") is None


def test_untuned_kernels_are_sampled_or_plain_loops(cli, tmp_path):
    source = save(builders.conv_relu_pool(), tmp_path / "tiny.onnx")
    for choice in ("sampled", "loops"):
        r = cli(source, "--target", "x86_64", "-o", tmp_path / choice, "-q", "--untuned", choice)
        assert r.code == 0, r.err  # the build verifies the artifact against onnxruntime
        kernels = json.loads((tmp_path / choice / "report.json").read_text())["kernels"]
        assert kernels and {k["schedule"] for k in kernels} == {choice}


def test_retune_measures_tasks_that_already_have_records(tuned, cli):
    folder, source, db = tuned
    before = len((db / "database_tuning_record.json").read_text().splitlines())
    r = cli(
        source,
        "--target",
        "x86_64",
        "-o",
        folder / "again",
        "--tuning-db",
        db,
        "--tune-trials",
        "2",
        "--retune",
        "-q",
    )
    assert r.code == 0, r.err
    tuning = _tuning(folder / "again")
    assert tuning["trials_measured"] >= 1
    assert len((db / "database_tuning_record.json").read_text().splitlines()) > before


def test_shipped_record_folders_are_well_formed():
    """Every folder under backends/tuning/shipped/ is named after its target and holds a database
    that opens: a broken or misnamed folder would silently never apply."""
    from pathlib import Path

    from edgepress.backends.tuning import database as tuning

    shipped = Path(tuning.__file__).parent / "shipped"
    folders = sorted(p for p in shipped.iterdir() if p.is_dir())
    assert folders, f"no shipped records under {shipped}"
    for folder in folders:
        target = json.loads((folder / tuning.TARGET_FILE).read_text())
        assert folder.name == tuning.target_key(target)
        saved, tuning.SHIPPED_DIR = tuning.SHIPPED_DIR, shipped
        try:
            found = tuning.shipped_database(target)
        finally:
            tuning.SHIPPED_DIR = saved
        assert found is not None and found[0] == folder
        assert len(found[1].get_all_tuning_records()) >= 1
        facts = json.loads((folder / "tuning.json").read_text())
        assert all(f["trials"] > 0 for f in facts.values())


def test_a_task_whose_search_raises_is_ended_not_the_tuning():
    """MetaSchedule's evolutionary search raised inside one task (seen on Winograd kernels):
    that task must end (no candidates) and not be asked again, instead of killing the build."""
    import time

    from edgepress.backends.tuning.search import TuningClock, TuningSummary, _until_deadline

    class Failing:
        calls = 0

        def generate_measure_candidates(self):
            Failing.calls += 1
            raise RuntimeError("The block no longer exists in the IRModule")

    clock = TuningClock(10, None, [1.0], TuningSummary(database=None), time.monotonic())
    strategy = _until_deadline(Failing(), clock)
    assert strategy.generate_measure_candidates() is None
    assert strategy.generate_measure_candidates() is None
    assert Failing.calls == 1

"""MetaSchedule tuning of a prepared module's tasks, within a trial or time budget.

What makes tuning usable on a small machine (see the notes on TVM 0.27):
- an in-process builder and runner: MetaSchedule's LocalBuilder starts a worker pool per batch
  whose workers each spend tens of seconds importing TVM on 2 cores;
- a search sized to what the machine measures (a small evolutionary population), and a time
  budget the builder and the search strategy enforce themselves, since MetaSchedule reports
  nothing until every task has had its first round.

The records go into the user's database (tuning/database.py); `tune` returns the databases to
apply, and the Relax pipeline's `finish` applies them.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from edgepress.backends.tuning.database import open_database, shipped_database
from edgepress.compiler.errors import first_line

log = logging.getLogger(__name__)

log = logging.getLogger(__name__)


# About what 2 cores measure in a minute (building and timing a candidate takes a few seconds):
# used only to size the search when the budget is given in minutes.
TRIALS_PER_MINUTE = 20


# Candidates measured per task per round. Every task has its first round before any result is
# reported (MetaSchedule's scheduler), so smaller rounds reach the cost model sooner.
PER_ROUND = 8


MAX_POPULATION = 128


@dataclass
class TaskRecord:
    name: str
    weight: float
    tuned: bool  # a record for it was applied
    # Where that record came from: "this build" (measured now), "database" (an earlier build's,
    # in the user's database), "shipped" (edgepress's own records for this target), or None.
    record: str | None

    @property
    def from_database(self) -> bool:
        return self.record in ("database", "shipped")


@dataclass
class TuningSummary:
    database: str | None  # the user's database folder, if any
    shipped: str | None = None  # the shipped records' folder, when they match the target
    trials_measured: int = 0
    seconds: float = 0.0
    # Sum over tasks of weight x best measured latency: the model's tuned kernel time so far.
    estimated_total_ms: float | None = None
    tasks: list[TaskRecord] = field(default_factory=list)

    def to_json(self) -> dict:
        out = asdict(self)
        for task, record in zip(out["tasks"], self.tasks):
            task["from_database"] = record.from_database
        return out


class TuningClock:
    """Trials built and measured, each task's best latency, and the time budget.

    MetaSchedule's task scheduler reports measurements (its callbacks) only after every task has
    had its first round, which for a model with 20 tasks on 2 cores is tens of minutes: so the
    builder checks the deadline itself (past it, candidates are refused unbuilt and tuning winds
    down) and the runner shows progress as candidates are timed.
    """

    def __init__(
        self,
        total_trials: int,
        minutes: float | None,
        weights: list[float],
        summary: TuningSummary,
        start: float,
    ) -> None:
        self.start = start
        self.deadline = self.start + 60 * minutes if minutes else None
        self.total_trials = total_trials
        self.weights = weights
        self.summary = summary
        self.built = 0
        self.best: dict[int, float] = {}  # task index -> best measured ms

    def expired(self) -> bool:
        return self.deadline is not None and time.monotonic() > self.deadline

    def record(self, task_id: int, run_secs: list) -> None:
        if run_secs:
            ms_ = 1e3 * sum(float(s) for s in run_secs) / len(run_secs)
            self.best[task_id] = min(self.best.get(task_id, ms_), ms_)
            self.summary.estimated_total_ms = sum(self.weights[i] * b for i, b in self.best.items())

    def show(self) -> None:
        elapsed = time.monotonic() - self.start
        done = min(self.built, self.total_trials)
        if self.deadline:
            left = self.deadline - time.monotonic()
        else:
            left = elapsed / max(done, 1) * (self.total_trials - done)
        width = 30
        filled = (
            (elapsed / (self.deadline - self.start))
            if self.deadline
            else done / max(self.total_trials, 1)
        )
        bar = "#" * int(width * min(filled, 1.0))
        total = self.summary.estimated_total_ms
        shown = f"{total:.2f} ms" if total is not None else "- (after the first round)"
        sys.stderr.write(
            f"\rtuning [{bar:<{width}}] {self.built} built, {self.summary.trials_measured} "
            f"timed, tuned kernels {shown} ({len(self.best)}/{len(self.weights)} tasks), "
            f"about {max(left, 0):.0f} s left "
        )
        sys.stderr.flush()


def _in_process_builder(clock: TuningClock):
    from tvm.ir.utils import derived_object
    from tvm.s_tir.meta_schedule.builder import BuilderResult, PyBuilder
    from tvm.s_tir.meta_schedule.builder.local_builder import default_build, default_export

    @derived_object
    class InProcessBuilder(PyBuilder):
        """Builds each candidate in this process: no worker pool to start per batch. Past the
        deadline, refuses candidates unbuilt."""

        def build(self, build_inputs):
            results = []
            for item in build_inputs:
                if clock.expired():
                    results.append(BuilderResult(None, "the tuning time budget is spent"))
                    continue
                try:
                    module = default_build(item.mod, item.target, None)
                    results.append(BuilderResult(default_export(module), None))
                    clock.built += 1
                except Exception as err:  # a candidate that fails to build is a result, not a crash
                    results.append(BuilderResult(None, f"{type(err).__name__}: {err}"))
            clock.show()
            return results

    return InProcessBuilder()


def _in_process_runner(clock: TuningClock):
    from tvm.ir.utils import derived_object
    from tvm.s_tir.meta_schedule.runner import PyRunner
    from tvm.s_tir.meta_schedule.runner.local_runner import LocalRunnerFuture

    from edgepress.backends.upstream import evaluator_config, runner_worker

    config = evaluator_config(number=3, repeat=1, min_repeat_ms=100)
    _worker_func = runner_worker()

    @derived_object
    class InProcessRunner(PyRunner):
        """Times each candidate in this process with MetaSchedule's own measuring function.

        LocalRunner does the same in a worker process that must first import TVM; the price of
        skipping it is that a candidate cannot be killed on a timeout (none hung in our runs).
        """

        def run(self, runner_inputs):
            futures = []
            for item in runner_inputs:
                try:
                    costs = _worker_func(
                        None,
                        None,
                        None,
                        config,
                        1,
                        str(item.artifact_path),
                        str(item.device_type),
                        tuple(a.as_json() for a in item.args_info),
                    )
                    futures.append(LocalRunnerFuture(res=costs))
                except Exception as err:  # a candidate that fails to run is a result
                    futures.append(LocalRunnerFuture(error_message=f"{type(err).__name__}: {err}"))
                clock.summary.trials_measured += 1
            clock.show()
            return futures

    return InProcessRunner()


def _progress_callback(clock: TuningClock):
    from tvm.ir.utils import derived_object
    from tvm.s_tir.meta_schedule.measure_callback import PyMeasureCallback

    @derived_object
    class Progress(PyMeasureCallback):
        """Keeps each task's best latency for the progress line and the report."""

        def apply(
            self, task_scheduler, task_id, measure_candidates, builder_results, runner_results
        ):
            for result in runner_results:
                if result.error_msg is None:
                    clock.record(task_id, list(result.run_secs or []))
            clock.show()

    return Progress()


def _until_deadline(inner, clock: TuningClock):
    """`inner` search strategy, ending its task once the budget is spent.

    A strategy that returns no candidates is how MetaSchedule ends a task cleanly; ending tasks
    from a measure callback instead trips its check that a task is ended only once.
    """
    from tvm.ir.utils import derived_object
    from tvm.s_tir.meta_schedule.search_strategy import PySearchStrategy

    @derived_object
    class UntilDeadline(PySearchStrategy):
        def __init__(self, strategy) -> None:
            self.strategy = strategy
            self.failed = False

        def _initialize_with_tune_context(self, context) -> None:
            self.strategy._initialize_with_tune_context(context)

        def pre_tuning(
            self, max_trials, num_trials_per_iter, design_spaces, database=None, cost_model=None
        ) -> None:
            self.strategy.pre_tuning(
                max_trials, num_trials_per_iter, design_spaces, database, cost_model
            )

        def post_tuning(self) -> None:
            self.strategy.post_tuning()

        def generate_measure_candidates(self):
            if clock.expired() or self.failed:
                return None
            try:
                return self.strategy.generate_measure_candidates()
            except Exception as err:  # noqa: BLE001 (an error inside MetaSchedule's search)
                # Evolutionary search can fail on one task (seen: "The block no longer exists
                # in the IRModule" while evolving Winograd kernels): end that task, keep the
                # records it has, tune the others.
                log.warning("tuning: a task's search failed and is ended: %s", first_line(err))
                self.failed = True
                return None

        def notify_runner_results(self, measure_candidates, results) -> None:
            self.strategy.notify_runner_results(measure_candidates, results)

        def clone(self):
            return UntilDeadline(self.strategy.clone())

    return UntilDeadline(inner)


def _search_strategy(trials: int, tasks: int):
    """Evolutionary search sized to what a small machine measures.

    MetaSchedule's default (a population of 512 evolved 4 times a round) suits a machine that
    measures hundreds of candidates a round. Here candidates are built and timed in a second
    or two, and a profile of ResNet-18 tuning with a population of 456 showed 87% of the time in
    the search: smaller populations give more measured trials in the same minutes.
    """
    from tvm.s_tir.meta_schedule.search_strategy import EvolutionarySearch

    per_task = max(1, trials // max(tasks, 1))
    population = int(min(MAX_POPULATION, max(32, 4 * per_task)))
    return EvolutionarySearch(
        population_size=population,
        init_min_unmeasured=min(32, population),
        genetic_num_iters=2,
    )


def _tune_contexts(tasks, strategy, seed: int, description):
    """One TuneContext per task, logging to edgepress's logger.

    MetaSchedule's own helper (extracted_tasks_to_tune_contexts) rewrites the process's logging
    configuration to add a file per task, which breaks under hosts with their own handlers.
    """
    from tvm.s_tir.meta_schedule import TuneContext
    from tvm.s_tir.meta_schedule.utils import fork_seed

    contexts = []
    for task, rand_state in zip(tasks, fork_seed(seed, n=len(tasks))):
        contexts.append(
            TuneContext(
                mod=task.dispatched[0],
                target=task.target,
                space_generator=description.space_generator(),
                search_strategy=strategy,
                task_name=task.task_name,
                logger=logging.getLogger(f"{__name__}.{task.task_name[:100]}"),
                rand_state=rand_state,
                # "physical" finds one core on VMs reporting 2 vCPUs as one hyper-threaded core.
                num_threads=os.cpu_count() or 1,
            ).clone()
        )
    return contexts


def _has_record(database, task, target) -> bool:
    return database.query_tuning_record(task.dispatched[0], target, task.task_name) is not None


def tune(
    prepared,
    target,
    target_dict: dict,
    description,
    folder: Path | None,
    *,
    trials: int,
    minutes: float | None,
    use_shipped: bool = True,
    retune: bool = False,
    seed: int = 0,
):
    """Tune what the databases lack within the budget; returns the database to apply (the
    user's and the shipped records together, best record wins; None when neither exists) and
    a summary saying, per task, whether it is tuned and where its record came from (None
    without a database).

    `prepared` is the Relax pipeline's prepared module (relax/pipeline.prepare): tasks are
    extracted from it, tuned on it and later looked up in it, so their workload keys agree.
    `folder` is the user's database (None: no database for this target and no tuning asked
    for). Records shipped with edgepress for this exact target are applied too.
    """
    from tvm.s_tir import meta_schedule as ms
    from tvm.s_tir.meta_schedule.relax_integration import extract_tasks

    shipped = shipped_database(target_dict) if use_shipped else None
    if folder is None and shipped is None:
        return None, None
    databases = []
    summary = TuningSummary(database=str(folder) if folder else None)
    user_db = open_database(folder) if folder else None
    if user_db is not None:
        databases.append(user_db)
    if shipped is not None:
        summary.shipped = str(shipped[0])
        databases.append(shipped[1])
    tasks = extract_tasks(prepared, target)
    source = {}
    for t in tasks:
        if user_db is not None and _has_record(user_db, t, target):
            source[t.task_name] = "database"
        elif shipped is not None and _has_record(shipped[1], t, target):
            source[t.task_name] = "shipped"
    # --retune: tune every task again (the database keeps the best record of all runs).
    pending = list(tasks) if retune else [t for t in tasks if t.task_name not in source]
    start = time.monotonic()
    if pending and trials > 0 and user_db is not None:
        # With only a time budget, size the search by the trials that time can measure.
        sizing = min(trials, int(minutes * TRIALS_PER_MINUTE)) if minutes else trials
        weights = [float(t.weight) for t in pending]
        clock = TuningClock(trials, minutes, weights, summary, start)
        strategy = _until_deadline(_search_strategy(sizing, len(pending)), clock)
        contexts = _tune_contexts(pending, strategy, seed, description)
        per_iter = max(1, min(PER_ROUND, trials // max(len(contexts), 1)))
        ms.tune.tune_tasks(
            tasks=contexts,
            task_weights=weights,
            work_dir=str(folder / "logs"),
            max_trials_global=trials,
            num_trials_per_iter=per_iter,
            builder=_in_process_builder(clock),
            runner=_in_process_runner(clock),
            database=user_db,
            cost_model="xgb",
            measure_callbacks=[
                *ms.measure_callback.MeasureCallback.create("default"),
                _progress_callback(clock),
            ],
        )
        sys.stderr.write("\n")
        for t in pending:
            if t.task_name not in source and _has_record(user_db, t, target):
                source[t.task_name] = "this build"
    summary.seconds = time.monotonic() - start
    for t in tasks:
        summary.tasks.append(
            TaskRecord(t.task_name, float(t.weight), t.task_name in source, source.get(t.task_name))
        )
    database = databases[0] if len(databases) == 1 else ms.database.UnionDatabase(*databases)
    return database, summary

"""Routing the sweep's stream into each job's log, and each job's outcome from its results.json."""

from __future__ import annotations

from fl_app.server.results import write_json_atomic
from fl_app.sweep.jobs import SweepJob, job_marker
from fl_app.sweep.runner import JobLogs, all_finished, outcome_of


def _jobs(tmp_path, count: int) -> list[SweepJob]:
    jobs = []
    for index in range(count):
        folder = tmp_path / str(index)
        folder.mkdir()
        jobs.append(SweepJob(folder / "config.yaml", folder, ""))
    return jobs


def test_each_line_goes_to_the_group_log_and_to_the_job_it_belongs_to(tmp_path):
    jobs = _jobs(tmp_path, 2)
    logs = JobLogs(tmp_path / "flower-0.log", jobs)
    lines = [
        "superlink starting\n",
        job_marker(1, 2, jobs[0]) + "\n",
        "train 1\n",
        job_marker(2, 2, jobs[1]) + "\n",
        "train 2\n",
    ]

    for line in lines:
        logs.write(line.encode())
    logs.close()

    assert (tmp_path / "flower-0.log").read_text() == "".join(lines)
    assert (tmp_path / "0" / "flower.log").read_text() == "".join(lines[1:3])
    assert (tmp_path / "1" / "flower.log").read_text() == "".join(lines[3:])


def test_the_sweep_is_finished_only_once_every_job_completed_or_failed(tmp_path):
    jobs = _jobs(tmp_path, 2)
    write_json_atomic(jobs[0].results_dir / "results.json", {"status": "failed"})

    assert not all_finished(jobs)  # the second job has not started
    write_json_atomic(jobs[1].results_dir / "results.json", {"status": "running"})
    assert not all_finished(jobs)
    write_json_atomic(jobs[1].results_dir / "results.json", {"status": "completed"})
    assert all_finished(jobs)


def test_a_job_the_simulation_never_reached_is_reported_not_run_with_the_log_to_read(tmp_path):
    job = _jobs(tmp_path, 1)[0]

    outcome = outcome_of(job, tmp_path / "flower-0.log")

    assert outcome.status == "not run" and "flower-0.log" in outcome.error
    write_json_atomic(job.results_dir / "results.json", {"status": "failed", "error": "RuntimeError: no adapter"})
    assert outcome_of(job, tmp_path / "flower-0.log").error == "RuntimeError: no adapter"

"""Submit runs to the instance's run queue, as `dagster job launch` does, but loading the code location once.

``python -m tests.queue_launch MODULE JOB:PARTITION ...`` (DAGSTER_HOME selects the instance) prints one JSON
line per run: {"run_id", "job", "partition", "status"}. Under the QueuedRunCoordinator each run is QUEUED
here and started by ``dagster-daemon run``.
"""

from __future__ import annotations

import json
import sys

from dagster import __version__ as dagster_version
from dagster._cli.job import _create_run
from dagster._cli.workspace.cli_target import (
    get_code_location_from_workspace,
    get_remote_job_from_remote_repo,
    get_remote_repository_from_code_location,
    get_workspace_from_cli_opts,
)
from dagster._core.instance import DagsterInstance
from dagster_shared.cli import WorkspaceOpts


def main(argv: list[str]) -> int:
    module, *targets = argv
    with DagsterInstance.get() as instance:
        opts = WorkspaceOpts(module_name=(module,), working_directory=".")
        with get_workspace_from_cli_opts(instance, version=dagster_version, workspace_opts=opts) as workspace:
            location = get_code_location_from_workspace(workspace, None)
            repo = get_remote_repository_from_code_location(location, None)
            for target in targets:
                job_name, partition = target.split(":", 1)
                job = get_remote_job_from_remote_repo(repo, job_name)
                run = _create_run(
                    instance=instance,
                    code_location=location,
                    remote_repo=repo,
                    remote_job=job,
                    run_config={},
                    tags={"dagster/partition": partition},
                    op_selection=None,
                    run_id=None,
                )
                submitted = instance.submit_run(run.run_id, workspace)
                print(
                    json.dumps(
                        {
                            "run_id": submitted.run_id,
                            "job": job_name,
                            "partition": partition,
                            "status": submitted.status.value,
                        }
                    ),
                    flush=True,
                )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

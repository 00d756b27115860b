"""A tiny test-only code location for the run-queue test (tests/test_run_queue.py).

Same shape as the real graph where the queue matters: every asset is partitioned, the "training" step is in
the ``gpu`` pool, a CPU step follows it. Each step appends ``{run_id, partition, step, start, end}`` to the
JSON-lines file named by ``PUMPL_QUEUE_LOG`` so the test can check what overlapped. ``noop_job`` has no pool:
it measures how fast the daemon dequeues and launches runs.
"""

import fcntl
import json
import os
import time

import dagster as dg

GPU_PARTITIONS = ["p1", "p2", "p3"]
NOOP_PARTITIONS = [f"n{i}" for i in range(1, 7)]
parts = dg.StaticPartitionsDefinition(GPU_PARTITIONS + NOOP_PARTITIONS)

GPU_SLEEP_S = float(os.environ.get("PUMPL_QUEUE_GPU_SLEEP_S", "1.5"))
CPU_SLEEP_S = float(os.environ.get("PUMPL_QUEUE_CPU_SLEEP_S", "4"))


def _record(context: dg.AssetExecutionContext, step: str, sleep_s: float) -> None:
    start = time.time()
    time.sleep(sleep_s)
    end = time.time()
    line = json.dumps(
        {
            "run_id": context.run.run_id,
            "partition": context.partition_key,
            "step": step,
            "start": start,
            "end": end,
            "pid": os.getpid(),
        }
    )
    with open(os.environ["PUMPL_QUEUE_LOG"], "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        f.write(line + "\n")


@dg.asset(partitions_def=parts, pool="gpu")
def train(context: dg.AssetExecutionContext) -> None:
    _record(context, "train", GPU_SLEEP_S)


@dg.asset(partitions_def=parts, deps=[train])
def report(context: dg.AssetExecutionContext) -> None:
    _record(context, "report", CPU_SLEEP_S)


@dg.asset(partitions_def=parts)
def noop(context: dg.AssetExecutionContext) -> None:
    _record(context, "noop", 0.0)


gpu_job = dg.define_asset_job("gpu_job", selection=["train", "report"], partitions_def=parts)
noop_job = dg.define_asset_job("noop_job", selection=["noop"], partitions_def=parts)

defs = dg.Definitions(
    assets=[train, report, noop],
    jobs=[gpu_job, noop_job],
    executor=dg.in_process_executor,
)

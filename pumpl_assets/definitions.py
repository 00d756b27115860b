"""The Dagster code location: every asset, gate, sensor and resource under ``defs/``."""

from __future__ import annotations

from pathlib import Path

import dagster as dg


@dg.definitions
def defs() -> dg.Definitions:
    # Steps run in one process: each step of the default multiprocess executor would re-import torch
    # (seconds each) for no gain, and training already runs in its own subprocess.
    return dg.Definitions.merge(
        dg.load_from_defs_folder(path_within_project=Path(__file__).parent),
        dg.Definitions(executor=dg.in_process_executor),
    )

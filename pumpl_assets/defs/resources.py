"""Resources: MLflow (tracking + registry) and the teacher's connection settings."""

import dagster as dg

from pumpl_assets.core import settings


class MlflowResource(dg.ConfigurableResource):
    """A small ConfigurableResource around mlflow (dagster-mlflow's is a legacy @resource).

    Every MLflow run it opens is tagged with the Dagster run id and partition.
    """

    tracking_uri: str | None = None

    def registry(self):  # type: ignore[no-untyped-def]
        from pumpl_assets.core.registry import Registry

        return Registry(self.tracking_uri or settings.mlflow_tracking_uri())


class TeacherResource(dg.ConfigurableResource):
    """Where the Claude teacher connects. The key itself is read from ANTHROPIC_API_KEY at call time
    and never stored in config, metadata or logs."""

    base_url: str | None = None
    timeout_s: float = 60.0
    max_retries: int = 4


@dg.definitions
def resources() -> dg.Definitions:
    return dg.Definitions(resources={"mlflow": MlflowResource(), "teacher": TeacherResource()})

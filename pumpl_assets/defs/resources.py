"""Resources: MLflow (tracking + registry) and the teacher's connection settings."""

import dagster as dg

from pumpl_assets.core import settings


class MlflowResource(dg.ConfigurableResource):
    """MLflow tracking + registry for the assets: a local sqlite store or a tracking server.

    Why not dagster-mlflow: its 0.29 ``mlflow_tracking`` is a legacy function ``@resource`` that sets
    process-global fluent state (``mlflow.set_tracking_uri``, ``os.environ`` updates, one active run per
    Dagster *job*, an ``atexit`` hack); we need one explicit-client MLflow run per asset step and
    partition, so each run we open is tagged ``dagster.run_id`` / ``dagster.partition`` /
    ``dagster.asset`` instead (see ``defs/model.py`` ``_mlflow_tags``).

    ``tracking_uri``: default ``MLFLOW_TRACKING_URI`` or the sqlite file under the data root; an
    ``http(s)://`` server (``mlflow server --serve-artifacts``) keeps every artifact off this machine.
    Credentials, if any, come from MLflow's own env variables and never enter this config.
    """

    tracking_uri: str | None = None

    def registry(self):  # type: ignore[no-untyped-def]
        from pumpl_assets.core.registry import Registry

        registry = Registry(self.tracking_uri or settings.mlflow_tracking_uri())
        registry.check_reachable()  # a clear error naming the server (MLflow's own retries take minutes)
        return registry


class TeacherResource(dg.ConfigurableResource):
    """Where the Claude teacher connects. The key itself is read from ANTHROPIC_API_KEY at call time
    and never stored in config, metadata or logs."""

    base_url: str | None = None
    timeout_s: float = 60.0
    max_retries: int = 4


@dg.definitions
def resources() -> dg.Definitions:
    return dg.Definitions(resources={"mlflow": MlflowResource(), "teacher": TeacherResource()})

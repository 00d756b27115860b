"""The UI as people see it: the real Dagster UI (``dagster dev``) and the real MLflow UI, started as
servers, asked through their own APIs what they show, and looked at in headless Chromium.

Screenshots are kept under ``bench/out/ui/`` (git-ignored). Chromium comes from
``scripts/install_browser.sh``; without it these tests skip (and fail under ``CI=true``).
Every wait is bounded; a failure message carries the server's log tail.
"""

from __future__ import annotations

import shutil
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.ui_helpers import (
    REPO_ROOT,
    VENV_BIN,
    Server,
    assert_not_blank,
    capture_page,
    child_env,
    free_port,
    graphql,
    http_json,
    keep_for_people,
    require_chromium,
    wait_for,
)

pytestmark = pytest.mark.integration

ASSETS = [
    "raw", "distilled", "validated", "merged", "data_profile", "split",
    "lora_adapter", "merged_model", "eval_report", "awq_model", "gguf_model", "registry_entry",
]  # fmt: skip
SENSOR = "raw_data_sensor"
JOB = "full_graph"
DAGSTER_READY_TIMEOUT = 180.0  # 2 shared cores: the code server imports torch & co.
MLFLOW_READY_TIMEOUT = 90.0


# ---- Dagster -----------------------------------------------------------------------------------
@dataclass
class Expected:
    """What the code location defines, read in-process: the UI must show exactly this."""

    assets: set[str]
    parents: dict[str, set[str]]
    checks: set[tuple[str, str]]
    blocking: set[tuple[str, str]]
    partition_keys: list[str]
    jobs: set[str]
    sensors: set[str]


def _expected_from_code() -> Expected:
    from pumpl_assets.core.catalogue import PARTITION_KEYS
    from pumpl_assets.definitions import defs as build

    defs = build()
    graph = defs.resolve_asset_graph()
    keys = list(graph.get_all_asset_keys())
    checks = {(ck.asset_key.to_user_string(), ck.name) for ck in graph.asset_check_keys}
    blocking = {
        (ck.asset_key.to_user_string(), ck.name)
        for ck in graph.asset_check_keys
        if graph.get_check_spec(ck).blocking
    }
    return Expected(
        assets={k.to_user_string() for k in keys},
        parents={k.to_user_string(): {p.to_user_string() for p in graph.get(k).parent_keys} for k in keys},
        checks=checks,
        blocking=blocking,
        partition_keys=list(PARTITION_KEYS),
        jobs={JOB},
        sensors={SENSOR},
    )


@dataclass
class DagsterUI:
    server: Server
    expected: Expected
    tmp: Path
    startup_s: float


LOCATION_QUERY = """
{ workspaceOrError { __typename
    ... on Workspace { locationEntries { name loadStatus
        locationOrLoadError { __typename ... on PythonError { message stack } } } }
    ... on PythonError { message } } }
"""


def _location_loaded(server: Server) -> bool:
    data = graphql(server.base_url, LOCATION_QUERY)["workspaceOrError"]
    if data["__typename"] != "Workspace":
        raise AssertionError(f"workspace failed to load: {data}\n{server.log_tail()}")
    entries = data["locationEntries"]
    for entry in entries:
        err = entry["locationOrLoadError"]
        if err and err["__typename"] == "PythonError":
            raise AssertionError(
                f"code location {entry['name']} failed to load: {err['message']}\n"
                f"{''.join(err['stack'])[-3000:]}\n{server.log_tail()}"
            )
    return bool(entries) and all(e["loadStatus"] == "LOADED" and e["locationOrLoadError"] for e in entries)


@pytest.fixture(scope="module")
def dagster_ui(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DagsterUI]:
    require_chromium()  # no point starting a server we cannot look at
    tmp = tmp_path_factory.mktemp("dagster_ui")
    home, data = tmp / "dagster_home", tmp / "data"
    home.mkdir()
    data.mkdir()
    shutil.copyfile(REPO_ROOT / "dagster_home" / "dagster.yaml", home / "dagster.yaml")
    port = free_port()
    server = Server(
        name="dagster dev",
        argv=[str(VENV_BIN / "dagster"), "dev", "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(port)],
        port=port,
        log_path=tmp / "dagster_dev.log",
        env=child_env(
            DAGSTER_HOME=str(home),
            PUMPL_DATA_ROOT=str(data),
            MLFLOW_TRACKING_URI=f"sqlite:///{data / 'mlflow.db'}",
        ),
    )
    t0 = time.monotonic()
    server.start()
    try:
        expected = _expected_from_code()  # in-process, while the server boots in its own processes
        wait_for(
            "the Dagster GraphQL endpoint to answer with the code location loaded",
            lambda: _location_loaded(server),
            timeout=DAGSTER_READY_TIMEOUT,
            server=server,
            interval=2.0,
        )
        yield DagsterUI(server=server, expected=expected, tmp=tmp, startup_s=time.monotonic() - t0)
    finally:
        server.stop()


ASSETS_QUERY = """
{ assetNodes { assetKey { path } groupName isPartitioned partitionKeys jobNames
    dependencyKeys { path }
    assetChecksOrError { __typename
        ... on AssetChecks { checks { name blocking } }
        ... on Error { message } } } }
"""

REPOS_QUERY = """
{ repositoriesOrError { __typename
    ... on RepositoryConnection { nodes { name location { name }
        jobs { name }
        sensors { name sensorState { status } targets { pipelineName } } } }
    ... on PythonError { message } } }
"""


def test_dagster_ui_loads_every_asset_check_sensor_and_job(dagster_ui: DagsterUI) -> None:
    exp = dagster_ui.expected
    assert exp.assets == set(ASSETS), f"code defines {sorted(exp.assets)}"
    nodes = graphql(dagster_ui.server.base_url, ASSETS_QUERY)["assetNodes"]
    by_name = {"/".join(n["assetKey"]["path"]): n for n in nodes}
    assert set(by_name) == exp.assets, (
        f"UI assets {sorted(by_name)} != code assets {sorted(exp.assets)}\n{dagster_ui.server.log_tail()}"
    )

    ui_checks: set[tuple[str, str]] = set()
    ui_blocking: set[tuple[str, str]] = set()
    for name, node in by_name.items():
        assert node["isPartitioned"], f"{name} is not partitioned in the UI"
        assert node["partitionKeys"] == exp.partition_keys, f"{name}: partitions {node['partitionKeys']}"
        assert JOB in node["jobNames"], f"{name} is not in job {JOB}: {node['jobNames']}"
        parents = {"/".join(d["path"]) for d in node["dependencyKeys"]}
        assert parents == exp.parents[name], f"{name}: UI parents {parents} != code {exp.parents[name]}"
        checks = node["assetChecksOrError"]
        assert checks["__typename"] == "AssetChecks", f"{name}: checks not loaded: {checks}"
        for check in checks["checks"]:
            ui_checks.add((name, check["name"]))
            if check["blocking"]:
                ui_blocking.add((name, check["name"]))
    assert len(exp.checks) >= 20, f"only {len(exp.checks)} asset checks defined"
    assert ui_checks == exp.checks, (
        f"checks only in code: {sorted(exp.checks - ui_checks)}; only in UI: {sorted(ui_checks - exp.checks)}"
    )
    assert ui_blocking == exp.blocking, f"blocking differs: {sorted(ui_blocking ^ exp.blocking)}"

    repos = graphql(dagster_ui.server.base_url, REPOS_QUERY)["repositoriesOrError"]
    assert repos["__typename"] == "RepositoryConnection", repos
    jobs = {j["name"] for r in repos["nodes"] for j in r["jobs"]}
    sensors = {s["name"]: s for r in repos["nodes"] for s in r["sensors"]}
    assert exp.jobs <= jobs, f"jobs in UI: {sorted(jobs)}"
    assert set(sensors) == exp.sensors, f"sensors in UI: {sorted(sensors)}"
    targets = {t["pipelineName"] for t in sensors[SENSOR]["targets"] or []}
    assert targets == {JOB}, f"{SENSOR} targets {targets}"
    assert sensors[SENSOR]["sensorState"]["status"] in ("RUNNING", "STOPPED"), sensors[SENSOR]


def _group_ids(base_url: str) -> list[str]:
    """Ids the lineage page uses for its collapsible groups (both of Dagster's id schemes), so the
    screenshot shows every asset rather than two collapsed group boxes."""
    nodes = graphql(base_url, "{ assetNodes { groupName repository { name location { name } } } }")[
        "assetNodes"
    ]
    ids: set[str] = set()
    for n in nodes:
        ids.add(f"global@global:{n['groupName']}")
        ids.add(f"{n['repository']['name']}@{n['repository']['location']['name']}:{n['groupName']}")
    return sorted(ids)


def test_dagster_asset_graph_screenshot(dagster_ui: DagsterUI) -> None:
    base = dagster_ui.server.base_url
    # The UI pops a "join the community" dialog over the graph on localhost until this is set.
    assert graphql(base, "mutation { setNuxSeen }")["setNuxSeen"] is True
    expanded = urllib.parse.quote(",".join(_group_ids(base)), safe="")
    url = f"{base}/asset-groups?expanded={expanded}"  # Dagster 1.13: "Global asset lineage"
    png = dagster_ui.tmp / "dagster_asset_graph.png"
    cap = capture_page(url, png, must_contain=["Global asset lineage", *(f">{a}<" for a in ASSETS)])
    kept = keep_for_people(png, "dagster_asset_graph.png")
    stats = assert_not_blank(png)
    assert "Join the Dagster community" not in cap.dom, f"a dialog covers the graph; see {kept}"
    print(
        f"dagster graph screenshot: {kept} ({stats}, attempts={cap.attempts}, startup={dagster_ui.startup_s:.0f}s)"
    )


# ---- MLflow --------------------------------------------------------------------------------------
@dataclass
class MlflowUI:
    server: Server
    model_name: str
    version: str
    tmp: Path


@pytest.fixture(scope="module")
def mlflow_ui(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowUI]:
    require_chromium()
    from pumpl_assets.core.catalogue import PARTITION_KEYS
    from pumpl_assets.core.registry import Registry, metric_tags, registered_model_name

    tmp = tmp_path_factory.mktemp("mlflow_ui")
    db = tmp / "mlflow.db"
    artifacts = tmp / "artifacts"
    model_dir = tmp / "awq_model"
    model_dir.mkdir()
    (model_dir / "config.json").write_text('{"model_type": "llama"}\n')
    partition = PARTITION_KEYS[0]
    registry = Registry(f"sqlite:///{db}", artifact_root=str(artifacts))
    with registry.start_run("pumpl-ui-test", "ui-test") as run_id:
        registry.log_metrics({"schema_valid": 1.0}, run_id=run_id)
        version = registry.register_version(
            partition,
            model_dir,
            run_id=run_id,
            tags={"source": "test_ui", **metric_tags({"schema_valid": 1.0})},
        )
    registry.set_champion(partition, version)

    port = free_port()
    server = Server(
        name="mlflow server",
        argv=[
            str(VENV_BIN / "mlflow"),
            "server",
            "--backend-store-uri",
            f"sqlite:///{db}",
            "--default-artifact-root",
            artifacts.as_uri(),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        port=port,
        log_path=tmp / "mlflow_server.log",
        env=child_env(),
    )
    server.start()
    try:
        wait_for(
            "the MLflow server to answer /health",
            lambda: _health(server),
            timeout=MLFLOW_READY_TIMEOUT,
            server=server,
        )
        yield MlflowUI(server=server, model_name=registered_model_name(partition), version=version, tmp=tmp)
    finally:
        server.stop()


def _health(server: Server) -> bool:
    import urllib.request

    with urllib.request.urlopen(f"{server.base_url}/health", timeout=5) as resp:
        return resp.status == 200


def test_mlflow_rest_shows_model_and_champion(mlflow_ui: MlflowUI) -> None:
    base = f"{mlflow_ui.server.base_url}/api/2.0/mlflow"
    name = urllib.parse.quote(mlflow_ui.model_name)
    model = http_json(f"{base}/registered-models/get?name={name}")["registered_model"]
    assert model["name"] == mlflow_ui.model_name
    aliases = {a["alias"]: a["version"] for a in model.get("aliases", [])}
    assert aliases.get("champion") == mlflow_ui.version, f"aliases shown: {aliases}"
    by_alias = http_json(f"{base}/registered-models/alias?name={name}&alias=champion")["model_version"]
    assert by_alias["version"] == mlflow_ui.version
    assert by_alias["source"].startswith("runs:/"), by_alias["source"]
    tags = {t["key"]: t["value"] for t in by_alias.get("tags", [])}
    assert tags.get("metric.schema_valid") == "1.0", tags


def test_mlflow_model_page_screenshot(mlflow_ui: MlflowUI) -> None:
    url = f"{mlflow_ui.server.base_url}/#/models/{urllib.parse.quote(mlflow_ui.model_name)}"
    png = mlflow_ui.tmp / "mlflow_model.png"
    cap = capture_page(
        url, png, must_contain=[mlflow_ui.model_name, "champion", f"Version {mlflow_ui.version}"]
    )
    kept = keep_for_people(png, "mlflow_model.png")
    stats = assert_not_blank(png)
    print(f"mlflow model screenshot: {kept} ({stats}, attempts={cap.attempts})")

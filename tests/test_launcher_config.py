"""The Kubernetes and Docker run launchers' configuration, checked by Dagster's own validation.

Neither Kubernetes nor Docker runs here, so what can be checked is checked: the Helm values
(deploy/k8s/values.yaml) are rendered into the dagster.yaml sections the chart makes of
them (its ``helpers/instance/*.tpl`` templates, the fields WriteVue sets) and validated
against Dagster's instance schema and each class's ``config_type()``, as Dagster does when
it loads an instance; deploy/docker/dagster.yaml is loaded as a real instance on the
PostgreSQL server, with its DockerRunLauncher built. A broken value fails both.
"""

from __future__ import annotations

import copy
import importlib
import shutil
from pathlib import Path

import pytest
import yaml
from dagster import DagsterInstance
from dagster._check import CheckError
from dagster._config import process_config
from dagster._core.errors import DagsterInvalidConfigError
from dagster._core.instance.ref import InstanceRef
from dagster._serdes import ConfigurableClassData

from writevue_devtools.dagster_pg import dagster_pg_env

REPO = Path(__file__).resolve().parents[1]
VALUES = REPO / "deploy" / "k8s" / "values.yaml"
K8S_SECRETS = REPO / "deploy" / "k8s" / "writevue-secrets.example.yaml"
DOCKER = REPO / "deploy" / "docker" / "dagster.yaml"
ENV_EXAMPLE = REPO / "deploy" / "writevue.env.example"
RELEASE, NAMESPACE = "writevue", "writevue"
#: what Kubernetes gives a run instead of a [runs] setting of the env file: secrets as
#: values (a Secret's key), not files; the storage's address in the instance the chart
#: renders from ``postgresql.*`` (and its password from global.postgresqlSecretName)
K8S_INSTEAD = {
    "WRITEVUE_KEY_FILE": "WRITEVUE_KEYS",
    "WRITEVUE_SMTP_PASSWORD_FILE": "WRITEVUE_SMTP_PASSWORD",
    "PGPASSFILE": "WRITEVUE_DATABASE_URL",  # the password in the URL
}
K8S_CHART_GIVES = {
    "DAGSTER_PG_HOST",
    "DAGSTER_PG_PORT",
    "DAGSTER_PG_DB",
    "DAGSTER_PG_USERNAME",
    "DAGSTER_PG_PASSWORD",
}


def runs_settings() -> dict[str, str]:
    """The settings in the [runs] sections of deploy/writevue.env.example: what a run needs."""
    settings, in_runs = {}, False
    for line in ENV_EXAMPLE.read_text().splitlines():
        if line.startswith("# ---"):
            in_runs = "[runs]" in line
        elif in_runs and line.strip() and not line.startswith("#"):
            name, _, value = line.partition("=")
            settings[name.strip()] = value.strip()
    return settings


def k8s_values() -> dict:
    return yaml.safe_load(VALUES.read_text())


def names(sources: list[dict]) -> list[str]:
    return [source["name"] for source in sources if "name" in source]


def render_instance(values: dict) -> dict:
    """The dagster.yaml the chart renders from ``values``: storage, run launcher, run
    coordinator and concurrency, field for field as its templates map them."""
    pg = values["postgresql"]
    launcher = values["runLauncher"]["config"]["k8sRunLauncher"]
    queued = values["dagsterDaemon"]["runCoordinator"]["config"]["queuedRunCoordinator"]
    launcher_config = {
        "load_incluster_config": launcher["loadInclusterConfig"],
        "job_namespace": launcher.get("jobNamespace") or NAMESPACE,
        "image_pull_policy": launcher["imagePullPolicy"],
        "service_account_name": values["global"]["serviceAccountName"],
        "dagster_home": values["global"]["dagsterHome"],
        "instance_config_map": f"{RELEASE}-dagster-instance",
        "postgres_password_secret": values["global"]["postgresqlSecretName"],
    }
    optional = {
        "kubeconfig_file": launcher.get("kubeconfigFile"),
        "env_config_maps": names(launcher.get("envConfigMaps", [])),
        "env_secrets": names(launcher.get("envSecrets", [])),
        "env_vars": launcher.get("envVars"),
        "volume_mounts": launcher.get("volumeMounts"),
        "volumes": launcher.get("volumes"),
        "labels": launcher.get("labels"),
        "resources": launcher.get("resources"),
        "fail_pod_on_run_failure": launcher.get("failPodOnRunFailure"),
        "scheduler_name": launcher.get("schedulerName"),
        "security_context": launcher.get("securityContext"),
    }
    launcher_config |= {key: value for key, value in optional.items() if value}
    run_k8s = launcher.get("runK8sConfig") or {}
    if run_k8s:
        launcher_config["run_k8s_config"] = {
            snake: run_k8s[camel]
            for camel, snake in (
                ("containerConfig", "container_config"),
                ("podSpecConfig", "pod_spec_config"),
                ("podTemplateSpecMetadata", "pod_template_spec_metadata"),
                ("jobSpecConfig", "job_spec_config"),
                ("jobMetadata", "job_metadata"),
            )
            if run_k8s.get(camel)
        }
    coordinator = {
        "max_concurrent_runs": queued.get("maxConcurrentRuns", -1),
        **{
            snake: queued[camel]
            for camel, snake in (
                ("tagConcurrencyLimits", "tag_concurrency_limits"),
                ("dequeueIntervalSeconds", "dequeue_interval_seconds"),
                ("dequeueUseThreads", "dequeue_use_threads"),
                ("dequeueNumWorkers", "dequeue_num_workers"),
            )
            if queued.get(camel)
        },
    }
    if values["concurrency"]["runs"].get("maxConcurrentRuns") is not None:
        # The chart refuses both; concurrency.runs wins, as its template renders it.
        coordinator.pop("max_concurrent_runs")
    pools, runs = values["concurrency"]["pools"], values["concurrency"]["runs"]
    concurrency = {
        "pools": {
            key: pools[camel]
            for camel, key in (("defaultLimit", "default_limit"), ("granularity", "granularity"))
            if pools.get(camel) is not None
        },
        "runs": {
            "max_concurrent_runs": runs["maxConcurrentRuns"],
            "tag_concurrency_limits": runs.get("tagConcurrencyLimits", []),
        },
    }
    return {
        "telemetry": {"enabled": values["telemetry"]["enabled"]},
        "storage": {
            "postgres": {
                "postgres_db": {
                    "username": pg["postgresqlUsername"],
                    "password": {"env": "DAGSTER_PG_PASSWORD"},
                    "hostname": pg["postgresqlHost"],
                    "db_name": pg["postgresqlDatabase"],
                    "port": pg["service"]["port"],
                    "params": pg.get("postgresqlParams", {}),
                    "scheme": pg["postgresqlScheme"],
                }
            }
        },
        "run_launcher": {
            "module": "dagster_k8s",
            "class": "K8sRunLauncher",
            "config": launcher_config,
        },
        "run_coordinator": {
            "module": "dagster.core.run_coordinator",
            "class": "QueuedRunCoordinator",
            "config": coordinator,
        },
        "concurrency": concurrency,
    }


def class_config_errors(data: ConfigurableClassData | None) -> list[str]:
    """What Dagster says of a configurable class's config as it loads it (``rehydrate``
    validates exactly so before it builds the object, which for the Kubernetes launcher
    needs a cluster)."""
    if data is None:
        return []
    klass = getattr(importlib.import_module(data.module_name), data.class_name)
    result = process_config(klass.config_type(), data.config_dict)
    return [] if result.success else [error.message for error in result.errors]


def instance_errors(config: dict, folder: Path) -> list[str]:
    """Dagster's instance schema, then the run launcher's, run coordinator's and storage's."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "dagster.yaml").write_text(yaml.safe_dump(config))
    try:
        ref = InstanceRef.from_dir(str(folder))
    except (DagsterInvalidConfigError, CheckError) as exc:
        return [str(exc)]
    return [
        *class_config_errors(ref.run_launcher_data),
        *class_config_errors(ref.run_coordinator_data),
        *class_config_errors(ref.storage_data),
    ]


@pytest.fixture
def pg_password(monkeypatch):
    monkeypatch.setenv("DAGSTER_PG_PASSWORD", "from-the-secret")


def test_the_helm_values_render_a_valid_k8s_instance(tmp_path, pg_password):
    config = render_instance(k8s_values())

    assert instance_errors(config, tmp_path / "k8s") == []
    launcher = config["run_launcher"]["config"]
    assert {"name": "writevue-home", "mountPath": "/var/lib/writevue"} in launcher["volume_mounts"]
    assert config["concurrency"]["pools"] == {"default_limit": 4, "granularity": "op"}
    assert config["run_coordinator"]["config"]["dequeue_interval_seconds"] == 1


def test_the_code_server_and_its_run_pods_run_as_one_user_not_root():
    """The run pods' security context is the run launcher's (the chart passes the code
    server's env and Secrets to runs, not its security context): both say the same
    non-root user, and Kubernetes' own model takes them."""
    from dagster_k8s.models import k8s_model_from_dict, k8s_snake_case_dict
    from kubernetes.client import V1PodSecurityContext

    values = k8s_values()
    (deployment,) = values["dagster-user-deployments"]["deployments"]
    launcher = values["runLauncher"]["config"]["k8sRunLauncher"]
    code_server = deployment["podSecurityContext"]
    run_pod = launcher["runK8sConfig"]["podSpecConfig"]["securityContext"]
    assert code_server == run_pod
    assert run_pod["runAsNonRoot"] is True and run_pod["runAsUser"] not in (None, 0)
    assert run_pod["fsGroup"] == run_pod["runAsGroup"] != 0
    model = k8s_model_from_dict(
        V1PodSecurityContext, k8s_snake_case_dict(V1PodSecurityContext, run_pod)
    )
    assert model.run_as_user == run_pod["runAsUser"]
    # no key file mounted (Kubernetes would make it 0440 root:fsGroup, which WriteVue
    # refuses): the ring is WRITEVUE_KEYS from its own Secret
    mounted = [v for v in deployment.get("volumes", []) + launcher["volumes"] if "secret" in v]
    assert mounted == [] and {"name": "writevue-keys"} in deployment["envSecrets"]
    assert deployment["includeConfigInLaunchedRuns"] == {"enabled": True}


def k8s_secret_keys() -> dict[str, set[str]]:
    return {
        doc["metadata"]["name"]: set(doc["stringData"])
        for doc in yaml.safe_load_all(K8S_SECRETS.read_text())
    }


def test_a_k8s_run_pod_gets_every_runs_setting_and_no_other():
    """A run pod's environment (the code server's `env`, passed on with its Secrets) holds
    each [runs] setting of deploy/writevue.env.example, secrets as values; nothing else."""
    (deployment,) = k8s_values()["dagster-user-deployments"]["deployments"]
    secrets = k8s_secret_keys()
    assert sorted(secrets) == sorted(s["name"] for s in deployment["envSecrets"])
    plain = set(deployment["env"])
    from_secrets = set().union(*secrets.values())
    assert not plain & from_secrets
    wanted = {K8S_INSTEAD.get(name, name) for name in runs_settings()} - K8S_CHART_GIVES
    assert plain | from_secrets == wanted
    # a secret is never a plain value in the values file
    assert not any(w in name for name in plain for w in ("PASSWORD", "DATABASE_URL", "BROKER"))


def test_the_docker_launcher_passes_exactly_the_runs_settings():
    config = yaml.safe_load(DOCKER.read_text())["run_launcher"]["config"]
    names = [entry.partition("=")[0] for entry in config["env_vars"]]
    assert len(names) == len(set(names))
    assert set(names) == set(runs_settings())
    # the secret files among them are mounted read-only at the same paths, each alone
    mounts = config["container_kwargs"]["volumes"]
    settings = runs_settings()
    for name in ("WRITEVUE_KEY_FILE", "PGPASSFILE", "WRITEVUE_SMTP_PASSWORD_FILE"):
        assert mounts[settings[name]] == {"bind": settings[name], "mode": "ro"}
    assert len(mounts) == 3  # not the session secret, which a run does not need


def test_the_dagster_pg_variables_come_from_one_url():
    assert dagster_pg_env("postgresql+psycopg://ops:p%40ss@db.internal:6432/dag%20ster") == {
        "DAGSTER_PG_HOST": "db.internal",
        "DAGSTER_PG_PORT": "6432",
        "DAGSTER_PG_DB": "dag ster",
        "DAGSTER_PG_USERNAME": "ops",
        "DAGSTER_PG_PASSWORD": "p@ss",
    }
    assert dagster_pg_env("postgresql://postgres@127.0.0.1/x")["DAGSTER_PG_PASSWORD"] == ""
    with pytest.raises(ValueError):
        dagster_pg_env("sqlite:///warehouse.db")


def test_the_helm_values_hold_no_secret():
    values = k8s_values()

    assert values["postgresql"]["postgresqlPassword"] == ""
    assert values["generatePostgresqlPasswordSecret"] is False
    (deployment,) = values["dagster-user-deployments"]["deployments"]
    assert deployment["dagsterApiGrpcArgs"] == [
        "--module-name",
        "writevue_pipelines.defs",
        "--attribute",
        "defs",
    ]
    assert names(deployment["envSecrets"]) == ["writevue-secrets", "writevue-keys"]
    settings = yaml.safe_dump(values).lower()  # the values, not the comments
    for word in ("password: ", "postgresql://", "pyamqp://", "redis://", "sk_live", "sk_test"):
        assert word not in settings.replace("postgresqlpassword: ''", "")


@pytest.mark.parametrize(
    "path, value",
    [
        (("runLauncher", "config", "k8sRunLauncher", "loadInclusterConfig"), "sometimes"),
        (("runLauncher", "config", "k8sRunLauncher", "envSecrets"), [{"name": 5}]),
        (("runLauncher", "config", "k8sRunLauncher", "labels"), ["not", "a", "map"]),
        (
            (
                "dagsterDaemon",
                "runCoordinator",
                "config",
                "queuedRunCoordinator",
                "dequeueIntervalSeconds",
            ),
            "soon",
        ),
        (("concurrency", "pools", "defaultLimit"), "many"),
    ],
)
def test_a_broken_helm_value_fails_dagsters_validation(tmp_path, pg_password, path, value):
    values = copy.deepcopy(k8s_values())
    node = values
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value

    assert instance_errors(render_instance(values), tmp_path / "broken") != []


# -- Docker ------------------------------------------------------------------------------------


@pytest.fixture
def docker_env(postgres_url, monkeypatch):
    for name, value in {
        **dagster_pg_env(postgres_url),
        "WRITEVUE_IMAGE": "registry.example.com/writevue:1.0.0",
        "WRITEVUE_DOCKER_NETWORK": "writevue",
    }.items():
        monkeypatch.setenv(name, value)


def test_the_docker_instance_loads_with_its_run_launcher(tmp_path, docker_env):
    home = tmp_path / "docker"
    home.mkdir()
    shutil.copy(DOCKER, home / "dagster.yaml")

    with DagsterInstance.from_config(str(home)) as instance:
        launcher = instance.run_launcher
        assert type(launcher).__name__ == "DockerRunLauncher"
        assert launcher.image == "registry.example.com/writevue:1.0.0"
        assert launcher.networks == ["writevue"]
        assert type(instance.run_coordinator).__name__ == "QueuedRunCoordinator"
        pools = instance.get_concurrency_config().pool_config
        assert pools.pool_granularity.value == "op"
    # Settings are passed by name from the daemon's environment, never written here.
    assert all("=" not in entry for entry in launcher.env_vars)
    assert "WRITEVUE_DATABASE_URL" in launcher.env_vars


@pytest.mark.parametrize(
    "key, value",
    [("networks", "writevue"), ("env_vars", {"WRITEVUE_ENV": "production"}), ("imag", "x")],
)
def test_a_broken_docker_value_fails_dagsters_validation(tmp_path, docker_env, key, value):
    config = yaml.safe_load(DOCKER.read_text())
    config["run_launcher"]["config"][key] = value
    home = tmp_path / "broken"
    home.mkdir()
    (home / "dagster.yaml").write_text(yaml.safe_dump(config))

    with pytest.raises(DagsterInvalidConfigError):
        with DagsterInstance.from_config(str(home)) as instance:
            instance.run_launcher  # noqa: B018  (built on first use, as the daemon does)

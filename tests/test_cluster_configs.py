"""Cluster configs under cluster/: Ray's own schema and defaults, the security rules, and agreement
between the `ray up` configs and the KubeRay manifests. Fast: no cloud, no credentials, no Ray cluster.

What a real `ray up` does that these tests cannot: resolve the AMI / image, create IAM roles, launch
instances. The AWS security group is built for real (Ray's own code) against moto when moto is
installed.
"""

from __future__ import annotations

import copy
import re
import shlex
from pathlib import Path

import jsonschema
import pytest
import yaml
from ray._private.label_utils import validate_node_label_syntax, validate_node_labels
from ray.autoscaler._private.util import prepare_config, validate_config

REPO = Path(__file__).resolve().parents[1]
CLUSTER = REPO / "cluster"
KUBERAY = CLUSTER / "kuberay"
RAY_UP_FILES = ["aws.yaml", "gcp.yaml"]
KUBERAY_FILES = ["raycluster.yaml", "rayjob.yaml"]

# node type -> value of its raysl/role label
ROLES = {"head": "head", "cpu_augment": "augment", "gpu_train": "train"}
ROLE_LABEL = "raysl/role"
# KubeRay worker group -> the ray up node type it mirrors
KUBE_GROUPS = {"cpu-augment": "cpu_augment", "gpu-train": "gpu_train"}
PUBLIC = {"0.0.0.0/0", "::/0"}


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def ray_up(name: str) -> dict:
    return load(CLUSTER / name)


def prepared(config: dict) -> dict:
    """The config as `ray up` sees it before any cloud call: provider defaults merged in, setup
    commands merged, per-type worker bounds filled (ray.autoscaler._private.util.prepare_config)."""
    return prepare_config(copy.deepcopy(config))


def constraint_pins() -> dict[str, str]:
    pins = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" in line:
            name, version = line.split("==", 1)
            pins[name.strip().lower()] = version.strip()
    return pins


def ray_start_command(commands: list[str], head: bool) -> list[str]:
    """Tokens of the one command that runs `ray start` (with --head, or without)."""
    found = []
    for command in commands:
        tokens = shlex.split(command.replace(";", " ; "))
        if "start" in tokens and any(t == "ray" or t.endswith("/ray") for t in tokens):
            if ("--head" in tokens) == head:
                found.append(tokens)
    assert len(found) == 1, f"expected one `ray start{' --head' if head else ''}` command, got {found}"
    return found[0]


def option(tokens: list[str], name: str) -> str | None:
    for index, token in enumerate(tokens):
        if token.startswith(name + "="):
            return token.split("=", 1)[1]
        if token == name and index + 1 < len(tokens):
            return tokens[index + 1]
    return None


def sets_token_auth(tokens: list[str]) -> bool:
    """RAY_AUTH_MODE=token is set in the same shell command, before `ray start`."""
    start = tokens.index("start")
    return any(t == "RAY_AUTH_MODE=token" for t in tokens[:start])


# ---------------------------------------------------------------- ray up: Ray's schema and defaults


@pytest.mark.parametrize("name", RAY_UP_FILES)
def test_ray_up_config_passes_ray_schema_after_defaults(name):
    config = ray_up(name)
    full = prepared(config)
    validate_config(full)  # ray/autoscaler/ray-schema.json + Ray's cross-field checks
    assert full["head_node_type"] == "head"
    assert set(full["available_node_types"]) == set(ROLES)
    # setup_commands reach both head and workers once merged the way `ray up` merges them
    assert full["worker_setup_commands"][: len(config["setup_commands"])] == config["setup_commands"]
    assert full["head_setup_commands"][: len(config["setup_commands"])] == config["setup_commands"]


def _unknown_node_type_key(c):
    c["available_node_types"]["gpu_train"]["instance_type"] = "g5.2xlarge"


def _fractional_resource(c):
    c["available_node_types"]["cpu_augment"]["resources"]["CPU"] = 0.5


def _non_string_label(c):
    c["available_node_types"]["gpu_train"]["labels"][ROLE_LABEL] = 1


def _unknown_top_level_key(c):
    c["dashboard_host"] = "127.0.0.1"


def _unknown_security_group_key(c):
    c["provider"]["security_group"] = {"GroupName": "x", "Ports": [22]}


def _head_type_missing(c):
    c["head_node_type"] = "ray.head.default"


def _min_workers_above_max(c):
    c["available_node_types"]["gpu_train"]["min_workers"] = 20


@pytest.mark.parametrize("name", RAY_UP_FILES)
@pytest.mark.parametrize(
    "mutate, error",
    [
        (_unknown_node_type_key, jsonschema.ValidationError),
        (_fractional_resource, jsonschema.ValidationError),
        (_non_string_label, jsonschema.ValidationError),
        (_unknown_top_level_key, jsonschema.ValidationError),
        (_unknown_security_group_key, jsonschema.ValidationError),
        (_head_type_missing, ValueError),
        (_min_workers_above_max, ValueError),
    ],
)
def test_ray_schema_rejects_broken_configs(name, mutate, error):
    config = ray_up(name)
    mutate(config)
    with pytest.raises(error):
        validate_config(prepared(config))


# ---------------------------------------------------------------- ray up: roles, labels, resources


@pytest.mark.parametrize("name", RAY_UP_FILES)
def test_node_roles_labels_and_resources(name):
    config = ray_up(name)
    types = config["available_node_types"]
    for node_type, role in ROLES.items():
        labels = types[node_type]["labels"]
        assert labels == {ROLE_LABEL: role}, node_type
        validate_node_label_syntax(labels)  # Ray's label key/value syntax (raises ValueError)
        validate_node_labels(labels)  # not under Ray's reserved ray.io/ prefix

    head = types["head"]
    assert head["resources"].get("CPU") == 0, "the head must declare 0 CPUs: no training there"
    assert not head["resources"].get("GPU")
    assert head.get("max_workers", 0) == 0
    assert types["gpu_train"]["resources"]["GPU"] == 1
    assert types["gpu_train"]["resources"]["CPU"] >= 1
    assert not types["cpu_augment"]["resources"].get("GPU")
    assert types["cpu_augment"]["resources"]["CPU"] >= 1

    for node_type in ("cpu_augment", "gpu_train"):
        assert types[node_type]["min_workers"] == 0  # scale to zero when idle
        assert 1 <= types[node_type]["max_workers"] <= config["max_workers"]
    assert config["idle_timeout_minutes"] > 0


@pytest.mark.parametrize("name", RAY_UP_FILES)
def test_autoscaler_v2_reads_roles_bounds_and_idle_timeout(name):
    """`ray up` runs autoscaler v2 on the head (Ray >= 2.50); this is the config object it builds."""
    from ray.autoscaler.v2.instance_manager.config import AutoscalingConfig

    config = ray_up(name)
    autoscaling = AutoscalingConfig(copy.deepcopy(config), skip_content_hash=True)
    assert autoscaling.get_head_node_type() == "head"
    assert autoscaling.get_max_num_worker_nodes() == config["max_workers"]
    assert autoscaling.get_idle_timeout_s() == config["idle_timeout_minutes"] * 60
    node_types = autoscaling.get_node_type_configs()
    for node_type, role in ROLES.items():
        node = node_types[node_type]
        assert node.labels == {ROLE_LABEL: role}
        assert node.resources == config["available_node_types"][node_type]["resources"]
    assert node_types["gpu_train"].min_worker_nodes == node_types["cpu_augment"].min_worker_nodes == 0


def test_label_syntax_check_can_fail():
    with pytest.raises(ValueError):
        validate_node_label_syntax({ROLE_LABEL: "augment and train"})
    with pytest.raises(ValueError):
        validate_node_labels({"ray.io/role": "train"})


def test_aws_and_gcp_have_the_same_shape():
    aws, gcp = ray_up("aws.yaml"), ray_up("gcp.yaml")
    for key in ("max_workers", "idle_timeout_minutes", "head_node_type", "file_mounts",
                "setup_commands", "head_start_ray_commands", "worker_start_ray_commands"):
        assert aws[key] == gcp[key], key
    for node_type in ROLES:
        a, g = aws["available_node_types"][node_type], gcp["available_node_types"][node_type]
        for key in ("resources", "labels", "min_workers", "max_workers"):
            assert a[key] == g[key], (node_type, key)


@pytest.mark.parametrize("name", RAY_UP_FILES)
def test_repo_is_installed_with_the_pinned_constraints(name):
    config = ray_up(name)
    assert config["file_mounts"]["~/raysl"] == "."
    installs = [c for c in config["setup_commands"] if "pip install" in c]
    assert any("-c ~/raysl/constraints.txt ~/raysl" in c for c in installs), installs
    pins = constraint_pins()
    assert {"torch", "torchvision", "ray"} <= set(pins)


# ---------------------------------------------------------------- ray up: security


@pytest.mark.parametrize("name", RAY_UP_FILES)
def test_dashboard_on_loopback_and_token_auth(name):
    config = ray_up(name)
    head = ray_start_command(config["head_start_ray_commands"], head=True)
    assert option(head, "--dashboard-host") in {"127.0.0.1", "localhost"}
    assert option(head, "--port") == "6379"
    assert sets_token_auth(head), "head: RAY_AUTH_MODE=token must be set for `ray start --head`"
    worker = ray_start_command(config["worker_start_ray_commands"], head=False)
    assert sets_token_auth(worker), "workers: RAY_AUTH_MODE=token must be set for `ray start`"
    everything = yaml.safe_dump(config)
    assert "0.0.0.0" not in " ".join(config["head_start_ray_commands"])
    assert "RAY_AUTH_MODE=disabled" not in everything
    # every node gets the same token file (ray up -> head -> workers)
    assert config["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"


def test_start_command_checks_can_fail():
    public = ["ray stop", "RAY_AUTH_MODE=token ray start --head --dashboard-host=0.0.0.0"]
    assert option(ray_start_command(public, head=True), "--dashboard-host") == "0.0.0.0"
    no_auth = ray_start_command(["ray start --head --dashboard-host=127.0.0.1"], head=True)
    assert not sets_token_auth(no_auth)


def _publicly_open(rule: dict) -> bool:
    ranges = [r.get("CidrIp") for r in rule.get("IpRanges", [])]
    ranges += [r.get("CidrIpv6") for r in rule.get("Ipv6Ranges", [])]
    return bool(ranges or rule.get("PrefixListIds"))


def assert_only_ssh_open_to_outside(rules: list[dict]) -> None:
    """Every rule that admits addresses (CIDRs, prefix lists) is TCP 22 only; all other rules admit
    security groups only (node-to-node traffic inside the cluster)."""
    for rule in rules:
        if _publicly_open(rule):
            assert rule.get("IpProtocol") == "tcp", rule
            assert rule.get("FromPort") == 22 and rule.get("ToPort") == 22, rule
        else:
            assert rule.get("UserIdGroupPairs"), rule


def test_aws_extra_inbound_rules_open_nothing_but_ssh():
    provider = ray_up("aws.yaml")["provider"]
    extra = provider["security_group"]["IpPermissions"]
    assert provider["security_group"]["GroupName"]
    assert_only_ssh_open_to_outside(extra)
    for port in (6379, 8265, 10001):
        for rule in extra:
            assert not (rule.get("FromPort", -1) <= port <= rule.get("ToPort", -1)), (port, rule)
    # Ray already adds SSH from 0.0.0.0/0; repeating it makes EC2 reject the group's rules
    assert not any(rule.get("FromPort") == 22 and _publicly_open(rule) for rule in extra)


def test_aws_effective_inbound_rules_open_only_ssh():
    """The rules Ray authorizes on the security group it creates: its defaults plus the config's."""
    awsc = pytest.importorskip("ray.autoscaler._private.aws.config", reason="needs boto3")
    extra = ray_up("aws.yaml")["provider"]["security_group"]["IpPermissions"]
    rules = awsc._create_default_inbound_rules({"sg-cluster"}, extra)
    assert_only_ssh_open_to_outside(rules)
    assert any(_publicly_open(r) for r in rules)  # SSH, so that `ray up` can reach the nodes
    internal = [r for r in rules if not _publicly_open(r)]
    assert all(p["GroupId"] == "sg-cluster" for r in internal for p in r["UserIdGroupPairs"])


def test_security_check_can_fail():
    dashboard = {"IpProtocol": "tcp", "FromPort": 8265, "ToPort": 8265, "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}
    everything = {"IpProtocol": "-1", "IpRanges": [{"CidrIp": "10.0.0.0/8"}]}
    for rule in (dashboard, everything):
        with pytest.raises(AssertionError):
            assert_only_ssh_open_to_outside([rule])


def test_aws_security_group_as_ray_up_creates_it(monkeypatch):
    """Ray's own subnet and security-group bootstrap against a mocked EC2 (moto)."""
    moto = pytest.importorskip("moto", reason="moto (mocked AWS) not installed")
    awsc = pytest.importorskip("ray.autoscaler._private.aws.config", reason="needs boto3")
    from ray.autoscaler._private.aws import utils as aws_utils

    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.setenv(key, "testing")
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    caches = (aws_utils.resource_cache, aws_utils.client_cache, awsc._get_subnets_or_die)
    for cache in caches:
        cache.cache_clear()  # boto3 objects made outside the mock must not be reused
    config = prepared(ray_up("aws.yaml"))
    config["head_node"] = {}
    try:
        with moto.mock_aws():
            config = awsc._configure_subnet(config)
            config = awsc._configure_security_group(config)
            group_ids = {g for t in config["available_node_types"].values()
                         for g in t["node_config"]["SecurityGroupIds"]}
            assert len(group_ids) == 1
            ec2 = awsc._client("ec2", config)
            group = ec2.describe_security_groups(GroupIds=list(group_ids))["SecurityGroups"][0]
    finally:
        for cache in caches:
            cache.cache_clear()
    assert group["GroupName"] == config["provider"]["security_group"]["GroupName"]
    rules = group["IpPermissions"]
    assert_only_ssh_open_to_outside(rules)
    pairs = [p["GroupId"] for r in rules for p in r.get("UserIdGroupPairs", [])]
    assert pairs == [group["GroupId"]]  # node-to-node traffic only from the group itself


# ---------------------------------------------------------------- KubeRay


def kuberay(name: str) -> dict:
    return load(KUBERAY / name)


def cluster_spec(name: str) -> dict:
    manifest = kuberay(name)
    return manifest["spec"]["rayClusterSpec"] if manifest["kind"] == "RayJob" else manifest["spec"]


def containers(spec: dict) -> list[dict]:
    pods = [spec["headGroupSpec"]["template"]] + [g["template"] for g in spec["workerGroupSpecs"]]
    return [c for pod in pods for c in pod["spec"]["containers"]]


def cpu_quantity(value) -> float:
    text = str(value)
    return float(text[:-1]) / 1000 if text.endswith("m") else float(text)


@pytest.mark.parametrize("name, kind", [("raycluster.yaml", "RayCluster"), ("rayjob.yaml", "RayJob")])
def test_kuberay_required_fields(name, kind):
    manifest = kuberay(name)
    assert manifest["apiVersion"] == "ray.io/v1"
    assert manifest["kind"] == kind
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", manifest["metadata"]["name"])
    spec = cluster_spec(name)
    head = spec["headGroupSpec"]
    assert isinstance(head["rayStartParams"], dict)
    assert head["template"]["spec"]["containers"]
    groups = spec["workerGroupSpecs"]
    assert [g["groupName"] for g in groups] == list(KUBE_GROUPS)
    for group in groups:
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", group["groupName"])
        assert 0 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"], group["groupName"]
        assert isinstance(group["rayStartParams"], dict)
        assert group["template"]["spec"]["containers"]
    for container in containers(spec):
        assert container["name"] and container["image"]
        assert container["resources"]["requests"] and container["resources"]["limits"]


@pytest.mark.parametrize("name", KUBERAY_FILES)
def test_kuberay_head_is_private_and_token_authenticated(name):
    spec = cluster_spec(name)
    head = spec["headGroupSpec"]
    assert head.get("serviceType", "ClusterIP") == "ClusterIP"  # no LoadBalancer / NodePort
    assert not head.get("enableIngress")
    assert spec["authOptions"]["mode"] == "token"
    assert head["rayStartParams"]["num-cpus"] == "0"
    assert head["labels"] == {ROLE_LABEL: "head"}


def test_rayjob_runs_on_the_raycluster_spec():
    assert cluster_spec("rayjob.yaml") == cluster_spec("raycluster.yaml")


def test_kuberay_images_identical_pinned_and_built_from_dockerfile():
    images = {c["image"] for name in KUBERAY_FILES for c in containers(cluster_spec(name))}
    assert len(images) == 1, images
    (image,) = images
    repository, _, tag = image.rpartition(":")
    assert repository and "/" not in tag and tag not in {"", "latest", "nightly"}, image

    ray_version = constraint_pins()["ray"]
    for name in KUBERAY_FILES:
        assert cluster_spec(name)["rayVersion"] == ray_version
    dockerfile = (KUBERAY / "Dockerfile").read_text()
    bases = re.findall(r"^FROM\s+(\S+)", dockerfile, flags=re.MULTILINE)
    assert bases == [f"rayproject/ray:{ray_version}-py311-gpu"], bases
    assert re.search(r"pip install .*-c constraints\.txt", dockerfile)
    assert image in dockerfile  # the build command names the tag the manifests pull


def test_kuberay_groups_match_aws_node_types():
    aws = ray_up("aws.yaml")
    types = aws["available_node_types"]
    for name in KUBERAY_FILES:
        spec = cluster_spec(name)
        assert spec["autoscalerOptions"]["idleTimeoutSeconds"] == aws["idle_timeout_minutes"] * 60
        for group in spec["workerGroupSpecs"]:
            node = types[KUBE_GROUPS[group["groupName"]]]
            where = (name, group["groupName"])
            assert group["labels"] == node["labels"], where
            validate_node_label_syntax(group["labels"])
            assert (group["minReplicas"], group["maxReplicas"]) == (node["min_workers"], node["max_workers"]), where

            ray_cpus = int(group["rayStartParams"]["num-cpus"])
            assert ray_cpus == node["resources"]["CPU"], where
            (container,) = group["template"]["spec"]["containers"]
            requests, limits = container["resources"]["requests"], container["resources"]["limits"]
            assert cpu_quantity(limits["cpu"]) == ray_cpus, where
            assert cpu_quantity(requests["cpu"]) <= cpu_quantity(limits["cpu"]), where
            assert requests["memory"] == limits["memory"], where  # no memory overcommit

            gpus = node["resources"].get("GPU", 0)
            assert int(limits.get("nvidia.com/gpu", 0)) == gpus, where
            assert int(requests.get("nvidia.com/gpu", 0)) == gpus, where
            assert int(group["rayStartParams"].get("num-gpus", 0)) == gpus, where


def test_rayjob_entrypoint_runs_a_sweep_file_of_the_repo():
    spec = kuberay("rayjob.yaml")["spec"]
    tokens = shlex.split(spec["entrypoint"])
    assert tokens[:2] == ["raysl", "sweep"], tokens
    sweep = tokens[2]
    assert not sweep.startswith("-") and sweep.endswith(".yaml") and not Path(sweep).is_absolute()
    # the job runs in the image's copy of the repository, where the Dockerfile puts sweeps/
    runtime_env = yaml.safe_load(spec["runtimeEnvYAML"])
    dockerfile = (KUBERAY / "Dockerfile").read_text()
    assert re.search(rf"^WORKDIR\s+{re.escape(runtime_env['working_dir'])}\s*$", dockerfile, re.MULTILINE)
    assert re.search(rf"^COPY\b.*\s{re.escape(Path(sweep).parts[0])}\s", dockerfile, re.MULTILINE)
    assert (REPO / sweep).is_file(), f"the RayJob's entrypoint names {sweep}, which is not in the repository"


# ----------------------------------------------------------------------------- what `ray job submit --working-dir .` uploads


def _job_package(excludes: list[str]) -> set[str]:
    """The files Ray packs for `ray job submit --working-dir .` from this repository (its .gitignore and
    .rayignore applied, and `excludes` as --runtime-env-json's), made the way Ray makes it, uploaded nowhere."""
    import tempfile
    import zipfile

    from ray._private.runtime_env.packaging import create_package

    with tempfile.TemporaryDirectory() as directory:
        package = Path(directory) / "package.zip"
        create_package(str(REPO), package, include_gitignore=True, excludes=excludes)
        return set(zipfile.ZipFile(package).namelist())


def _raysl_modules() -> set[str]:
    return {str(path.relative_to(REPO)) for path in (REPO / "raysl").rglob("*.py") if "__pycache__" not in path.parts}


@pytest.mark.parametrize("how", ["ray job submit --working-dir .", "raysl submit"])
def test_the_job_package_holds_every_raysl_module(how):
    from raysl.cli import SUBMIT_EXCLUDES

    packed = _job_package(SUBMIT_EXCLUDES if how == "raysl submit" else [])
    missing = sorted(_raysl_modules() - packed)
    assert not missing, f"{how} leaves out {len(missing)} raysl modules, e.g. {missing[:3]}"
    assert not [name for name in packed if name.startswith(("data/", "results/"))]  # what the excludes are for

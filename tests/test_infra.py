"""The cluster and job manifests in infra/ agree with the code they run.

Nothing here starts Ray or talks to a cluster: the manifests are parsed as YAML
and compared with pyproject.toml, the Dockerfile, jobs/ and the raymae CLI.
"""

from __future__ import annotations

import re
import shlex
import tomllib
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml
from tests.scripts import assert_cli_accepts

ROOT = Path(__file__).resolve().parents[1]
INFRA = ROOT / "infra"
EXPECTED_FILES = ["README.md", "cluster-aws.yaml", "cronjob-score.yaml", "raycluster.yaml",
                  "rayjob-score.yaml", "rayjob-train.yaml", "runtime_env.yaml"]
YAML_FILES = sorted(p for p in INFRA.iterdir() if p.suffix in (".yaml", ".yml"))
JOB_SCRIPT = re.compile(r"(?:^|/)jobs/([A-Za-z0-9_]+)\.py$")
GPU = "nvidia.com/gpu"


# ------------------------------------------------------------------ what the code pins
def package_version() -> str:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


def pyproject_ray_version() -> str:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    pins = [m.group(1) for d in deps if (m := re.fullmatch(r"ray\[[^\]]*\]==(\S+)", d.strip()))]
    assert len(pins) == 1, f"expected one exact ray[...]==X pin in pyproject.toml, found {pins}"
    return pins[0]


def dockerfile_ray_version() -> str:
    m = re.search(r"^ARG RAY_VERSION=(\S+)\s*$", (ROOT / "Dockerfile").read_text(), re.M)
    assert m, "the Dockerfile has no `ARG RAY_VERSION=X`"
    return m.group(1)


def dockerfile_jobs_dir() -> str:
    """Where the Dockerfile copies jobs/: the WORKDIR in force at `COPY jobs ./jobs`."""
    workdir = "/"
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        if m := re.match(r"WORKDIR\s+(\S+)", line):
            workdir = m.group(1)
        if re.match(r"COPY\s+jobs\s+\./jobs/?\s*$", line):
            return f"{workdir.rstrip('/')}/jobs"
    raise AssertionError("the Dockerfile does not `COPY jobs ./jobs`")


def raymae_image() -> str:
    return f"raymae:{package_version()}"


# ------------------------------------------------------------------ what infra/ says
def documents(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def all_documents() -> Iterator[tuple[str, dict]]:
    """(where, document) for every YAML document in infra/, including the YAML
    documents that ConfigMaps carry as strings (the nightly RayJob template)."""
    for path in YAML_FILES:
        for doc in documents(path):
            yield path.name, doc
            if doc.get("kind") == "ConfigMap":
                for key, text in (doc.get("data") or {}).items():
                    if key.endswith((".yaml", ".yml")):
                        for inner in yaml.safe_load_all(text):
                            if inner is not None:
                                yield f"{path.name} (ConfigMap key {key})", inner


def of_kind(kind: str) -> list[tuple[str, dict]]:
    return [(where, d) for where, d in all_documents() if d.get("kind") == kind]


def ray_cluster_specs() -> list[tuple[str, dict]]:
    """The RayCluster spec of every RayCluster and of every RayJob's cluster."""
    return ([(w, d["spec"]) for w, d in of_kind("RayCluster")]
            + [(w, d["spec"]["rayClusterSpec"]) for w, d in of_kind("RayJob")])


def entrypoints() -> list[tuple[str, str]]:
    return [(where, d["spec"]["entrypoint"]) for where, d in of_kind("RayJob")]


def find_values(node: Any, keys: set[str]) -> Iterator[Any]:
    """Every value stored under one of `keys`, at any depth."""
    if isinstance(node, dict):
        for k, v in node.items():
            if k in keys:
                yield v
            yield from find_values(v, keys)
    elif isinstance(node, list):
        for item in node:
            yield from find_values(item, keys)


def split_entrypoint(command: str) -> tuple[str, str, list[str]]:
    """`python /path/jobs/name.py --flag v` -> (script path, job name, flags)."""
    tokens = shlex.split(command)
    scripts = [i for i, t in enumerate(tokens) if JOB_SCRIPT.search(t)]
    assert len(scripts) == 1, f"expected one jobs/<name>.py in {command!r}"
    i = scripts[0]
    assert [Path(t).name for t in tokens[:i]] in (["python"], ["python3"]), \
        f"{command!r} should run the script with python"
    return tokens[i], JOB_SCRIPT.search(tokens[i]).group(1), tokens[i + 1:]


def flag_value(args: list[str], flag: str) -> str | None:
    for i, a in enumerate(args):
        if a == flag:
            return args[i + 1]
        if a.startswith(flag + "="):
            return a.split("=", 1)[1]
    return None


def gpu_pods(cluster_spec: dict) -> int:
    """GPUs the cluster can have at most: max pods x GPUs per pod, over worker groups."""
    total = 0
    for group in cluster_spec.get("workerGroupSpecs", []):
        per_pod = sum(int(c.get("resources", {}).get("limits", {}).get(GPU, 0))
                      for c in group["template"]["spec"]["containers"])
        total += per_pod * int(group.get("maxReplicas", group.get("replicas", 0)))
    return total


def ids(pairs: list[tuple[str, Any]]) -> list[str]:
    return [where for where, _ in pairs]


# ------------------------------------------------------------------ the files
def test_infra_holds_the_documented_files_in_plain_ascii():
    names = sorted(p.name for p in INFRA.iterdir() if p.is_file())
    assert set(EXPECTED_FILES) <= set(names), f"missing: {set(EXPECTED_FILES) - set(names)}"
    for name in names:
        text = (INFRA / name).read_bytes()
        assert text.isascii(), f"infra/{name} has non-ASCII characters"


@pytest.mark.parametrize("path", YAML_FILES, ids=[p.name for p in YAML_FILES])
def test_every_yaml_file_parses(path):
    docs = documents(path)
    assert docs and all(isinstance(d, dict) for d in docs), f"{path.name}: no mapping documents"


def test_every_configmap_embedded_yaml_parses():
    embedded = [w for w, _ in all_documents() if "ConfigMap key" in w]
    assert embedded, "the CronJob's ConfigMap should carry the scoring RayJob as YAML"


# ------------------------------------------------------------------ image and versions
def test_every_ray_node_runs_the_raymae_image_of_this_package_version():
    """RayCluster/RayJob pods and the launcher's containers: raymae:<pyproject version>.
    Only the nightly CronJob's helper pod may use another image, a kubectl one."""
    seen = 0
    for where, doc in all_documents():
        images = list(find_values(doc, {"image", "head_image", "worker_image"}))
        seen += len(images)
        for image in images:
            if doc.get("kind") == "CronJob" and re.search(r"(^|/)kubectl[:@]", image):
                continue
            assert image == raymae_image(), f"{where}: image {image!r}, expected {raymae_image()!r}"
    assert seen >= 8


def test_the_cluster_launcher_runs_the_raymae_image_in_docker():
    config = documents(INFRA / "cluster-aws.yaml")[0]
    assert config["docker"]["image"] == raymae_image()
    assert config["docker"]["container_name"]


def test_ray_version_is_the_same_in_pyproject_dockerfile_and_every_cluster_spec():
    pinned = pyproject_ray_version()
    assert dockerfile_ray_version() == pinned, "Dockerfile ARG RAY_VERSION differs from pyproject"
    specs = ray_cluster_specs()
    assert len(specs) >= 4  # raycluster, two RayJobs, the CronJob's template
    for where, spec in specs:
        assert str(spec.get("rayVersion")) == pinned, f"{where}: rayVersion {spec.get('rayVersion')!r}"


def runtime_envs() -> list[tuple[str, dict]]:
    envs = [("runtime_env.yaml", documents(INFRA / "runtime_env.yaml")[0])]
    for where, doc in of_kind("RayJob"):
        if "runtimeEnvYAML" in doc["spec"]:
            envs.append((where, yaml.safe_load(doc["spec"]["runtimeEnvYAML"])))
    return envs


@pytest.mark.parametrize("where,env", runtime_envs(), ids=ids(runtime_envs()))
def test_runtime_envs_set_only_string_env_vars_and_never_a_second_ray(where, env):
    assert isinstance(env, dict)
    for name, value in (env.get("env_vars") or {}).items():
        assert isinstance(value, str), f"{where}: env var {name} must be a string for Ray"
    for installer in ("conda", "uv"):
        assert installer not in env, f"{where}: the image already has every package"
    for requirement in env.get("pip") or []:
        if re.match(r"ray\b", requirement):
            assert requirement.endswith(f"=={pyproject_ray_version()}"), f"{where}: {requirement}"


# ------------------------------------------------------------------ entrypoints
@pytest.mark.parametrize("where,command", entrypoints(), ids=ids(entrypoints()))
def test_every_entrypoint_runs_an_existing_job_script_from_where_the_image_has_it(where, command):
    script, name, _ = split_entrypoint(command)
    assert (ROOT / "jobs" / f"{name}.py").is_file(), f"{where}: jobs/{name}.py is not in the repository"
    if script.startswith("/"):
        assert script == f"{dockerfile_jobs_dir()}/{name}.py", \
            f"{where}: {script} is not where the Dockerfile copies jobs/"


@pytest.mark.parametrize("where,command", entrypoints(), ids=ids(entrypoints()))
def test_every_entrypoints_flags_are_accepted_by_the_cli(where, command):
    _, name, args = split_entrypoint(command)
    assert_cli_accepts(where, name, args)


def test_training_and_scoring_jobs_ask_for_gpus_their_cluster_has():
    """`--gpu` on both, and no more training workers / scoring actors than GPU pods."""
    jobs = of_kind("RayJob")
    names = set()
    for where, doc in jobs:
        _, name, args = split_entrypoint(doc["spec"]["entrypoint"])
        names.add(name)
        assert "--gpu" in args, f"{where}: jobs/{name}.py should run on the GPUs"
        count = int(flag_value(args, {"train": "--workers", "score": "--actors"}.get(name, "--workers")) or 1)
        capacity = gpu_pods(doc["spec"]["rayClusterSpec"])
        assert count <= capacity, f"{where}: {count} GPU workers/actors but only {capacity} GPUs"
    assert {"train", "score"} <= names


# ------------------------------------------------------------------ cluster shape
@pytest.mark.parametrize("where,spec", ray_cluster_specs(), ids=ids(ray_cluster_specs()))
def test_ray_clusters_have_a_gpu_free_head_and_gpu_workers(where, spec):
    head = spec["headGroupSpec"]
    assert head["rayStartParams"].get("num-gpus") == "0", f"{where}: the head should offer no GPUs"
    groups = spec["workerGroupSpecs"]
    assert groups
    for params in [head["rayStartParams"], *(g.get("rayStartParams") or {} for g in groups)]:
        assert all(isinstance(v, str) for v in params.values()), f"{where}: rayStartParams must be strings"
    for group in groups:
        limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
        assert int(limits.get(GPU, 0)) >= 1, f"{where}: group {group['groupName']} requests no {GPU}"
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]


def test_the_long_lived_cluster_autoscales_its_gpu_workers():
    (_, cluster), = of_kind("RayCluster")
    spec = cluster["spec"]
    assert spec["enableInTreeAutoscaling"] is True
    group, = spec["workerGroupSpecs"]
    assert group["minReplicas"] < group["maxReplicas"]


def test_rayjobs_delete_their_clusters_when_done():
    for where, doc in of_kind("RayJob"):
        spec = doc["spec"]
        assert spec["shutdownAfterJobFinishes"] is True, where
        assert isinstance(spec["ttlSecondsAfterFinished"], int), where
        assert "generateName" in doc["metadata"], f"{where}: every run should get a new name"


def test_the_cluster_launcher_config_is_valid_and_never_reinstalls_ray():
    from ray.autoscaler._private.util import prepare_config, validate_config

    raw = documents(INFRA / "cluster-aws.yaml")[0]
    # Ray's defaults would pip-install a Ray wheel unless these are set explicitly.
    for key in ("setup_commands", "head_setup_commands", "worker_setup_commands"):
        assert key in raw, f"cluster-aws.yaml should set {key} (the default installs Ray)"
        assert not any(re.search(r"pip3? install.*\bray\b", c) for c in raw[key]), key
    config = prepare_config(raw)
    validate_config(config)  # Ray's own JSON schema and checks
    assert config["provider"]["type"] == "aws"
    head = config["available_node_types"][config["head_node_type"]]
    assert not head["resources"].get("GPU")
    workers = [t for n, t in config["available_node_types"].items() if n != config["head_node_type"]]
    assert any(t["resources"].get("GPU", 0) >= 1 for t in workers)
    gpu_options = config["docker"].get("worker_run_options", []) + config["docker"].get("run_options", [])
    assert any("--gpus" in o for o in gpu_options)


# ------------------------------------------------------------------ nightly scoring
def cronjob() -> tuple[str, dict]:
    (where, doc), = of_kind("CronJob")
    return where, doc


def test_the_nightly_cronjob_has_a_valid_schedule_and_never_overlaps():
    _, job = cronjob()
    spec = job["spec"]
    fields = spec["schedule"].split()
    assert len(fields) == 5, f"not a 5-field cron schedule: {spec['schedule']!r}"
    ranges = [(0, 59), (0, 23), (1, 31), (1, 12), (0, 7)]
    for field, (low, high) in zip(fields, ranges):
        for part in field.split(","):
            m = re.fullmatch(r"(\*|(\d+)(?:-(\d+))?)(?:/(\d+))?", part)
            assert m, f"bad cron field {field!r}"
            for number in (m.group(2), m.group(3)):
                assert number is None or low <= int(number) <= high, f"{field!r} out of range"
    assert spec["concurrencyPolicy"] == "Forbid"
    assert spec.get("timeZone", "Etc/UTC")


def test_the_nightly_cronjob_creates_the_same_rayjob_as_rayjob_score_yaml():
    (_, configmap), = of_kind("ConfigMap")
    (_, template), = [(w, d) for w, d in of_kind("RayJob") if "ConfigMap key" in w]
    (_, standalone), = [(w, d) for w, d in of_kind("RayJob") if w == "rayjob-score.yaml"]
    assert template["spec"] == standalone["spec"], \
        "copy infra/rayjob-score.yaml's spec into the ConfigMap in infra/cronjob-score.yaml"
    assert template["metadata"]["generateName"], "each night needs a new RayJob name"
    # The CronJob adds `--date <day>` after the script for the night it scores;
    # the template must not have one of its own, and the result must parse.
    _, name, args = split_entrypoint(template["spec"]["entrypoint"])
    assert flag_value(args, "--date") is None
    assert_cli_accepts("cronjob-score.yaml", name, ["--date", "2026-01-31", *args])

    _, job = cronjob()
    pod = job["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    mounted = {v["name"]: v["configMap"]["name"] for v in pod["volumes"] if "configMap" in v}
    assert configmap["metadata"]["name"] in mounted.values()
    script = " ".join(pod["containers"][0].get("command", []) + pod["containers"][0].get("args", []))
    assert "kubectl create -f" in script and "--date" in script


def test_the_nightly_cronjob_may_create_rayjobs_and_nothing_more():
    _, job = cronjob()
    account = job["spec"]["jobTemplate"]["spec"]["template"]["spec"]["serviceAccountName"]
    (_, sa), = of_kind("ServiceAccount")
    (_, role), = of_kind("Role")
    (_, binding), = of_kind("RoleBinding")
    assert sa["metadata"]["name"] == account
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert {"kind": "ServiceAccount", "name": account} in [
        {k: s[k] for k in ("kind", "name")} for s in binding["subjects"]]
    rule, = role["rules"]
    assert rule["apiGroups"] == ["ray.io"] and rule["resources"] == ["rayjobs"]
    assert "create" in rule["verbs"] and "*" not in rule["verbs"]


# ------------------------------------------------------------------ no secrets
SECRET_PATTERNS = [
    re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"),                                # AWS access key id
    re.compile(r"AWS_SECRET_ACCESS_KEY\s*[:=]\s*[\"']?[A-Za-z0-9/+]"),          # a literal secret
    re.compile(r"aws_secret_access_key"),                                         # credentials-file style
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
]
SECRET_NAME = re.compile(r"SECRET|PASSWORD|TOKEN|ACCESS_KEY", re.I)


def secrets_in(text: str) -> list[str]:
    return [m.group(0) for p in SECRET_PATTERNS for m in p.finditer(text)]


@pytest.mark.parametrize("sample", [
    "AWS_ACCESS_KEY_ID=AKIA" + "ABCDEFGHIJKLMNOP",
    "AWS_SECRET_ACCESS_KEY: wJalr" + "XUtnFEMI/K7MDENG",
    "aws_secret_access_key = abc",
])
def test_the_secret_check_catches_pasted_credentials(sample):
    assert secrets_in(sample)


@pytest.mark.parametrize("path", sorted(INFRA.iterdir()), ids=lambda p: p.name)
def test_no_file_in_infra_contains_a_secret(path):
    assert not secrets_in(path.read_text()), f"infra/{path.name} looks like it holds credentials"


def test_secret_environment_variables_only_come_from_secret_references():
    for where, doc in all_documents():
        assert doc.get("kind") != "Secret", f"{where}: create Secrets out of band, not in infra/"
        for env_list in find_values(doc, {"env"}):
            for var in env_list if isinstance(env_list, list) else []:
                if SECRET_NAME.search(var.get("name", "")):
                    assert "value" not in var, f"{where}: {var['name']} has a literal value"
    for where, env in runtime_envs():
        for name in env.get("env_vars") or {}:
            assert not SECRET_NAME.search(name), f"{where}: {name} does not belong in a runtime env"


# ------------------------------------------------------------------ pod security
CREDENTIAL_VARS = re.compile(r"^AWS_(ACCESS_KEY_ID|SECRET_ACCESS_KEY|SESSION_TOKEN)$")


def pod_specs() -> list[tuple[str, dict]]:
    """Every pod template: the head and worker groups of each Ray cluster, and the CronJob's pod."""
    pods = []
    for where, spec in ray_cluster_specs():
        pods.append((f"{where} head", spec["headGroupSpec"]["template"]["spec"]))
        pods += [(f"{where} {g['groupName']}", g["template"]["spec"]) for g in spec["workerGroupSpecs"]]
    pods += [(f"{where} pod", job["spec"]["jobTemplate"]["spec"]["template"]["spec"])
             for where, job in of_kind("CronJob")]
    return pods


def containers(pod: dict) -> list[dict]:
    return pod.get("initContainers", []) + pod["containers"]


def test_there_is_a_pod_spec_for_every_ray_group_and_the_cronjob():
    assert len(pod_specs()) >= 9  # 4 clusters x (head + GPU group) + the CronJob


@pytest.mark.parametrize("where,pod", pod_specs(), ids=ids(pod_specs()))
def test_every_pod_runs_as_a_non_root_user(where, pod):
    ctx = pod.get("securityContext") or {}
    assert ctx.get("runAsNonRoot") is True, f"{where}: securityContext.runAsNonRoot must be true"
    assert isinstance(ctx.get("runAsUser"), int) and ctx["runAsUser"] > 0, f"{where}: runAsUser"
    for c in containers(pod):
        own = c.get("securityContext") or {}
        assert own.get("runAsUser", 1) != 0 and own.get("runAsNonRoot", True) is True, f"{where}/{c['name']}"


@pytest.mark.parametrize("where,pod", pod_specs(), ids=ids(pod_specs()))
def test_no_pod_is_privileged_or_shares_the_host(where, pod):
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        assert not pod.get(key), f"{where}: {key}"
    assert not [v for v in pod.get("volumes", []) if "hostPath" in v], f"{where}: hostPath volume"
    for c in containers(pod):
        ctx = c.get("securityContext") or {}
        assert ctx.get("privileged") is not True, f"{where}/{c['name']} is privileged"
        assert ctx.get("allowPrivilegeEscalation") is False, f"{where}/{c['name']}: allowPrivilegeEscalation"
        caps = ctx.get("capabilities") or {}
        assert "ALL" in caps.get("drop", []) and not caps.get("add"), f"{where}/{c['name']}: capabilities"


@pytest.mark.parametrize("where,pod", pod_specs(), ids=ids(pod_specs()))
def test_s3_credentials_come_from_a_secret_or_the_pods_identity(where, pod):
    for c in containers(pod):
        for var in c.get("env", []):
            if CREDENTIAL_VARS.match(var["name"]):
                assert "secretKeyRef" in (var.get("valueFrom") or {}), f"{where}: {var['name']} not from a Secret"
        for source in c.get("envFrom", []):
            assert set(source) <= {"secretRef", "prefix"}, f"{where}: envFrom {source} (credentials: Secrets only)"
        if c["image"] == raymae_image():  # the Ray nodes reach S3: a Secret, or IRSA through the service account
            assert c.get("envFrom") or pod.get("serviceAccountName"), f"{where}: no way to get S3 credentials"


def test_the_cluster_launcher_gives_every_node_an_iam_role_and_no_keys():
    config = documents(INFRA / "cluster-aws.yaml")[0]
    for name, node in config["available_node_types"].items():
        assert node["node_config"]["IamInstanceProfile"]["Name"], name
    assert not any(".aws" in str(k) + str(v) for k, v in (config.get("file_mounts") or {}).items())
    commands = [c for key, value in config.items() if key.endswith("_commands") for c in value or []]
    assert not [c for c in commands if re.search(r"aws configure|AWS_SECRET|AWS_ACCESS_KEY", c)]
    options = config["docker"].get("run_options", []) + config["docker"].get("worker_run_options", [])
    assert not [o for o in options if "--privileged" in o or "--cap-add" in o]


def test_the_image_runs_as_an_unprivileged_user():
    users = re.findall(r"^USER\s+(\S+)", (ROOT / "Dockerfile").read_text(), re.M)
    assert users and users[-1] not in ("root", "0"), f"the Dockerfile's last USER is {users[-1:]}"

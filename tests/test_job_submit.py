"""`ray job submit`, as the README shows it, on a real Ray cluster on this machine.

The slow tests share one cluster, started the README's way: `ray get-auth-token --generate`,
then `ray start --head` (dashboard and job server included; it finds the token, so Ray's
token authentication is on). The test adds only what keeps the cluster to itself: a
throwaway HOME (for the token) and --temp-dir, free ports, and --block so that it can stop
exactly the processes it started (`ray stop` would stop every Ray on the machine, this test
session's own included). Clients use `RAY_AUTH_MODE=token`, as the README says.

The README's `ray job submit --working-dir . -- python jobs/...` commands then run from the
repository root, with the README's /tmp/raymae replaced by a temporary folder outside the
repository, and the tests read back what the jobs wrote.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.dataset as pds
import pytest
import yaml

from tests.badfiles import BAD_FILES, write_tar

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent  # the virtualenv's bin/: `ray`, `raymae`, `python`
README_DIR = "/tmp/raymae"          # where the README's cluster commands keep their files
DAY = "2026-11-30"                  # the night the README's score and report commands name
JOB_TIMEOUT_S = 600


# ------------------------------------------------------------------ the install
def test_python_m_raymae_is_the_raymae_command(tmp_path):
    """`python -m raymae` (no script on PATH needed) answers exactly as the `raymae` script."""
    missing = str(tmp_path / "missing")
    for args in (["--help"], ["train", "--data", missing, "--out", str(tmp_path / "model")]):
        script = subprocess.run([str(BIN / "raymae"), *args], capture_output=True, text=True, timeout=120)
        module = subprocess.run([sys.executable, "-m", "raymae", *args], capture_output=True, text=True,
                                timeout=120, cwd=tmp_path)  # not from the checkout: the installed package
        assert (module.returncode, module.stdout, module.stderr) == \
            (script.returncode, script.stdout, script.stderr), args
    assert module.returncode == 2
    assert module.stderr.startswith(f"raymae train: error: data folder not found: '{missing}'")


def ray_extras(requirement: str) -> set[str]:
    m = re.match(r"ray\[([^\]]*)\]", requirement.strip().strip('"'))
    assert m, requirement
    return {e.strip() for e in m.group(1).split(",")}


def test_the_install_has_rays_job_server_and_the_image_the_same_ray():
    """The README's `pip install -e ".[dev]"` brings `ray[default]` (dashboard and job server,
    what `ray start --head` and `ray job submit` need), and the Dockerfile installs the same extras."""
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    (pinned,) = [d for d in deps if d.startswith("ray[")]
    assert {"default", "train", "data"} <= ray_extras(pinned)
    (image,) = re.findall(r'"(ray\[[^\]]*\])==\$\{RAY_VERSION\}"', (ROOT / "Dockerfile").read_text())
    assert ray_extras(image) == ray_extras(pinned)


def readme_commands() -> list[list[str]]:
    """The `ray job submit` commands in the README's cluster block, as argv lists."""
    text = (ROOT / "README.md").read_text()
    block = text.split("<!-- cluster:commands -->", 1)[1].split("```bash\n", 1)[1].split("```", 1)[0]
    lines = block.replace("\\\n", " ").splitlines()
    return [shlex.split(line, comments=True) for line in lines if line.startswith("ray job submit ")]


def test_the_readme_submits_each_job_from_the_repository_root():
    scripts = []
    for argv in readme_commands():
        assert argv[:5] == ["ray", "job", "submit", "--working-dir", "."], argv
        rest = argv[argv.index("--") + 1:]
        assert rest[0] == "python" and (ROOT / rest[1]).is_file(), argv
        scripts.append(rest[1])
    assert scripts == ["jobs/train.py", "jobs/evaluate.py", "jobs/score.py", "jobs/report.py"]


# ------------------------------------------------------------------ the cluster
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def live_processes() -> dict[int, tuple[int, int]]:
    """pid -> (parent pid, session id) of every process that has not exited."""
    out = subprocess.run(["ps", "-A", "-o", "pid=,ppid=,sid=,stat="], capture_output=True, text=True,
                         check=True).stdout
    rows = (line.split(None, 3) for line in out.splitlines())
    return {int(pid): (int(ppid), int(sid)) for pid, ppid, sid, stat in rows if not stat.startswith("Z")}


def started_by(leader: int, sessions: set[int]) -> set[int]:
    """The processes that `ray start --block` (`leader`, alone in a new session) started: those in
    its session or below it (GCS, raylet, dashboard, workers, job drivers, which start sessions of
    their own), and those in any session in `sessions`, which gathers the sessions seen (a driver
    whose parent was killed has no parent of ours any more, but keeps its session)."""
    procs = live_processes()
    sessions.add(leader)
    found = {pid for pid, (_, sid) in procs.items() if sid in sessions}
    while children := {pid for pid, (ppid, _) in procs.items() if ppid in found} - found:
        found |= children
    sessions.update(procs[pid][1] for pid in found)
    return found


def stop_cluster(head: subprocess.Popen, timeout: float = 30) -> None:
    """SIGKILL, by pid, what `ray start` started, until nothing of it is left (a raylet being
    killed may still fork a worker, so look again)."""
    deadline, sessions = time.monotonic() + timeout, set()
    while (pids := started_by(head.pid, sessions)) and time.monotonic() < deadline:
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        head.poll()  # reap our child
        time.sleep(0.3)
    head.wait(timeout=10)
    assert not started_by(head.pid, sessions), "processes of the test cluster are still running"


@dataclass
class Cluster:
    address: str      # the job server, http://127.0.0.1:<port>
    env: dict         # a client shell's environment: the token in HOME, RAY_AUTH_MODE=token, RAY_ADDRESS
    token: str
    temp_dir: Path    # Ray's --temp-dir

    def ray(self, *args: str, env: dict | None = None, timeout: float = JOB_TIMEOUT_S) -> subprocess.CompletedProcess:
        """`ray <args>` from the repository root; stdout and stderr together."""
        return subprocess.run([str(BIN / "ray"), *args], cwd=ROOT, env=env or self.env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, timeout=timeout)

    def client(self):
        from ray.job_submission import JobSubmissionClient

        return JobSubmissionClient(self.address, headers={"Authorization": f"Bearer {self.token}"})


def clean_env(home: Path) -> dict:
    """This environment without any RAY_* variable (a local ray.init() in this test session
    sets RAY_AUTH_MODE), with HOME replaced and the virtualenv first on PATH."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(HOME=str(home), PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}")
    return env


@pytest.fixture(scope="module")
def cluster():
    base = Path(tempfile.mkdtemp(prefix="raymae-rj-"))  # short: Ray's socket paths must fit in 107 bytes
    home = base / "home"
    home.mkdir()
    env = clean_env(home)
    made = subprocess.run([str(BIN / "ray"), "get-auth-token", "--generate"], env=env, capture_output=True,
                          text=True, timeout=120)
    assert made.returncode == 0, made.stderr
    token = (home / ".ray" / "auth_token").read_text().strip()
    dashboard = free_port()
    log_path = base / "ray-start.log"
    with open(log_path, "w") as log:
        head = subprocess.Popen(
            [str(BIN / "ray"), "start", "--head", "--block", "--port", "0", "--dashboard-host", "127.0.0.1",
             "--dashboard-port", str(dashboard), "--ray-client-server-port", str(free_port()),
             "--dashboard-agent-listen-port", str(free_port()), "--temp-dir", str(base / "ray"),
             "--num-cpus", "2", "--disable-usage-stats"],
            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        address = f"http://127.0.0.1:{dashboard}"
        c = Cluster(address, {**env, "RAY_AUTH_MODE": "token", "RAY_ADDRESS": address}, token, base / "ray")
        deadline = time.monotonic() + 180
        while True:
            assert head.poll() is None, f"ray start exited:\n{log_path.read_text()[-4000:]}"
            try:
                c.client().list_jobs()
                break
            except Exception:
                assert time.monotonic() < deadline, f"no job server after 180 s:\n{log_path.read_text()[-4000:]}"
                time.sleep(1)
        yield c
    finally:
        stop_cluster(head)
        shutil.rmtree(base, ignore_errors=True)


@pytest.mark.slow
def test_the_cluster_refuses_clients_without_its_token(cluster, tmp_path):
    """Without RAY_AUTH_MODE=token the CLI sends no token and is refused, a wrong token is refused,
    and the right one in RAY_AUTH_TOKEN (as from another machine, no token file) is let in."""
    no_token_mode = {k: v for k, v in cluster.env.items() if k != "RAY_AUTH_MODE"}
    refused = cluster.ray("job", "list", env=no_token_mode, timeout=120)
    assert refused.returncode != 0 and "Authentication required" in refused.stdout
    elsewhere = {**cluster.env, "HOME": str(tmp_path)}  # no token file: the token in a variable, as from afar
    wrong = cluster.ray("job", "list", env={**elsewhere, "RAY_AUTH_TOKEN": "0" * len(cluster.token)}, timeout=120)
    assert wrong.returncode != 0 and "Invalid authentication token" in wrong.stdout
    right = cluster.ray("job", "list", env={**elsewhere, "RAY_AUTH_TOKEN": cluster.token}, timeout=120)
    assert right.returncode == 0, right.stdout


# ------------------------------------------------------------------ the README's jobs
@pytest.fixture(scope="module")
def work(tmp_path_factory) -> dict:
    """The README's /tmp/raymae, outside the repository: `raymae synth`'s data, and tonight's dump
    (the synthetic test images, a tar shard with 4 of them and a JSON member, a truncated JPEG)."""
    from raymae.cli import main

    root = tmp_path_factory.mktemp("cluster-jobs")
    assert main(["synth", "--out", str(root / "data")]) == 0
    dump = root / "dumps" / DAY
    shutil.copytree(root / "data" / "test", dump)
    good = sorted((root / "data" / "test" / "good").glob("*.png"))[:4]
    shard = write_tar(dump / "shard-000.tar", {**{f"good/{f.name}": f.read_bytes() for f in good}, "meta.json": b"{}"})
    broken = dump / "truncated.jpg"
    broken.write_bytes(BAD_FILES["truncated.jpg"][0])
    n_images = len(list((root / "data" / "test").glob("*/*.png"))) + len(good) + 1
    return {"root": root, "dump": dump, "shard": shard, "broken": broken, "n_images": n_images}


@dataclass
class Job:
    returncode: int   # of `ray job submit`, which follows the job's logs until the job ends
    job_id: str
    status: str       # what the job server says: SUCCEEDED, FAILED ...
    logs: str
    info: object = field(repr=False)


def submit(cluster: Cluster, argv: list[str]) -> Job:
    assert argv[0] == "ray"
    done = cluster.ray(*argv[1:])
    m = re.search(r"Job '(raysubmit_\w+)' submitted successfully", done.stdout)
    assert m, done.stdout[-4000:]
    client = cluster.client()
    job_id = m.group(1)
    return Job(done.returncode, job_id, str(client.get_job_status(job_id)), client.get_job_logs(job_id),
               client.get_job_info(job_id))


@pytest.fixture(scope="module")
def jobs(cluster, work) -> dict[str, Job]:
    """The README's four `ray job submit` commands, in order, on the cluster."""
    out = {}
    for argv in readme_commands():
        argv = [a.replace(README_DIR, str(work["root"])) for a in argv]
        name = Path(argv[argv.index("--") + 2]).stem
        out[name] = submit(cluster, argv)
    return out


def succeeded(job: Job) -> None:
    assert (job.status, job.returncode) == ("SUCCEEDED", 0), f"{job.status}: {job.info.message}\n{job.logs[-4000:]}"


@pytest.mark.slow
def test_the_training_job_writes_a_model_trained_by_two_ray_train_workers(jobs, work):
    from raymae.artifact import ModelArtifact

    succeeded(jobs["train"])
    model = work["root"] / "model"
    assert {"config.json", "model.safetensors"} <= {p.name for p in model.iterdir()}
    artifact = ModelArtifact.load(str(model))
    assert artifact.info["workers"] == 2
    assert [(h["stage"], h["epoch"]) for h in artifact.info["history"]] == [(1, 1), (1, 2), (1, 3), (2, 1), (2, 2)]
    assert f"model {artifact.model_id} written to {model}" in jobs["train"].logs


@pytest.mark.slow
def test_the_evaluation_job_writes_metrics_scores_and_its_page(jobs, work):
    succeeded(jobs["evaluate"])
    out = work["root"] / "eval"
    metrics = json.loads((out / "metrics.json").read_text())["metrics"]
    assert 0.0 <= metrics["image_auroc"] <= 1.0 and 0.0 <= metrics["pixel_auroc"] <= 1.0
    n_test = len(list((work["root"] / "data" / "test").glob("*/*.png")))
    assert pds.dataset(str(out / "scores.parquet")).count_rows() == n_test
    assert "<html" in (out / "report.html").read_text(encoding="utf-8").lower()


def partition_rows(scores: Path) -> dict[str, dict]:
    table = pds.dataset(str(scores / f"date={DAY}"), format="parquet").to_table()
    rows = {r["image_uri"]: r for r in table.to_pylist()}
    assert len(rows) == table.num_rows  # no image twice
    return rows


@pytest.mark.slow
def test_the_scoring_job_fills_in_the_date_and_writes_one_row_per_image_in(jobs, work):
    succeeded(jobs["score"])
    scores = work["root"] / "scores"
    assert [p.name for p in scores.iterdir()] == [f"date={DAY}"]
    assert (scores / f"date={DAY}" / "_SUCCESS").is_file()
    rows = partition_rows(scores)
    assert len(rows) == work["n_images"]
    assert all(uri.startswith(str(work["dump"]) + "/") for uri in rows)
    broken = rows[str(work["broken"])]
    assert broken["status"] == "error" and BAD_FILES["truncated.jpg"][1] in broken["error"]
    with tarfile.open(work["shard"]) as tar:
        members = [m.name for m in tar.getmembers() if m.name.endswith(".png")]
    assert sorted(u for u in rows if "#" in u) == sorted(f"{work['shard']}#{m}" for m in members)
    assert sum(r["status"] == "ok" for r in rows.values()) == work["n_images"] - 1
    page = (work["root"] / "reports" / DAY / "index.html").read_text(encoding="utf-8")
    assert f'id="images">{work["n_images"]}<' in page


@pytest.mark.slow
def test_the_report_job_writes_the_nights_page(jobs, work):
    succeeded(jobs["report"])
    page = (work["root"] / "report" / DAY / "index.html").read_text(encoding="utf-8")
    assert f'id="images">{work["n_images"]}<' in page and DAY in page


@pytest.mark.slow
def test_a_job_given_a_missing_input_fails_with_raymaes_one_line_error(cluster, jobs, work):
    missing = work["root"] / "missing"
    job = submit(cluster, ["ray", "job", "submit", "--working-dir", ".", "--", "python", "jobs/score.py",
                           "--input", f"{missing}/{{date}}/", "--model", str(work["root"] / "model"),
                           "--output", str(work["root"] / "scores-missing") + "/", "--date", DAY])
    assert (job.status, job.returncode) == ("FAILED", 1)
    assert "exit code 2" in job.info.message
    logs = cluster.ray("job", "logs", job.job_id, timeout=120)
    assert logs.returncode == 0
    said = [line for line in logs.stdout.splitlines() if line.startswith("raymae ")]
    assert said == [f"raymae score: error: input not found: '{missing}/{DAY}/'"]
    assert logs.stdout.rstrip().splitlines()[-1] == said[0]
    assert not (work["root"] / "scores-missing").exists()


@pytest.mark.slow
def test_the_upload_is_the_checkout_without_git_venv_or_ignored_files(cluster, jobs):
    """`--working-dir .` unpacks on the cluster as jobs/, raymae/ ... without what Ray and
    .gitignore leave out, and a job imports that raymae, not the one installed on the cluster."""
    from ray._private.runtime_env.packaging import GCS_STORAGE_MAX_SIZE

    job = submit(cluster, ["ray", "job", "submit", "--working-dir", ".", "--", "python", "-c",
                           "import raymae; print('raymae from', raymae.__file__)"])
    succeeded(job)
    unpacked = cluster.temp_dir / "session_latest" / "runtime_resources" / "working_dir_files"
    packages = [p.resolve() for p in unpacked.iterdir() if p.is_dir()]
    (line,) = [line for line in job.logs.splitlines() if line.startswith("raymae from ")]
    assert Path(line.split(" ", 2)[2]).resolve().parent.parent in packages
    for package in packages:
        names = {p.name for p in package.iterdir()}
        assert {"jobs", "raymae", "pyproject.toml", "README.md"} <= names
        assert not names & {".git", ".venv", "raymae.egg-info", ".pytest_cache", "demo", "raymae-runs"}
        size = sum(f.stat().st_size for f in package.rglob("*") if f.is_file())
        assert size < GCS_STORAGE_MAX_SIZE / 20


@pytest.mark.slow
def test_the_python_client_submits_with_infra_runtime_env(cluster, jobs, work):
    """JobSubmissionClient, runtime_env from infra/runtime_env.yaml plus the checkout as working_dir:
    the file's variables reach the job (Ray Data says its progress bars are off; the CLI's job,
    without the file, showed them), and the night scores as through `ray job submit`."""
    from ray.job_submission import JobStatus

    runtime_env = yaml.safe_load((ROOT / "infra" / "runtime_env.yaml").read_text())
    runtime_env["working_dir"] = str(ROOT)
    out = work["root"] / "scores-client"
    entrypoint = shlex.join(["python", "jobs/score.py", "--input", f"{work['dump'].parent}/{{date}}/",
                             "--model", str(work["root"] / "model"), "--output", f"{out}/", "--date", DAY])
    client = cluster.client()
    job_id = client.submit_job(entrypoint=entrypoint, runtime_env=runtime_env)
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while (status := client.get_job_status(job_id)) not in {JobStatus.SUCCEEDED, JobStatus.FAILED,
                                                            JobStatus.STOPPED}:
        assert time.monotonic() < deadline, "the job did not end"
        time.sleep(1)
    logs = client.get_job_logs(job_id)
    assert status == JobStatus.SUCCEEDED, logs[-4000:]
    sent = client.get_job_info(job_id).runtime_env
    assert sent["env_vars"] == runtime_env["env_vars"] and sent["excludes"] == runtime_env["excludes"]
    assert "Progress bars disabled" in logs and "Progress bars disabled" not in jobs["score"].logs
    by_client, by_cli = partition_rows(out), partition_rows(work["root"] / "scores")
    assert by_client.keys() == by_cli.keys()
    for uri, row in by_client.items():
        assert row["status"] == by_cli[uri]["status"], uri
        if row["status"] == "ok":
            assert row["score"] == pytest.approx(by_cli[uri]["score"], abs=1e-5), uri

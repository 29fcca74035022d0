"""raymae on a simulated multi-node cluster (``ray.cluster_utils.Cluster``): a head and
worker nodes on this machine, one CPU each, so that no node can hold two training
workers or two model actors. Training spreads its workers over the nodes; scoring
spreads its model actors and its read tasks over them and writes the same rows as on
one node; losing a node in the middle of scoring loses no image.
"""

from __future__ import annotations

import threading

import pytest

from raymae.artifact import ModelArtifact
from raymae.training.ray_driver import TrainJob, run_training
from raymae.scoring import ScoreOptions, partition_uri, score
from tests.conftest import tiny_recipe
from tests.ray_faults import actors, finished_tasks, task_nodes, wait_for
from tests.test_scoring_faults import SCORING_TASK, rows_of

pytestmark = pytest.mark.slow

DAY = "2026-12-01"
NODE_CPUS = 1


@pytest.fixture(scope="module")
def single_node_rows(ray_local, s3_night_240, model_dir, tmp_path_factory) -> dict:
    """The night scored on the ordinary one-node test cluster: what multi-node must reproduce."""
    out = str(tmp_path_factory.mktemp("single-node-scores"))
    score([s3_night_240["input"]], model_dir, out, ScoreOptions(date=DAY, batch_size=8, heatmap_size=8))
    return {r["image_uri"]: r for r in rows_of(partition_uri(out, DAY))}


@pytest.fixture(scope="module")
def cluster(single_node_rows, s3_server):
    """Head + 2 worker nodes (1 CPU each), started after the S3 variables are set so that
    every node's workers inherit them; the one-node test cluster is restored afterwards."""
    import ray
    from ray.cluster_utils import Cluster

    had_local = ray.is_initialized()
    ray.shutdown()
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": NODE_CPUS, "include_dashboard": False})
    workers = [c.add_node(num_cpus=NODE_CPUS) for _ in range(2)]
    c.wait_for_nodes()
    ray.init(address=c.address, log_to_driver=False)
    yield {"cluster": c, "head": c.head_node, "workers": workers}
    ray.shutdown()
    c.shutdown()
    if had_local:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)


def node_ids(cluster: dict) -> dict[str, str]:
    """node id -> 'head' / 'worker-N' for the nodes alive now."""
    names = {cluster["head"].node_id: "head"}
    names.update({w.node_id: f"worker-{i}" for i, w in enumerate(cluster["workers"])})
    return names


def test_the_cluster_has_three_nodes_of_one_cpu(cluster):
    import ray

    nodes = [n for n in ray.nodes() if n["Alive"]]
    assert len(nodes) == 3 and all(n["Resources"]["CPU"] == NODE_CPUS for n in nodes)


def test_training_runs_its_workers_on_different_nodes(cluster, synthetic_dataset, tmp_path, reliability):
    job = TrainJob(data=synthetic_dataset, out=str(tmp_path / "model"), config=tiny_recipe(2, 1), workers=2,
                   storage=str(tmp_path / "runs"))
    artifact = run_training(job)
    workers = actors("RayTrainWorker", state=None)
    nodes = {a["Address"]["NodeID"] for a in workers}
    assert len(workers) == 2 and len(nodes) == 2  # one CPU per node: the two workers cannot share one
    assert nodes <= set(node_ids(cluster))
    assert ModelArtifact.load(job.out).model_id == artifact.model_id and artifact.info["workers"] == 2
    epochs = [(h["stage"], h["epoch"]) for h in artifact.info["history"]]
    assert epochs == [(1, 1), (1, 2), (2, 1)]


@pytest.fixture(scope="module")
def scoring_cluster(cluster) -> dict:
    """One more worker node (four of one CPU): two for the model actors, two for the read and write tasks."""
    cluster["workers"].append(cluster["cluster"].add_node(num_cpus=NODE_CPUS))
    cluster["cluster"].wait_for_nodes()
    return cluster


def test_scoring_spreads_over_the_nodes_and_writes_the_same_rows_as_one_node(
        scoring_cluster, s3_night_240, model_dir, single_node_rows, tmp_path, reliability):
    out = str(tmp_path / "scores")
    before = {a["ActorID"] for a in actors("ScoreImages", state=None)}
    summary = score([s3_night_240["input"]], model_dir, out,
                    ScoreOptions(date=DAY, actors=2, batch_size=8, heatmap_size=8))
    scorers = [a for a in actors("ScoreImages", state=None) if a["ActorID"] not in before]
    listed = rows_of(partition_uri(out, DAY))
    rows = {r["image_uri"]: r for r in listed}
    reliability.run("none: 4-node cluster, 2 model actors and the read tasks on different nodes", 0, True,
                    s3_night_240["images"], [r["image_uri"] for r in listed])

    assert len(scorers) == 2 and len({a["Address"]["NodeID"] for a in scorers}) == 2
    assert wait_for(lambda: len(task_nodes("read_group")) >= 2, timeout=15), task_nodes("read_group")
    assert summary.images == len(listed) == len(rows) == len(single_node_rows)
    assert rows.keys() == single_node_rows.keys()
    for uri, row in rows.items():
        one = single_node_rows[uri]
        assert (row["status"], row["height"], row["width"]) == (one["status"], one["height"], one["width"])
        assert row["score"] == pytest.approx(one["score"], abs=1e-5), uri
        assert row["heatmap_png"] == one["heatmap_png"], uri


def test_losing_a_node_in_the_middle_of_scoring_loses_no_image(scoring_cluster, s3_night_240, model_dir,
                                                                tmp_path, reliability):
    """A worker node that runs a model actor is removed (its raylet and workers killed) once
    the model actors have finished two of their ~30 tasks (a batch each); the nodes left
    finish the night."""
    c, by_id = scoring_cluster["cluster"], {w.node_id: w for w in scoring_cluster["workers"]}
    done_before = finished_tasks(SCORING_TASK)
    removed: list[dict] = []

    def actor_on_a_worker_after_two_tasks() -> list[dict]:
        if finished_tasks(SCORING_TASK) < done_before + 2:
            return []
        return [a for a in actors("ScoreImages") if a["Address"]["NodeID"] in by_id]

    def remove_a_node_with_a_model_actor() -> None:
        on_workers = wait_for(actor_on_a_worker_after_two_tasks, timeout=300)
        if on_workers:
            node = by_id[on_workers[0]["Address"]["NodeID"]]
            c.remove_node(node, allow_graceful=False)
            removed.append({"node": node.node_id, "actor": on_workers[0]["ActorID"],
                            "tasks_done": finished_tasks(SCORING_TASK) - done_before})
            scoring_cluster["workers"] = [w for w in scoring_cluster["workers"] if w is not node]

    killer = threading.Thread(target=remove_a_node_with_a_model_actor, daemon=True)
    killer.start()
    out = str(tmp_path / "scores")
    summary = score([s3_night_240["input"]], model_dir, out, ScoreOptions(date=DAY, actors=2, batch_size=8,
                                                                         heatmap_size=8))
    killer.join(timeout=30)
    rows = rows_of(partition_uri(out, DAY))
    tasks = wait_for(lambda: removed and (n := finished_tasks(SCORING_TASK) - done_before) > removed[0]["tasks_done"]
                     and n, timeout=15) or finished_tasks(SCORING_TASK) - done_before
    when = f" after {removed[0]['tasks_done']} of the model actors' {tasks} tasks" if removed else ""
    reliability.run(f"worker node running a model actor removed while scoring{when}",
                    len(removed), True, s3_night_240["images"], [r["image_uri"] for r in rows])

    assert removed, "no node was removed"
    assert removed[0]["tasks_done"] < tasks, "the node was removed after the scoring was done"
    assert sorted(r["image_uri"] for r in rows) == s3_night_240["images"]  # every image exactly once
    assert summary.errors == 0

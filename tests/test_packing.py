"""Several trials per GPU: fractional gpus_per_worker packs trials onto one GPU; the sweep is checked against the
node shapes raysl knows (this machine, a `ray up` cluster file, the cluster now) before Ray starts, and says how
many trials run at once. The node shapes here are declared, so this runs on a CPU machine."""

from __future__ import annotations

from pathlib import Path

import pytest

from raysl.config import SweepConfig
from raysl.errors import UserError
from raysl.ray_glue.packing import NodeShape, check_packing, cluster_file_nodes, trials_at_once

ROOT = Path(__file__).resolve().parents[1]


def _sweep(gpus_per_worker: float, concurrent: int = 8, trials: int = 8, **resources) -> SweepConfig:
    return SweepConfig.model_validate({
        "base": {"resources": {"workers": 1, "cpus_per_worker": 0.5, "gpus_per_worker": gpus_per_worker,
                               "data_cpus": 0.25, **resources}},
        "search": {"seed": {"grid": list(range(trials))}}, "scheduler": {"name": "fifo"},
        "max_concurrent_trials": concurrent,
    })


@pytest.mark.parametrize("gpus_per_worker, gpus, expected, limit", [
    (0.25, 1, 4, "GPUs"),       # four small-image trials share one GPU
    (0.5, 1, 2, "GPUs"),
    (0.3, 1, 3, "GPUs"),        # 0.9 of the GPU used: a fourth does not fit
    (0.25, 2, 8, "max_concurrent_trials"),
    (1.0, 4, 4, "GPUs"),
])
def test_fractional_gpus_pack_trials_onto_a_gpu(gpus_per_worker, gpus, expected, limit):
    count, limited_by = trials_at_once(_sweep(gpus_per_worker), [NodeShape("gpu", 16, gpus)])
    assert (count, limited_by) == (expected, limit)


def test_the_packing_note_says_how_many_run_at_once_and_a_trial_that_fits_nowhere_is_an_error():
    lines: list[str] = []
    assert check_packing(_sweep(0.25), [NodeShape("gpu", 16, 1)], "the test node", log=lines.append) == 4
    assert "4 trial(s) at once on the test node" in lines[0] and "limited by GPUs" in lines[0]
    assert "4 workers share a GPU" in lines[0]
    with pytest.raises(UserError, match="one trial asks for 1 Train worker.*which a CPU node cannot give"):
        check_packing(_sweep(0.25), [NodeShape("cpu", 16, 0)], "a CPU node")
    # CPUs short of max_concurrent_trials on a machine known exactly: the sweep would hang waiting for data
    with pytest.raises(UserError, match="max_concurrent_trials / base.resources: 4 trials at once do not fit.*2 do"):
        check_packing(_sweep(0.0, concurrent=4), [NodeShape("laptop", 2, 0)], "this machine")
    assert check_packing(_sweep(0.0, concurrent=4), [NodeShape("cluster", 2, 0)], "the cluster now", strict=False,
                         log=lines.append) == 2


def test_a_cluster_files_node_types_are_the_packing_shapes():
    nodes = {node.name: node for node in cluster_file_nodes(str(ROOT / "cluster" / "aws.yaml"))}
    assert nodes["gpu_train"].gpus == 1 and nodes["gpu_train"].count >= 1 and nodes["cpu_augment"].cpus == 16
    assert "head" not in nodes  # it offers no CPU to trials (resources: {CPU: 0})
    count, _ = trials_at_once(_sweep(0.25, concurrent=64, trials=64), list(nodes.values()))
    assert count == 4 * nodes["gpu_train"].count


def test_a_pbt_population_larger_than_the_trials_at_once_is_noted_with_the_num_samples_that_fits():
    def pbt(samples: int) -> SweepConfig:
        return SweepConfig.model_validate({
            "base": {"resources": {"workers": 1, "cpus_per_worker": 0.5, "data_cpus": 0.25}},
            "search": {"optimizer.lr": {"loguniform": [0.001, 0.01]}}, "scheduler": {"name": "pbt"},
            "num_samples": samples, "max_concurrent_trials": 2,
        })

    lines: list[str] = []
    check_packing(pbt(4), [NodeShape("laptop", 2, 0)], "this machine", log=lines.append)
    assert len(lines) == 2 and "a population of 4 with 2 trial(s) at once" in lines[1] and "num_samples 2" in lines[1]
    lines.clear()
    check_packing(pbt(2), [NodeShape("laptop", 2, 0)], "this machine", log=lines.append)
    assert len(lines) == 1  # the whole population trains together: nothing to say
    lines.clear()  # every trial created at once (max_concurrent_trials 4), 2 fit the cluster now: no such note
    check_packing(pbt(4).model_copy(update={"max_concurrent_trials": 4}), [NodeShape("cluster", 2, 0)],
                  "the cluster now", strict=False, log=lines.append)
    assert len(lines) == 1 and "2 trial(s) at once" in lines[0]

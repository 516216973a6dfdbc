"""The Ray backend against the local reference: same parameters, faults included."""

from __future__ import annotations

import pytest
import ray
import torch

from metaserve.api import as_config
from metaserve.experiment import build_distribution, build_learner
from metaserve.runtime.local import LocalExecutor
from metaserve.runtime.loop import train_loop
from metaserve.runtime.ray_executor import worker_slices
from metaserve.runtime.work import NonFiniteUpdate, task_blocks

from faults import faulty_executor, reconfigure

TINY = {
    "name": "tiny",
    "seed": 3,
    "task": {"name": "sinusoid", "shots": 5, "query": 5},
    "model": {"name": "mlp", "hidden": [16, 16]},
    "algorithm": {"name": "maml", "inner_lr": 0.02, "inner_steps": 2},
    "train": {
        "steps": 6,
        "meta_batch": 7,
        "log_every": 3,
        "checkpoint_every": 3,
        "val_tasks": 0,
        "dtype": "float64",
        "device": "cpu",
    },
    "eval": {"episodes": 10},
    "runtime": {"cpus_per_worker": 1},
}


def tiny(tmp_path, algorithm: str, **runtime) -> object:
    algorithm, _, mode = algorithm.partition(":")  # "lazy-maml:linearised": that meta-gradient mode
    extra = {"leap": 0.7, "inner_steps": 3} if algorithm.startswith("lazy") else {}
    extra |= {"meta_gradient": mode} if mode else {}
    section = {**TINY["algorithm"], "name": algorithm, **extra}
    if algorithm == "lstm-meta":  # no inner_lr: the LSTM's input gate is its learning rate
        section = {"name": algorithm, "inner_steps": 2}
    if algorithm.startswith("meta-sgd"):  # learned per-parameter rates (lr.* meta-parameters) instead of inner_lr
        section = {**{k: v for k, v in section.items() if k != "inner_lr"}, "init_lr": [0.01, 0.03]}
    cfg = {**TINY, "output_dir": str(tmp_path), "algorithm": section, "runtime": {**TINY["runtime"], **runtime}}
    return as_config(cfg)


def final_params(config, executor=None) -> dict[str, torch.Tensor]:
    return train_loop(config, final_eval=False, executor=executor).params


def test_slices_are_whole_blocks_covering_the_batch_once_and_evenly():
    assert task_blocks(range(7), 3) == [[0, 1, 2], [3, 4, 5], [6]]
    assert worker_slices(task_blocks(range(7), 1), 3) == [[[0], [1]], [[2], [3], [4]], [[5], [6]]]
    assert worker_slices(task_blocks(range(2), 1), 3) == [[[0]], [[1]]]
    for n, workers, size in [(25, 2, 4), (25, 3, 4), (32, 3, 4), (9, 2, 4)]:
        slices = worker_slices(task_blocks(range(n), size), workers)
        assert [i for s in slices for b in s for i in b] == list(range(n))
        counts = [sum(map(len, s)) for s in slices]
        assert max(counts) - min(counts) <= size, (n, workers, counts)


ALGORITHMS = ["maml", "fomaml", "reptile", "lazy-maml", "lazy-maml:linearised", "lstm-meta", "meta-sgd", "anil"]


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_ray_backend_matches_local(ray_session, tmp_path, workers):
    # One worker group per worker count, reconfigured for each algorithm (actor start-up dominates).
    executor = faulty_executor(tiny(tmp_path, ALGORITHMS[0], backend="ray", num_workers=workers))
    try:
        for algorithm in ALGORITHMS:
            reference = final_params(tiny(tmp_path, algorithm, backend="local"))
            config = tiny(tmp_path, algorithm, backend="ray", num_workers=workers)
            reconfigure(executor, config)
            got = final_params(config, executor)
            for k in reference:
                torch.testing.assert_close(
                    got[k], reference[k], rtol=1e-10, atol=1e-12, msg=f"{algorithm}, {workers} workers, {k}"
                )
    finally:
        executor.close()


def test_killed_worker_mid_step_gives_fault_free_result(ray_session, tmp_path):
    config = tiny(tmp_path, "maml", backend="ray", num_workers=2)
    learner = build_learner(config)
    params = learner.initial_params()
    expected, _ = LocalExecutor(learner, build_distribution(config)).compute(params, 4, range(7))
    executor = faulty_executor(config)
    try:
        pids_before = {w["pid"] for w in executor.worker_info()}
        ray.get(executor.workers[0].die_at_step.remote(4))
        got, _ = executor.compute(params, 4, range(7))
        for k in params:
            torch.testing.assert_close(got.contribution[k], expected.contribution[k], rtol=1e-10, atol=1e-12)
        assert got.count == 7
        again, _ = executor.compute(params, 5, range(7))  # the run goes on while Ray restarts the dead worker
        assert again.count == 7
        assert {w["pid"] for w in executor.worker_info()} != pids_before
    finally:
        executor.close()


def test_compiled_graph_transport_matches_local_and_survives_a_killed_worker(ray_session, tmp_path):
    config = tiny(tmp_path, "maml", backend="ray", num_workers=2, transport="compiled-graph")
    reference = final_params(tiny(tmp_path, "maml", backend="local"))
    learner = build_learner(config)
    params = learner.initial_params()
    expected, _ = LocalExecutor(learner, build_distribution(config)).compute(params, 4, range(7))
    executor = faulty_executor(config)
    try:
        assert executor._graph is not None  # the steps below really go through the compiled graph
        got = final_params(config, executor)
        for k in reference:
            torch.testing.assert_close(got[k], reference[k], rtol=1e-10, atol=1e-12, msg=k)
        ray.get(executor.workers[1].die_at_step.remote(4))
        with pytest.warns(UserWarning, match="compiled graph broke"):
            faulted, _ = executor.compute(params, 4, range(7))  # finished by actor calls
        for k in params:
            torch.testing.assert_close(faulted.contribution[k], expected.contribution[k], rtol=1e-10, atol=1e-12)
        executor.worker_info()  # waits for Ray to restart worker 1
        for step in range(5, 12):  # a new graph is built at the next attempt (steps 5, 7, 11 at the latest)
            executor.compute(params, step, range(7))
        assert executor._graph is not None
    finally:
        executor.close()


def test_nonfinite_contribution_names_worker_and_tasks(ray_session, tmp_path):
    config = tiny(tmp_path, "maml", backend="ray", num_workers=2)
    learner = build_learner(config)
    params = {
        k: torch.full_like(v, float("nan")) if k == "0.weight" else v for k, v in learner.initial_params().items()
    }
    executor = faulty_executor(config)
    try:
        with pytest.raises(
            NonFiniteUpdate, match=r"step 0 from worker (0, task indices \[0, 1, 2, 3\]|1, task indices \[4, 5, 6\])"
        ):
            executor.compute(params, 0, range(7))
    finally:
        executor.close()


def test_float32_runs_are_bit_identical_locally_on_1_2_3_workers_and_through_worker_kills(ray_session, tmp_path):
    """The meta-batch sum is one fixed computation (blocks of task indices added in order), so float32
    parameters after 200 steps are torch.equal whatever ran them."""

    def config(**runtime):
        cfg = tiny(tmp_path, "maml", **runtime).model_dump(mode="json")
        cfg["train"] |= {
            "steps": 200,
            "meta_batch": 12,
            "task_block": 4,
            "log_every": 100,
            "checkpoint_every": 100,
            "dtype": "float32",
        }
        return as_config(cfg)

    reference = final_params(config(backend="local"))
    runs = {f"{n} workers": (config(backend="ray", num_workers=n), {}) for n in (1, 2, 3)}
    runs["2 workers, both killed once"] = (config(backend="ray", num_workers=2), {0: 50, 1: 120})
    for name, (cfg, kills) in runs.items():
        executor = faulty_executor(cfg)
        try:
            for worker, step in kills.items():
                ray.get(executor.workers[worker].die_at_step.remote(step))
            got = final_params(cfg, executor)
        finally:
            executor.close()
        for k in reference:
            assert torch.equal(got[k], reference[k]), f"{name}: {k} differs by {(got[k] - reference[k]).abs().max()}"


def test_meta_test_spread_over_workers_equals_the_single_process_one(ray_session, tmp_path):
    config = tiny(tmp_path, "maml", backend="ray", num_workers=2)
    learner = build_learner(config)
    params = learner.initial_params()
    local = LocalExecutor(learner, build_distribution(config)).evaluate(params, range(9), steps=3)
    executor = faulty_executor(config)
    try:
        spread = executor.evaluate(params, range(9), steps=3)
        final_only = executor.evaluate(params, range(9), steps=3, curve=False)
    finally:
        executor.close()
    assert spread.shape == local.shape == (9, 4, 2) and final_only.shape == (9, 1, 2)
    torch.testing.assert_close(spread, local, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(final_only[:, 0], local[:, -1], rtol=1e-12, atol=1e-14)

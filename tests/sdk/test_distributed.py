"""Distributed training: TF_CONFIG handling, the local worker launcher, MirroredStrategy on two
logical CPUs and MultiWorkerMirroredStrategy with two local workers on loopback."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from edgerec.runtime.errors import SpecError
from edgerec.sdk.training.distributed import (RESULT_PREFIX, DistributedError, free_ports, launch_local_workers,
                                              local_tf_config, parse_tf_config)

REPO = Path(__file__).resolve().parents[2]
TINY_DATA = ["--data", "synthetic", "--data-option", "num_users=200",
             "--data-option", "num_items=300", "--data-option", "num_events=5000",
             "--max-seq-len", "12", "--negatives", "1"]
TINY_MODEL = ["--model", "din", "--embedding-dim", "8",
              "--model-config", '{"hidden_units": [8], "attention_units": [8]}']


# -- TF_CONFIG and the launcher (no TensorFlow) -------------------------------------------------
def test_local_tf_config_is_a_worker_cluster_that_parses():
    config = local_tf_config([5001, 5002], 1)
    assert config == {"cluster": {"worker": ["127.0.0.1:5001", "127.0.0.1:5002"]},
                      "task": {"type": "worker", "index": 1}}
    assert parse_tf_config(json.dumps(config)) == config


@pytest.mark.parametrize("text, fragment", [
    ("", "TF_CONFIG set"),
    ("{not json", "JSON in $TF_CONFIG"),
    ('{"cluster": {"worker": []}, "task": {"type": "worker", "index": 0}}', "'cluster'"),
    ('{"cluster": {"worker": ["h:1"]}, "task": {"type": "worker", "index": 1}}', "'task'"),
    ('{"cluster": {"worker": ["h:1"]}, "task": {"type": "ps", "index": 0}}', "'task'"),
])
def test_parse_tf_config_rejects_bad_configs(text, fragment):
    with pytest.raises(DistributedError, match="Expected") as info:
        parse_tf_config(text)
    assert fragment in str(info.value)


def test_free_ports_are_distinct_and_bindable():
    import socket

    ports = free_ports(3)
    assert len(set(ports)) == 3
    for port in ports:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))


def test_launcher_gives_each_worker_its_own_tf_config():
    code = "import os, json; c = json.loads(os.environ['TF_CONFIG']); print(c['task']['index'], len(c['cluster']['worker']))"
    results = launch_local_workers(3, [sys.executable, "-c", code], timeout=60)
    assert [r.output.split() for r in results] == [["0", "3"], ["1", "3"], ["2", "3"]]
    assert [r.returncode for r in results] == [0, 0, 0]
    assert not any(r.killed or r.timed_out for r in results)


def test_launcher_stops_the_others_when_one_worker_fails():
    code = ("import os, json, sys, time; i = json.loads(os.environ['TF_CONFIG'])['task']['index']\n"
            "if i == 1: sys.exit(3)\ntime.sleep(60)")
    start = time.monotonic()
    results = launch_local_workers(2, [sys.executable, "-c", code], timeout=60, check=False)
    assert time.monotonic() - start < 20
    assert results[1].returncode == 3 and not results[1].killed
    assert results[0].killed and results[0].returncode is None and not results[0].timed_out
    with pytest.raises(DistributedError, match="worker 1: exit 3"):
        launch_local_workers(2, [sys.executable, "-c", code], timeout=60)


def test_launcher_kills_stragglers_at_the_timeout():
    code = ("import os, json, time; i = json.loads(os.environ['TF_CONFIG'])['task']['index']\n"
            "print('up', flush=True)\ntime.sleep(0 if i == 0 else 60)")
    start = time.monotonic()
    results = launch_local_workers(2, [sys.executable, "-c", code], timeout=2, check=False)
    assert time.monotonic() - start < 15
    assert results[0].returncode == 0 and not results[0].killed
    assert results[1].timed_out and results[1].killed and results[1].output.strip() == "up"
    with pytest.raises(DistributedError, match="timed out"):
        launch_local_workers(2, [sys.executable, "-c", code], timeout=2)


@pytest.mark.parametrize("count, argv, timeout", [(0, ["x"], 1), (True, ["x"], 1), (1, [], 1), (1, "python", 1),
                                                  (1, ["x"], 0)])
def test_launcher_rejects_bad_arguments(count, argv, timeout):
    with pytest.raises(SpecError, match="Expected"):
        launch_local_workers(count, argv, timeout=timeout)


class _FakeResolver:
    def __init__(self, cluster, task_type, task_id):
        self.cluster, self.task_type, self.task_id = cluster, task_type, task_id

    def cluster_spec(self):
        from types import SimpleNamespace

        return SimpleNamespace(as_dict=lambda: self.cluster)


@pytest.mark.parametrize("cluster, task_type, task_id, chief, workers", [
    ({"worker": ["a:1", "b:2"]}, "worker", 0, True, 2),
    ({"worker": ["a:1", "b:2"]}, "worker", 1, False, 2),
    ({"chief": ["c:0"], "worker": ["a:1", "b:2"]}, "worker", 0, False, 3),
    ({"chief": ["c:0"], "worker": ["a:1"]}, "chief", 0, True, 2),
])
def test_task_info_picks_the_chief_like_tf_docs(cluster, task_type, task_id, chief, workers):
    from types import SimpleNamespace

    from edgerec.sdk.training.distributed import global_batch_size, task_info

    strategy = SimpleNamespace(cluster_resolver=_FakeResolver(cluster, task_type, task_id), num_replicas_in_sync=4)
    info = task_info(strategy)
    assert (info.is_chief, info.num_workers, info.replicas, info.task_index) == (chief, workers, 4, task_id)
    assert global_batch_size(16, strategy) == 64
    single = task_info(SimpleNamespace(cluster_resolver=None, num_replicas_in_sync=2))
    assert (single.is_chief, single.num_workers, single.task_type) == (True, 1, None)


def test_make_strategy_rejects_unknown_names():
    from edgerec.sdk.training.distributed import make_strategy

    with pytest.raises(SpecError, match="strategy among"):
        make_strategy("parameter_server")


# -- real strategies (subprocesses: logical devices and TF_CONFIG must precede TF's runtime) --------
MIRRORED_SCRIPT = textwrap.dedent("""
    import json
    import numpy as np
    from edgerec.sdk.data import load_dataset
    from edgerec.sdk.models import ModelConfig
    from edgerec.sdk.training import TrainConfig
    from edgerec.sdk.training.distributed import (build_model_distributed, fit_distributed, make_strategy,
                                                  make_train_dataset, task_info, unwrap_parts,
                                                  weights_sha256)

    from edgerec.sdk.training.distributed import DistributedError, configure_logical_cpus

    strategy = make_strategy("mirrored", cpu_devices=2)          # before any TensorFlow op
    assert configure_logical_cpus(2) == 2                        # already there: a no-op
    try:
        configure_logical_cpus(3)                                # too late once TF is up
        raise AssertionError("configure_logical_cpus(3) after initialisation did not raise")
    except DistributedError as err:
        assert "Expected 3 logical CPU devices" in str(err), err
    ds = load_dataset("synthetic", num_users=200, num_items=300, num_events=5000, max_seq_len=12,
                      negatives=1, seed=3, progress=False)
    config = ModelConfig(embedding_dim=8, hidden_units=(8,), attention_units=(8,))
    parts = build_model_distributed(strategy, "din", ds.spec, config)
    variable = parts.fused.get_layer("item_embedding").embeddings
    # the attention logit's bias shifts every position alike and the softmax cancels it: no output
    # depends on it, so training leaves it alone (the layer keeps it for the saved weights)
    logit_bias = parts.fused.get_layer("target_attention").logit.bias
    unused = [i for i, w in enumerate(parts.fused.weights) if w is logit_bias]
    before = parts.fused.get_weights()
    history = fit_distributed(parts, ds, TrainConfig(epochs=1, batch_size=16, max_train_rows=192, verbose=0),
                              strategy)
    after = parts.fused.get_weights()
    plain = unwrap_parts(parts)

    # the global batch of 32 reaches each replica as 16 rows (DATA sharding + rebatching)
    rows = ds.train.take(np.arange(64))
    data = make_train_dataset(parts.select_inputs(rows.inputs), rows.labels.reshape(-1, 1), 32, 0, False)
    first = next(iter(strategy.experimental_distribute_dataset(data)))
    per_replica = [int(t.shape[0]) for t in strategy.experimental_local_results(first[1])]

    x = plain.select_inputs(ds.test.take(np.arange(101)).inputs)
    fused = plain.fused(x, training=False).numpy()
    user = {k: v.numpy() for k, v in plain.user_encoder(plain.select_inputs(x, "user_encoder")).items()}
    split = plain.scorer(plain.select_inputs({**x, **user}, "scorer"), training=False).numpy()
    distributed = parts.fused(x, training=False).numpy()
    task = task_info(strategy)
    print("RESULT " + json.dumps({
        "task": [task.task_type, task.is_chief, task.num_workers],
        "devices": list(strategy.extended.worker_devices), "replicas": strategy.num_replicas_in_sync,
        "variable": type(variable).__name__, "copies": len(variable.values),
        "changed": sum(int(not np.array_equal(a, b)) for i, (a, b) in enumerate(zip(before, after)) if i not in unused),
        "weights": len(after) - len(unused), "unused": len(unused),
        "unused_changed": sum(int(not np.array_equal(before[i], after[i])) for i in unused),
        "history": history, "per_replica": per_replica,
        "split_vs_fused": float(np.max(np.abs(split - fused))), "fused_std": float(np.std(fused)),
        "plain_vs_distributed": float(np.max(np.abs(fused - distributed))),
        "same_weights": weights_sha256(plain.fused) == weights_sha256(parts.fused),
        "plain_variable": type(plain.fused.get_layer("item_embedding").embeddings).__name__}))
""")


def _run_python(args, timeout, env_extra=None):
    env = dict(os.environ, PYTHONUNBUFFERED="1", **(env_extra or {}))
    env.pop("TF_CONFIG", None)
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout,
                          cwd=REPO, env=env)


@pytest.mark.slow
def test_mirrored_on_two_logical_cpus_trains_and_parts_stay_equivalent(tmp_path):
    script = tmp_path / "mirrored.py"
    script.write_text(MIRRORED_SCRIPT)
    proc = _run_python([str(script)], timeout=150)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")][-1]
    result = json.loads(line[len("RESULT "):])
    assert result["replicas"] == 2 and len(result["devices"]) == 2
    assert result["task"] == [None, True, 1]
    assert all("CPU" in d for d in result["devices"])
    assert result["variable"] == "MirroredVariable" and result["copies"] == 2
    history = result["history"]
    assert (history["strategy"], history["replicas"], history["per_replica_batch"], history["global_batch"]) == (
        "mirrored", 2, 16, 32)
    assert history["steps_per_epoch"] == 6 and history["train_rows"] == 192
    assert result["per_replica"] == [16, 16]
    assert result["changed"] == result["weights"] > 0        # every trained tensor moved
    assert result["unused"] == 1 and result["unused_changed"] == 0
    assert result["split_vs_fused"] <= 1e-6 and result["fused_std"] > 0
    assert result["plain_vs_distributed"] <= 1e-6 and result["same_weights"]
    assert result["plain_variable"] != "MirroredVariable"


@pytest.mark.slow
def test_two_local_workers_end_with_identical_weights(tmp_path):
    try:
        free_ports(2)
    except DistributedError as err:
        pytest.skip(f"cannot bind loopback ports for a local cluster: {err}")
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    out = tmp_path / "model"
    # --workers 2 without TF_CONFIG: the command launches two loopback workers (hard bound 200 s on a busy box)
    argv = ["-m", "edgerec.sdk.cli", "train", "--strategy", "multiworker", "--workers", "2",
            "--worker-timeout", "200", *TINY_DATA, *TINY_MODEL, "--epochs", "1", "--batch-size", "16",
            "--max-train-rows", "192", "--seed", "5", "--quiet", "--out", str(out)]
    proc = _run_python(argv, timeout=230, env_extra={"TMPDIR": str(scratch)})
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    lines = [l for l in proc.stdout.splitlines() if l.startswith(RESULT_PREFIX)]
    assert len(lines) == 2, proc.stdout[-3000:]
    chief, other = sorted((json.loads(l[len(RESULT_PREFIX):]) for l in lines), key=lambda r: r["task_index"])
    assert "2 local workers finished" in proc.stdout
    assert (chief["task_index"], chief["is_chief"], other["task_index"], other["is_chief"]) == (0, True, 1, False)
    assert chief["workers"] == other["workers"] == 2 and chief["replicas"] == 2
    assert chief["global_batch"] == 32 and chief["steps_per_epoch"] == 6
    assert chief["out"] == str(out) and other["out"] is None
    assert list(scratch.iterdir()) == []                        # the other worker's model dir is gone
    from edgerec.sdk.training import load_model_dir
    from edgerec.sdk.training.distributed import weights_sha256

    saved = load_model_dir(out)
    assert weights_sha256(saved.fused) == chief["weights_sha256"] == other["weights_sha256"]
    manifest = json.loads((out / "edgerec_model.json").read_text())
    history = manifest["config"]["history"]
    assert (history["strategy"], history["workers"], history["global_batch"]) == ("multiworker", 2, 32)


@pytest.mark.parametrize("extra, fragment", [(["--strategy", "mirrored", "--model", "mlp"], "--model among"),
                                             (["--strategy", "mirrored", "--workers", "2"], "--workers only with"),
                                             (["--workers", "2"], "--workers only with"),
                                             (["--strategy", "multiworker", "--workers", "-1"], "workers as an int"),
                                             (["--strategy", "mirrored", "--cpu-devices", "0"], "cpu_devices")])
def test_command_line_rejects_bad_worker_options(extra, fragment, capsys):
    from edgerec.sdk.cli import main

    assert main(["train", "--out", "unused", *extra]) == 2
    assert fragment in capsys.readouterr().err


def test_distributed_config_checks_and_round_trips(monkeypatch):
    from edgerec.sdk.training.distributed import DistributedConfig

    config = DistributedConfig("multiworker", workers=2, worker_timeout=60)
    assert DistributedConfig.from_dict(config.to_dict()) == config
    monkeypatch.delenv("TF_CONFIG", raising=False)
    assert config.launches_local_cluster and not DistributedConfig("multiworker").launches_local_cluster
    monkeypatch.setenv("TF_CONFIG", json.dumps(local_tf_config([5001, 5002], 0)))
    assert not config.launches_local_cluster                  # a worker of that cluster trains itself
    for bad in ({"strategy": "ps"}, {"workers": 2}, {"worker_timeout": 0}, {"cpu_devices": True}):
        with pytest.raises(SpecError, match="Expected"):
            DistributedConfig(**bad)
    with pytest.raises(SpecError, match="distributed-config keys"):
        DistributedConfig.from_dict({"gpus": 2})


def test_worker_entry_point_rejects_a_bad_job(capsys):
    from edgerec.sdk.training.worker import main

    assert main(["{not json"]) == 2
    assert "the TrainJob as JSON" in capsys.readouterr().err
    assert main([json.dumps({"out": "x", "family": "mlp"})]) == 2
    assert "a model family among" in capsys.readouterr().err

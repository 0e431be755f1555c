"""Scale-out (issue 19): shards give the numbers of one process, on this process and on a real local Ray.

The Ray tests share one embedded local Ray of 2 CPUs (started once for the file); the kill-a-worker test starts a
real `ray start --head` cluster of its own (tests/test_scale_cluster.py)."""

from __future__ import annotations

import time

import pytest
import ray  # noqa: F401 - bastion[test] brings the ray extra: a missing Ray fails here, never skips
import torch

from bastion.attacks import PGD, Square
from bastion.defenses.certification import SmoothedClassifier
from bastion.errors import UsageError
from bastion.scale import (
    SerialExecutor,
    ShardStore,
    certify_sharded,
    make_executor,
    merge_results,
    shard_attack,
    shard_ranges,
    shard_seed,
)


def _same(a, b) -> None:
    for k in ("x_adv", "success", "y", "pred_adv", "clean_correct", "norms"):
        assert torch.equal(getattr(a, k), getattr(b, k)), k
    assert a.queries == b.queries and a.gradients == b.gradients


@pytest.fixture(scope="module")
def ray_executor():
    ex = make_executor(workers=2)
    yield ex
    ex.close()


def test_shards_cover_the_inputs_in_order_and_seeds_depend_on_the_index_only():
    assert shard_ranges(250, 100) == [(0, 100), (100, 200), (200, 250)]
    assert shard_ranges(0, 100) == []
    assert shard_seed(7, 0) == 7 and shard_seed(None, 3) is None
    seeds = {shard_seed(7, k) for k in range(200)}
    assert len(seeds) == 200 and shard_seed(7, 5) == shard_seed(7, 5) != shard_seed(8, 5)
    with pytest.raises(UsageError, match="shard_size"):
        shard_ranges(10, 0)


def test_one_shard_is_exactly_the_unsharded_attack(digits_mlp, digits):
    x, y = digits.x_test[:80], digits.y_test[:80]
    pgd = PGD(eps=0.1, steps=10, seed=5)
    _same(shard_attack(pgd, digits_mlp, x, y, shard_size=100), pgd(digits_mlp, x, y))


def test_shards_are_the_attack_on_each_shard_with_its_own_seed(digits_mlp, digits):
    """The slow reference: each shard attacked by hand with its seed, joined; the sharded run must equal it, and
    must differ from a run that ignores the shard seeds (what makes shards reproducible anywhere)."""
    x, y = digits.x_test[:250], digits.y_test[:250]
    pgd = PGD(eps=0.15, steps=5, seed=11)
    q0 = digits_mlp.n_queries
    got = shard_attack(pgd, digits_mlp, x, y, shard_size=100)
    assert digits_mlp.n_queries - q0 == got.queries > 0
    parts = [
        PGD(eps=0.15, steps=5, seed=shard_seed(11, k))(digits_mlp, x[a:b], y[a:b])
        for k, (a, b) in enumerate(shard_ranges(250, 100))
    ]
    _same(got, merge_results(parts))
    same_seed = merge_results([pgd(digits_mlp, x[a:b], y[a:b]) for a, b in shard_ranges(250, 100)])
    assert not torch.equal(got.x_adv, same_seed.x_adv)


def test_merged_extras_weigh_rates_by_shard_and_sum_counts(digits_mlp, digits):
    x, y = digits.x_test[:60], digits.y_test[:60]
    sq = Square(eps=0.1, max_queries=50, seed=2)
    got = shard_attack(sq, digits_mlp, x, y, shard_size=25)
    assert got.extra["queries"].shape == (60,) and int(got.extra["queries"].sum()) == got.queries


def test_a_generator_is_refused_and_a_stored_shard_is_not_recomputed(digits_mlp, digits, tmp_path):
    x, y = digits.x_test[:50], digits.y_test[:50]
    with pytest.raises(UsageError, match="seed= instead"):
        shard_attack(PGD(eps=0.1, generator=torch.Generator()), digits_mlp, x, y)
    store = ShardStore(tmp_path / "shards")
    pgd = PGD(eps=0.1, steps=5, seed=1)
    first = shard_attack(pgd, digits_mlp, x, y, shard_size=20, store=store, label="t")
    assert len(list((tmp_path / "shards").glob("shard-*.pt"))) == 3
    ex = SerialExecutor()
    again = shard_attack(pgd, digits_mlp, x, y, shard_size=20, store=store, label="t", executor=ex)
    _same(first, again)
    assert ex.records[-1].resumed == 3  # read back, not attacked again
    (tmp_path / "shards" / sorted(p.name for p in (tmp_path / "shards").glob("*.pt"))[0]).write_bytes(b"junk")
    _same(first, shard_attack(pgd, digits_mlp, x, y, shard_size=20, store=store, label="t"))  # damaged: redone


def test_keyed_certification_does_not_depend_on_the_other_inputs(digits_mlp, digits):
    sm = SmoothedClassifier(digits_mlp, 0.25, n0=20, n=200, seed=3)
    x = digits.x_test[:6]
    keys = torch.arange(6)
    together = sm.certify(x, return_counts=True, keys=keys)
    alone = [sm.certify(x[i : i + 1], return_counts=True, keys=keys[i : i + 1]) for i in range(6)]
    for j in range(3):
        assert torch.equal(together[j], torch.cat([a[j] for a in alone]))
    reversed_ = sm.certify(x.flip(0), return_counts=True, keys=keys.flip(0))
    assert torch.equal(reversed_[2].flip(0), together[2])
    other_keys = sm.certify(x, return_counts=True, keys=keys + 100)
    assert not torch.equal(other_keys[2], together[2])  # the key, not the position, picks the noise
    with pytest.raises(UsageError, match="one per input"):
        sm.certify(x, keys=torch.arange(3))


def test_sharded_certification_equals_certify_with_keys(digits_mlp, digits):
    sm = SmoothedClassifier(digits_mlp, 0.25, n0=20, n=300, seed=4)
    x = digits.x_test[:10]
    got = certify_sharded(sm, x, shard_size=3)
    want = sm.certify(x, return_counts=True, keys=torch.arange(10))
    for a, b in zip(got, want):
        assert torch.equal(a, b)


def test_bad_workers_and_addresses_are_one_line_errors_without_a_hang():
    with pytest.raises(UsageError, match="workers must be"):
        make_executor(workers=0)
    t0 = time.perf_counter()
    with pytest.raises(UsageError, match=r"cannot reach a Ray cluster at 127\.0\.0\.1:9"):
        make_executor(address="127.0.0.1:9")
    assert time.perf_counter() - t0 < 30
    with pytest.raises(UsageError, match="HOST:PORT"):
        make_executor(address="nonsense")


def test_ray_shards_give_the_serial_numbers(ray_executor, digits_mlp, digits):
    x, y = digits.x_test[:250], digits.y_test[:250]
    pgd = PGD(eps=0.15, steps=5, seed=11)
    q0 = digits_mlp.n_queries
    remote = shard_attack(pgd, digits_mlp, x, y, executor=ray_executor)
    assert digits_mlp.n_queries - q0 == remote.queries  # counted here although the shards ran on workers
    _same(remote, shard_attack(pgd, digits_mlp, x, y))
    sm = SmoothedClassifier(digits_mlp, 0.25, n0=20, n=300, seed=4)
    for a, b in zip(certify_sharded(sm, x[:12], executor=ray_executor), certify_sharded(sm, x[:12])):
        assert torch.equal(a, b)
    rec = ray_executor.records[-1]
    assert rec.workers == 2 and rec.shards == 3 and all(s > 0 for s in rec.shard_seconds)


def test_a_task_error_comes_back_as_itself(ray_executor, digits_mlp, digits):
    x, y = digits.x_test[:10], digits.y_test[:10]
    with pytest.raises(UsageError, match="targets must differ"):
        shard_attack(PGD(eps=0.1, seed=0), digits_mlp, x, y, y.clone(), executor=ray_executor)


def test_a_cluster_that_cannot_run_bastion_or_runs_another_version_is_refused(ray_executor, monkeypatch):
    from bastion.scale import ray_backend

    monkeypatch.setattr(ray_backend, "_worker_facts", lambda: {"bastion": "0.0.0", "torch": "?", "threads": 1})
    with pytest.raises(UsageError, match=r"runs bastion 0\.0\.0 but this process runs"):
        ray_backend.RayExecutor(workers=1)

    def broken() -> dict:
        raise ModuleNotFoundError("No module named 'bastion'")

    monkeypatch.setattr(ray_backend, "_worker_facts", broken)
    with pytest.raises(UsageError, match=r"cannot run bastion tasks \(ModuleNotFoundError"):
        ray_backend.RayExecutor(workers=1)

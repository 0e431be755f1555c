"""The one trainer (bastion.training): the same weights as a hand-written reference loop, checkpoint/resume to the
same weights as an uninterrupted run, a record with every epoch, the step hook called on every batch and its
output trained on, steps by name with the registry's did-you-mean error, one device, a swappable optimizer,
schedules, the progress bar, and the Gaussian-hardening library functions the CLI uses."""

from __future__ import annotations

import copy
import json
import sys
import types

import pytest
import torch
import torch.nn.functional as F

import bastion
from bastion.defenses.certification import accuracy_under_noise, gaussian_harden
from bastion.defenses.training import AdversarialTrainingConfig
from bastion.errors import UsageError
from bastion.models.architectures import build_architecture
from bastion.models.training import TrainConfig, train_module
from bastion.training import (
    TRAINING_STEPS,
    Batch,
    GaussianNoise,
    HeldOut,
    Trainer,
    TrainingStep,
    fit,
    save_trained,
    split_holdout,
)


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # digits-mlp is tiny: one thread is faster and deterministic in time
    yield
    torch.set_num_threads(before)


def fresh_mlp(seed: int = 0) -> torch.nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build_architecture("digits-mlp")[0]


def weights_equal(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def reference_loop(module, x, y, *, epochs, batch_size, lr, seed, sigma=None):
    """The loop bastion had before the trainer (clean, or Gaussian noise), written out: the slow reference."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(module.parameters(), lr=lr)
    module.train()
    for _ in range(epochs):
        perm = torch.randperm(x.shape[0], generator=g)
        for i in range(0, x.shape[0], batch_size):
            idx = perm[i : i + batch_size]
            xb = x[idx]
            if sigma is not None:
                xb = xb + sigma * torch.randn(xb.shape, generator=g, dtype=xb.dtype)
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(module(xb), y[idx]).backward()
            opt.step()
    return module.eval()


@pytest.mark.parametrize("sigma", [None, 0.3])
def test_trainer_gives_the_reference_loops_weights_bit_for_bit(digits, sigma):
    x, y = digits.x_train[:500], digits.y_train[:500]
    ref = reference_loop(fresh_mlp(), x, y, epochs=2, batch_size=48, lr=2e-3, seed=4, sigma=sigma)
    ours = fresh_mlp()
    step = "clean" if sigma is None else GaussianNoise(sigma=sigma)
    fit(ours, x, y, epochs=2, batch_size=48, lr=2e-3, seed=4, step=step)
    assert weights_equal(ref, ours)
    assert not weights_equal(ref, fresh_mlp())  # training moved the weights
    if sigma is None:  # and the public wrapper the zoo and `bastion train` use is the same loop
        wrapped = train_module(fresh_mlp(), x, y, TrainConfig(epochs=2, batch_size=48, lr=2e-3, seed=4))
        assert weights_equal(ref, wrapped)


class _Interrupt(Exception):
    pass


def test_an_interrupted_run_resumes_from_its_checkpoint_to_the_same_weights(tmp_path, digits):
    """Every state that moves is in play: SGD momentum, a StepLR scheduler, the generator (shuffling and the noise
    step), the record."""
    x, y = digits.x_train[:400], digits.y_train[:400]

    def trainer(module, **kw):
        return Trainer(
            module,
            epochs=4,
            batch_size=50,
            step=GaussianNoise(sigma=0.2),
            optimizer=lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9),
            scheduler=lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5),
            seed=3,
            **kw,
        )

    straight = fresh_mlp()
    rec_straight = trainer(straight).fit(x, y)
    ck = tmp_path / "run.ckpt"

    def stop_after_second(entry):
        if entry["epoch"] == 2:
            raise _Interrupt

    with pytest.raises(_Interrupt):
        trainer(fresh_mlp(), checkpoint=ck, on_epoch=stop_after_second).fit(x, y)
    assert ck.exists()  # epoch 2 was written before the callback ran
    seen: list[int] = []
    resumed = fresh_mlp()
    rec = trainer(resumed, checkpoint=ck, on_epoch=lambda e: seen.append(e["epoch"])).fit(x, y)
    assert seen == [3, 4]  # epochs 1-2 came from the checkpoint
    assert [e["epoch"] for e in rec["epochs"]] == [1, 2, 3, 4]
    assert (
        [e["lr"] for e in rec["epochs"]] == [e["lr"] for e in rec_straight["epochs"]] == [0.05, 0.025, 0.0125, 0.00625]
    )
    assert [e["loss"] for e in rec["epochs"]] == [e["loss"] for e in rec_straight["epochs"]]
    assert weights_equal(straight, resumed)
    # a checkpoint of other settings, or a file that is not a checkpoint, is refused
    with pytest.raises(UsageError, match="other settings"):
        Trainer(fresh_mlp(), epochs=5, batch_size=50, checkpoint=ck).fit(x, y)
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(UsageError, match="cannot read checkpoint"):
        Trainer(fresh_mlp(), epochs=1, batch_size=50, checkpoint=junk).fit(x, y)


def test_the_record_has_every_epoch_and_is_json(digits):
    g = torch.Generator().manual_seed(0)
    train_idx, val_idx = split_holdout(digits.x_train.shape[0], 200, g)
    assert len(set(train_idx.tolist()) | set(val_idx.tolist())) == digits.x_train.shape[0]
    assert not set(train_idx.tolist()) & set(val_idx.tolist())
    x, y = digits.x_train[train_idx], digits.y_train[train_idx]
    record = fit(
        fresh_mlp(),
        x,
        y,
        epochs=5,
        batch_size=32,
        lr=2e-3,
        generator=g,
        validation=(digits.x_train[val_idx], digits.y_train[val_idx]),
    )
    record = json.loads(json.dumps(record))  # plain JSON
    epochs = record["epochs"]
    assert [e["epoch"] for e in epochs] == [1, 2, 3, 4, 5]
    assert all({"epoch", "lr", "loss", "val_accuracy", "seconds"} <= set(e) for e in epochs)
    assert record["config"]["epochs"] == 5 and record["config"]["optimizer"]["name"] == "Adam"
    assert record["seconds"] == pytest.approx(sum(e["seconds"] for e in epochs), abs=0.01)
    # a fresh network is at chance (0.1); five epochs on digits reach ~0.95 held-out; the loss falls
    assert 0.85 <= epochs[-1]["val_accuracy"] <= 1.0 and epochs[0]["loss"] > epochs[-1]["loss"]


class _Recording(TrainingStep):
    """Records every call; trains on the batch with every label replaced by ``label``."""

    def __init__(self, label: int) -> None:
        self.label = label
        self.calls: list[tuple[int, list[int]]] = []
        self.setups = 0

    def setup(self, x, y, generator):
        self.setups += 1

    def __call__(self, module, batch, generator, epoch):
        self.calls.append((epoch, batch.index.tolist()))
        return batch.x, torch.full_like(batch.y, self.label)


def test_the_step_is_called_on_every_batch_and_its_output_is_trained_on(digits):
    x, y = digits.x_train[:300], digits.y_train[:300]
    step = _Recording(label=7)
    module = fresh_mlp()
    fit(module, x, y, epochs=3, batch_size=64, lr=5e-3, step=step)
    assert step.setups == 1 and len(step.calls) == 3 * 5  # ceil(300 / 64) = 5 batches per epoch
    for epoch in range(3):
        batches = [idx for e, idx in step.calls if e == epoch]
        assert sorted(i for b in batches for i in b) == list(range(300))  # each input once per epoch
        assert [len(b) for b in batches] == [64, 64, 64, 64, 44]
    # the model learnt the step's labels, not the data's: it answers 7 on the test inputs
    pred = module(digits.x_test).argmax(1)
    assert float((pred == 7).float().mean()) > 0.95

    # a step that returns the loss is trained on that loss: a zero loss leaves every weight where it was
    still = fresh_mlp()
    fit(still, x, y, epochs=1, batch_size=64, step=lambda m, b, g, e: 0.0 * m(b.x).sum())
    assert weights_equal(still, fresh_mlp())
    with pytest.raises(UsageError, match="scalar"):
        fit(fresh_mlp(), x, y, epochs=1, batch_size=64, step=lambda m, b, g, e: m(b.x))


def test_steps_are_registered_by_name_and_a_bad_name_says_what_to_choose(digits):
    assert sorted(TRAINING_STEPS) == ["clean", "fast-at", "gaussian", "pgd-at", "trades"]
    x, y = digits.x_train[:64], digits.y_train[:64]
    with pytest.raises(UsageError, match=r"unknown training step 'pgd_at' \(did you mean 'pgd-at'\?\)"):
        Trainer(fresh_mlp(), epochs=1, batch_size=32, step="pgd_at")
    with pytest.raises(UsageError, match=r"unknown training step 'tradez' \(did you mean 'trades'\?\)"):
        AdversarialTrainingConfig(defense="tradez")
    with pytest.raises(UsageError, match="not adversarial training"):
        AdversarialTrainingConfig(defense="gaussian")
    with pytest.raises(UsageError, match="sigma"):
        Trainer(fresh_mlp(), epochs=1, batch_size=32, step="gaussian")  # needs its option
    record = fit(fresh_mlp(), x, y, epochs=1, batch_size=32, step="clean")
    assert record["config"]["step"] == "CleanStep()"
    assert AdversarialTrainingConfig(defense="TRADES", beta=2.0).make_step((0.0, 1.0)).beta == 2.0


def test_module_data_and_generator_share_one_device(digits):
    x, y = digits.x_train[:64], digits.y_train[:64]
    seen = []

    def step(module, batch, generator, epoch):
        seen.append({next(module.parameters()).device, batch.x.device, batch.index.device, generator.device})
        return batch.x, batch.y

    trainer = Trainer(fresh_mlp(), epochs=1, batch_size=32, step=step)
    assert trainer.generator.device == trainer.device == torch.device("cpu")
    trainer.fit(x, y)
    assert seen and all(s == {torch.device("cpu")} for s in seen)
    meta = torch.empty(64, 1, 8, 8, device="meta")
    with pytest.raises(UsageError, match="x is on meta but the module on cpu"):
        trainer.fit(meta, y)
    with pytest.raises(UsageError, match="integer labels"):
        trainer.fit(x, y.float())


def test_the_optimizer_is_swappable_and_lr_schedule_sets_every_batch(digits):
    x, y = digits.x_train[:256], digits.y_train[:256]
    module = fresh_mlp()
    opt = torch.optim.SGD(module.parameters(), lr=0.1)
    rates: list[float] = []

    def step(m, batch, generator, epoch):
        rates.append(opt.param_groups[0]["lr"])
        return batch.x, batch.y

    trainer = Trainer(module, epochs=2, batch_size=64, optimizer=opt, step=step, lr_schedule=lambda p: 0.1 * (1 - p))
    record = trainer.fit(x, y)
    assert trainer.optimizer is opt and record["config"]["optimizer"]["name"] == "SGD"
    assert rates == pytest.approx([0.1 * (1 - k / 8) for k in range(8)])  # progress = batches done / batches in all
    assert [e["lr"] for e in record["epochs"]] == pytest.approx([0.1 * (1 - 3 / 8), 0.1 * (1 - 7 / 8)])


def test_progress_bar_only_when_asked_and_on_a_terminal(monkeypatch, digits):
    bars = []

    class FakeBar:
        def __init__(self, total, desc, **kw):
            self.total, self.desc, self.updates, self.closed = total, desc, 0, False
            bars.append(self)

        def update(self, n):
            self.updates += n

        def set_postfix(self, **kw):
            self.postfix = kw

        def close(self):
            self.closed = True

    monkeypatch.setitem(sys.modules, "tqdm.auto", types.SimpleNamespace(tqdm=FakeBar))
    x, y = digits.x_train[:128], digits.y_train[:128]
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False)
    fit(fresh_mlp(), x, y, epochs=1, batch_size=32, verbose=True)  # not a terminal (a log file, CI)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    fit(fresh_mlp(), x, y, epochs=1, batch_size=32)  # verbose=False (the default)
    assert bars == []
    fit(fresh_mlp(), x, y, epochs=2, batch_size=32, verbose=True)
    assert [(b.total, b.desc, b.updates, b.closed) for b in bars] == [
        (4, "epoch 1/2", 4, True),
        (4, "epoch 2/2", 4, True),
    ]
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)  # not installed: no bar, no error
    fit(fresh_mlp(), x, y, epochs=1, batch_size=32, verbose=True)
    assert len(bars) == 2


def test_gaussian_harden_trains_a_copy_and_measures_it_under_noise(tmp_path, digits, digits_mlp):
    before = copy.deepcopy(digits_mlp.module.state_dict())
    hardened, rec = gaussian_harden(digits_mlp, digits, 0.5, epochs=6, batch_size=64, lr=2e-3, seed=1)
    assert all(torch.equal(v, digits_mlp.module.state_dict()[k]) for k, v in before.items())  # the input is untouched
    assert rec["config"] == {"defense": "gaussian", "sigma": 0.5, "epochs": 6, "batch_size": 64, "lr": 2e-3, "seed": 1}
    assert [e["epoch"] for e in rec["epochs"]] == [1, 2, 3, 4, 5, 6]
    # measured (seeds 0-2): the zoo model keeps 0.54-0.56 under sigma=0.5 noise; six epochs of noise training
    # lift it to 0.67-0.69 (clean 0.95); training that forgot the noise would stay near the zoo's number
    zoo_noisy = accuracy_under_noise(digits_mlp.module, digits.x_test, digits.y_test, 0.5, seed=1)
    noisy = rec["test_accuracy_under_noise"]
    assert zoo_noisy < 0.62 and zoo_noisy + 0.08 <= noisy < rec["test_accuracy"], (zoo_noisy, rec)
    assert 0.85 <= rec["test_accuracy"] <= 1.0
    assert hardened.arch == "digits-mlp" and not hardened.module.training
    path = tmp_path / "sub" / "g.safetensors"
    rec_path = save_trained(hardened, path, rec, record_path=tmp_path / "other" / "g.json")
    assert json.loads(rec_path.read_text()) == json.loads(json.dumps(rec))
    back = bastion.load_model(str(path))
    assert torch.equal(back.predict(digits.x_test), hardened.predict(digits.x_test))
    with pytest.raises(UsageError, match="architecture is not known"):
        save_trained(fresh_mlp(), tmp_path / "x.safetensors", rec)
    with pytest.raises(UsageError, match="torch model"):
        gaussian_harden(bastion.models.load_zoo("cancer-gbt"), bastion.load_dataset("breast-cancer"), 0.5)


def test_held_out_monitor_and_batch_are_plain_values(digits):
    mon = HeldOut(digits.x_test, digits.y_test)
    assert mon(fresh_mlp(), torch.Generator()) == {"val_accuracy": pytest.approx(0.1, abs=0.08)}  # untrained: chance
    b = Batch(digits.x_test[:2], digits.y_test[:2], torch.arange(2))
    with pytest.raises(AttributeError):
        b.x = digits.x_test[:3]  # frozen

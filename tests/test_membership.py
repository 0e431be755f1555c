"""Membership inference on real small models (digits + digits-mlp): the statistics against slow direct
computations, every attack against a random scorer on an overfit target, leakage ordered by overfitting, the
reference models' cache and resume, the CLI and the audit probe."""

from __future__ import annotations

import dataclasses
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.stats import norm

from bastion.attacks.inference.membership import (
    MEMBERSHIP_ATTACKS,
    LiRA,
    Recipe,
    evaluate_membership,
    get_membership_attack,
    lira_scores,
    logit_confidence,
    membership_game,
    modified_entropy,
    rmia_scores,
    run_membership_attacks,
    train_references,
)
from bastion.data import Dataset, load_dataset
from bastion.errors import UsageError
from bastion.models.training import TRAIN_CONFIGS

BASTION = str(Path(sys.executable).parent / "bastion")
# an overfit recipe (the zoo's digits-mlp, 40 epochs) and a regularised one (3 epochs, weight decay)
OVERFIT = Recipe(arch="digits-mlp")
REGULARISED = Recipe(
    arch="digits-mlp", config=dataclasses.replace(TRAIN_CONFIGS["digits-mlp"], epochs=3, weight_decay=1e-2)
)


@pytest.fixture(scope="module")
def game(tmp_path_factory):
    torch.set_num_threads(2)
    data = load_dataset("digits")
    return membership_game(
        data, OVERFIT, train_size=400, references=8, seed=0, cache_dir=tmp_path_factory.mktemp("refs")
    )


def test_logit_confidence_and_modified_entropy_match_their_formulas():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(50, 5, generator=g, dtype=torch.float64) * 4
    y = torch.randint(0, 5, (50,), generator=g)
    p = torch.softmax(z, dim=1)
    py = p[torch.arange(50), y]
    assert torch.allclose(logit_confidence(z, y), torch.log(py / (1 - py)), rtol=1e-9, atol=1e-9)
    direct = [
        -(1 - p[i, y[i]]) * math.log(p[i, y[i]]) - sum(p[i, j] * math.log(1 - p[i, j]) for j in range(5) if j != y[i])
        for i in range(50)
    ]
    assert np.allclose(modified_entropy(z, y).numpy(), direct, rtol=1e-9)
    # probabilities in give the same statistic as logits in
    assert torch.allclose(logit_confidence(p, y, "probabilities"), logit_confidence(z, y), atol=1e-6)


def _lira_slow(t, ref, keep, online, fixed):
    """Carlini et al.'s formulas record by record with scipy (no masking tricks, no vectorisation); NaN for a record
    without in- or out-models (the fast code's documented fallback is not the formula)."""
    g_out, g_in = np.std(ref[~keep]), np.std(ref[keep])
    out = []
    for i in range(t.size):
        r_in, r_out = ref[keep[:, i], i], ref[~keep[:, i], i]
        if r_in.size == 0 or r_out.size == 0:
            out.append(np.nan)
            continue
        s_in = g_in if fixed or r_in.size < 2 else np.std(r_in)
        s_out = g_out if fixed or r_out.size < 2 else np.std(r_out)
        if not online:
            out.append((t[i] - np.median(r_out)) / (s_out + 1e-30))
        else:
            out.append(
                norm.logpdf(t[i], np.median(r_in), s_in + 1e-30) - norm.logpdf(t[i], np.median(r_out), s_out + 1e-30)
            )
    return np.array(out)


@pytest.mark.parametrize(("online", "fixed"), [(True, False), (True, True), (False, False), (False, True)])
def test_lira_equals_the_papers_formula_computed_record_by_record(game, online, fixed):
    refs = game.references
    y = refs.labels
    phi_t = logit_confidence(game.target_scores, y).numpy()
    phi_r = torch.stack([logit_confidence(refs.logits[j], y) for j in range(refs.k)]).numpy()
    keep = refs.keep.numpy()
    fast = lira_scores(phi_t, phi_r, keep, online=online, fixed_variance=fixed)
    # records with in- and out-models (all but a few of 800 with 8 references) follow the formula exactly; the
    # others take the documented fallback and still get a finite score
    both = keep.any(axis=0) & (~keep).any(axis=0)
    assert 0.95 * both.size < both.sum() < both.size and np.isfinite(fast).all()
    slow = _lira_slow(phi_t, phi_r, keep, online, fixed)
    assert np.allclose(fast[both], slow[both], rtol=1e-9, atol=1e-9)
    # and the attack object computes exactly that from the model's logits
    attack = LiRA(online=online, fixed_variance=fixed).fit(refs)
    assert np.allclose(attack.score_from(game.target_scores, y).numpy(), fast)


def test_rmia_equals_a_double_loop_over_population_records():
    rng = np.random.default_rng(0)
    p_t, p_r = rng.uniform(0.05, 1, 40), rng.uniform(0.05, 1, (4, 40))
    keep = rng.random((4, 40)) < 0.5
    a, gamma = 0.3, 1.0
    fast = rmia_scores(p_t, p_r, keep, offline_a=a, gamma=gamma)
    slow = []
    for i in range(40):

        def p_x(j):
            outs = p_r[~keep[:, j], j]
            p_out = outs.mean() if outs.size else np.clip((p_r[keep[:, j], j] + a - 1) / a, 0, 1).mean()
            return (1 + a) / 2 * p_out + (1 - a) / 2

        wins = sum((p_t[i] / p_x(i)) / (p_t[j] / p_x(j)) > gamma for j in range(40) if j != i)
        slow.append(wins / 39)
    assert np.allclose(fast, slow)


def test_roc_numbers_on_a_closed_form_example():
    # 4 members, 4 non-members; the top score is a member, the second a non-member
    scores = [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2]
    member = [1, 0, 1, 1, 0, 1, 0, 0]
    r = evaluate_membership(scores, member, top=2)
    # pairs (member above non-member): 4 + 3 + 3 + 2 = 12 of 16
    assert r["auc"] == pytest.approx(12 / 16)
    assert r["tpr_at_fpr"]["0.001"] == pytest.approx(0.25)  # only the first threshold flags no non-member
    # the best threshold: the top 4 (TPR 3/4, FPR 1/4) or the top 6 (TPR 1, FPR 2/4)
    assert r["balanced_accuracy"] == pytest.approx(0.75)
    assert r["most_exposed"] == [0, 2]


@pytest.mark.parametrize("name", sorted(MEMBERSHIP_ATTACKS))
def test_every_attack_beats_a_random_scorer_on_an_overfit_target(game, name):
    results = run_membership_attacks(game, [get_membership_attack(name)])
    res = results[name]
    random_scores = torch.rand(game.is_member.shape[0], generator=torch.Generator().manual_seed(1))
    chance = evaluate_membership(random_scores, game.is_member)
    assert game.train_accuracy == 1.0 and game.test_accuracy < 0.99  # the target does overfit
    assert 0.45 < chance["auc"] < 0.55  # a random scorer is at chance, so the bound below can fail
    assert res["auc"] > 0.53 and res["auc"] > chance["auc"] + 0.02, res["auc"]


def test_reference_attacks_beat_the_loss_attack_at_low_false_positives(game):
    res = run_membership_attacks(game, [get_membership_attack(n) for n in ("loss", "lira-offline", "rmia")])
    loss = res["loss"]["tpr_at_fpr"]["0.01"]
    assert res["lira-offline"]["tpr_at_fpr"]["0.01"] > loss
    assert res["rmia"]["tpr_at_fpr"]["0.01"] > loss


def test_an_overfit_model_leaks_more_than_a_regularised_one(tmp_path):
    data = load_dataset("digits")
    aucs = {}
    for label, recipe in (("overfit", OVERFIT), ("regularised", REGULARISED)):
        setup = membership_game(data, recipe, train_size=400, references=8, seed=0, cache_dir=tmp_path)
        res = run_membership_attacks(setup, [get_membership_attack("lira-offline"), get_membership_attack("loss")])
        aucs[label] = (res["lira-offline"]["auc"], res["loss"]["auc"], setup.train_accuracy - setup.test_accuracy)
    # the generalisation gap and both attacks order the two recipes the same way
    assert aucs["overfit"][2] > aucs["regularised"][2]
    assert aucs["overfit"][0] > aucs["regularised"][0] + 0.02
    assert aucs["overfit"][1] > aucs["regularised"][1]


def test_reference_models_are_cached_and_a_stopped_run_keeps_the_finished_ones(tmp_path):
    data = load_dataset("digits")
    pop = Dataset("pop", data.x_train[:200], data.y_train[:200], data.x_test[:0], data.y_test[:0], (0.0, 1.0), 10)

    def stop_after_two(done, total):
        if done == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_references(pop, OVERFIT, 4, seed=3, cache_dir=tmp_path, progress=stop_after_two)
    again = train_references(pop, OVERFIT, 4, seed=3, cache_dir=tmp_path)
    assert again.cached == [True, True, False, False]
    third = train_references(pop, OVERFIT, 4, seed=3, cache_dir=tmp_path)
    assert (
        third.cached == [True] * 4 and torch.equal(third.logits, again.logits) and torch.equal(third.keep, again.keep)
    )
    assert (third.keep.sum(dim=1) == 100).all()  # each model on exactly half of the population


def test_bad_input_is_refused_with_the_fix(tmp_path, monkeypatch):
    data = load_dataset("digits")
    with pytest.raises(UsageError, match="choose train_size <= 898"):
        membership_game(data, OVERFIT, train_size=1000, references=2)
    with pytest.raises(UsageError, match="exactly one of arch"):
        Recipe()
    (tmp_path / "recipes.py").write_text("def bad(dataset, seed):\n    return 42\n")
    monkeypatch.chdir(tmp_path)
    small = Dataset("s", data.x_train[:40], data.y_train[:40], data.x_test[:0], data.y_test[:0], (0.0, 1.0), 10)
    with pytest.raises(UsageError, match=r"must return a trained torch\.nn\.Module"):
        train_references(small, Recipe(function="recipes:bad"), 1, cache_dir=tmp_path)
    with pytest.raises(UsageError, match="needs reference models"):
        LiRA().fit(None)
    with pytest.raises(UsageError, match=r"labels must lie in \[0, 9\]"):
        logit_confidence(torch.zeros(2, 10), torch.tensor([0, 12]))
    with pytest.raises(UsageError, match="unknown membership attack 'lira-onlin'"):
        get_membership_attack("lira-onlin")


def test_privacy_cli_game_mode_prints_the_documented_json(tmp_path):
    env = {"BASTION_HOME": str(tmp_path), "PATH": "/usr/bin:/bin"}
    r = subprocess.run(
        [
            BASTION,
            "privacy",
            "--arch",
            "digits-mlp",
            "--data",
            "digits",
            "--train-size",
            "200",
            "--attacks",
            "loss,rmia",
            "--references",
            "2",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert set(out["attacks"]) == {"loss", "rmia"} and out["mode"] == "game" and out["n_inputs"] == 400
    assert set(out["attacks"]["rmia"]["tpr_at_fpr"]) == {"0.001", "0.01"}
    assert out["target"]["train_accuracy"] > out["target"]["test_accuracy"]
    assert len(out["references"]["seconds_per_model"]) == 2
    bad = subprocess.run(
        [BASTION, "privacy", "--arch", "digits-mlp", "--data", "digits", "--attacks", "lira", "--references", "0"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert bad.returncode == 2 and "need reference models" in bad.stderr and "Traceback" not in bad.stderr


def test_label_only_shifts_move_pixels_and_auto_adds_noise_to_small_images():
    from bastion.attacks.inference.membership.label_only import LabelOnlyAttack, shifted_copies
    from bastion.models.zoo import load_zoo

    x = torch.arange(16.0).view(1, 1, 4, 4)
    copies = shifted_copies(x, 1)
    assert len(copies) == 9 and torch.equal(copies[0], x)
    down = copies[[(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)].index((1, 0)) + 1]
    assert torch.equal(down[0, 0, 1:], x[0, 0, :-1]) and torch.all(down[0, 0, 0] == 0)  # filled with the minimum
    model = load_zoo("digits-mlp")
    small = torch.rand(3, 1, 8, 8)
    assert len(LabelOnlyAttack(n_noise=5)._copies(model, small)) == 6  # 8x8: noise, not shifts
    assert len(LabelOnlyAttack(perturbation="shift")._copies(model, small)) == 9
    with pytest.raises(UsageError, match="perturbation must be"):
        LabelOnlyAttack(perturbation="blur")

"""Pruning quality on real data (scikit-learn's bundled digits; no download), with the code of
bench/prune_digits.py: the orderings the issue promises, checked on two seeds (means) with fixed
seeds and honest margins (a test set of 450 images: one point is 4.5 images)."""
import importlib.util
import json
import statistics
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import sparsekit

ROOT = Path(__file__).resolve().parents[1]
SEEDS = (0, 1)


def _bench():
    spec = importlib.util.spec_from_file_location("prune_digits", ROOT / "bench" / "prune_digits.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


CELLS = [("unstructured", "magnitude", 0.5), ("unstructured", "magnitude", 0.9)] + [
    ("unstructured", c, s) for c in ("taylor", "activation", "random") for s in (0.7, 0.9)] + [
    ("2:4", "activation", None), ("2:4", "random", None)]


@pytest.fixture(scope="module")
def results():
    pytest.importorskip("sklearn")
    P = _bench()
    torch.manual_seed(0)
    dense_acc, acc = [], {}
    for seed in SEEDS:
        data = P.load_data(seed)
        dense = P.train_dense(data, seed)
        dense_acc.append(P.accuracy(dense, data[2], data[3]))
        calib = sparsekit.calibrate(dense, P.Batches(data[0], data[1], 128, seed=seed, shuffle=False),
                                    F.cross_entropy, filter_fn=lambda m, fqn: fqn in P.HIDDEN)
        for st, cr, sp in CELLS:
            b, a, real = P.prune_and_recover(dense, data, st, cr, sp, seed, calib=calib)
            assert abs(real - (sp or 0.5)) < 1e-3
            acc.setdefault((st, cr, sp), []).append((b, a))
    mean = {k: (statistics.fmean(b for b, _ in v), statistics.fmean(a for _, a in v)) for k, v in acc.items()}
    return statistics.fmean(dense_acc), dense_acc, mean


@pytest.mark.slow
def test_dense_baseline(results):
    _, per_seed, _ = results
    assert min(per_seed) >= 0.95


@pytest.mark.slow
def test_50pct_unstructured_magnitude_within_one_point_of_dense_after_recovery(results):
    dense, _, r = results
    assert r[("unstructured", "magnitude", 0.5)][1] >= dense - 0.01


@pytest.mark.slow
def test_fine_tuning_recovers_accuracy(results):
    dense, _, r = results
    for key, (before, after) in r.items():
        assert after >= before - 0.005, key  # recovery never costs accuracy
    for key in [("unstructured", c, 0.9) for c in ("magnitude", "taylor", "activation", "random")]:
        before, after = r[key]
        assert after >= before + 0.1, key  # the 90% cells lose a lot and get most of it back
    assert r[("unstructured", "magnitude", 0.9)][1] >= dense - 0.03
    assert r[("unstructured", "activation", 0.7)][1] >= dense - 0.02


@pytest.mark.slow
def test_activation_aware_and_taylor_beat_random(results):
    _, _, r = results
    for s in (0.7, 0.9):
        rnd = r[("unstructured", "random", s)][0]
        assert r[("unstructured", "activation", s)][0] >= rnd + 0.05, s
        assert r[("unstructured", "taylor", s)][0] >= rnd + 0.03, s
    after = {c: r[("unstructured", c, 0.9)][1] for c in ("activation", "taylor", "random")}
    assert max(after["activation"], after["taylor"]) >= after["random"]
    assert r[("2:4", "activation", None)][0] >= r[("2:4", "random", None)][0]


def test_committed_table_covers_every_cell():
    P = _bench()
    path = ROOT / "bench" / "results" / "prune_digits.json"
    rec = json.loads(path.read_text())
    cells = {(r["structure"], r["criterion"], None if ":" in r["structure"] else round(r["sparsity"], 1))
             for r in rec["results"]}
    expected = {(st, cr, None if sp is None else round(sp, 1)) for st, cr, sp in P.cells()}
    assert cells == expected and len(expected) == 6 * 3 * 5 + 5  # 6 structures x 3 sparsities + 2:4, 5 criteria
    assert (ROOT / "bench" / "results" / "prune_digits.md").exists()
    assert (ROOT / "bench" / "results" / "prune_digits.png").exists()
    u50 = next(r for r in rec["results"] if (r["structure"], r["criterion"]) == ("unstructured", "magnitude")
               and abs(r["sparsity"] - 0.5) < 1e-6)
    assert u50["after_mean"] >= statistics.fmean(rec["dense"]) - 0.01

"""Fitted trees as plain arrays (velocity/model/trees.py), and the score model's blend of its networks with one."""

from dataclasses import asdict

import numpy as np
import pandas as pd
import pytest


@pytest.fixture(scope="module")
def fitted():
    """A real scikit-learn regressor on data with missing values, and its flattened copy."""
    from sklearn.ensemble import HistGradientBoostingRegressor

    from velocity.model.trees import TreeEnsemble

    rng = np.random.default_rng(0)
    x = rng.random((3000, 4))
    x[rng.random(x.shape) < 0.15] = np.nan  # NaN must follow each split's learned side
    y = 40 * np.nan_to_num(x[:, 0]) + 20 * np.nan_to_num(x[:, 1], nan=0.9) + rng.normal(0, 2, len(x))
    regressor = HistGradientBoostingRegressor(loss="absolute_error", max_iter=60, random_state=0).fit(x, y)
    return regressor, TreeEnsemble.from_sklearn(regressor, ("pitch", "duration", "dstart", "dprev"))


def test_flattened_trees_predict_exactly_as_scikit_learn(fitted):
    regressor, tree = fitted
    x = np.random.default_rng(1).random((10_000, 4))
    x[::3, 1] = np.nan
    x[::5, 0] = np.nan
    np.testing.assert_allclose(tree.predict_features(x), regressor.predict(x), rtol=0, atol=1e-9)


def test_trees_survive_a_weights_only_checkpoint(fitted, tmp_path):
    from velocity.model.checkpoint import load_checkpoint, save_checkpoint
    from velocity.model.trees import TreeEnsemble

    regressor, tree = fitted
    save_checkpoint(tmp_path / "tree.pt", tree.to_state())
    loaded = TreeEnsemble.from_state(load_checkpoint(tmp_path / "tree.pt"))  # torch.load(weights_only=True)
    x = np.random.default_rng(2).random((500, 4))
    np.testing.assert_array_equal(loaded.predict_features(x), tree.predict_features(x))
    assert loaded.features == tree.features


def test_a_file_that_is_not_a_tree_is_refused(fitted):
    from velocity.model.checkpoint import CheckpointError
    from velocity.model.trees import TreeEnsemble

    state = fitted[1].to_state()
    del state["threshold"]
    with pytest.raises(CheckpointError, match="not a tree ensemble: no 'threshold'"):
        TreeEnsemble.from_state(state)
    with pytest.raises(ValueError, match=r"expected an \(n, 4\) feature matrix"):
        fitted[1].predict_features(np.zeros((3, 5)))


def test_a_scikit_learn_whose_private_trees_differ_is_named_not_misread(fitted):
    """trees.py reads scikit-learn's private tree layout (no public API exists): a regressor without it
    is refused naming the installed version and the versions the flattening was checked on."""
    import copy
    import re
    from types import SimpleNamespace

    from numpy.lib import recfunctions

    from velocity.model.trees import SKLEARN_CHECKED, TreeEnsemble

    regressor = fitted[0]
    checked = re.escape(f"checked on ({SKLEARN_CHECKED})")
    moved = copy.copy(regressor)
    del moved._baseline_prediction
    with pytest.raises(ValueError, match=rf"scikit-learn [\d.]+\S* is not one .*{checked}: a fitted HistGradientBoostingRegressor has no '_baseline_prediction'"):
        TreeEnsemble.from_sklearn(moved, ("pitch", "duration", "dstart", "dprev"))
    renamed = [[SimpleNamespace(nodes=recfunctions.rename_fields(p.nodes, {"num_threshold": "threshold"}))] for (p,) in regressor._predictors]
    relaid = SimpleNamespace(n_trees_per_iteration_=1, _predictors=renamed, _baseline_prediction=regressor._baseline_prediction)
    with pytest.raises(ValueError, match=rf"{checked}: its tree nodes have no 'num_threshold'"):
        TreeEnsemble.from_sklearn(relaid, ("pitch", "duration", "dstart", "dprev"))


def test_the_network_weight_is_the_blend_with_least_absolute_error():
    from velocity.model.calibration import fit_network_weight

    rng = np.random.default_rng(0)
    network, tree = rng.normal(64, 10, 2000), rng.normal(64, 10, 2000)
    assert fit_network_weight(network, tree, 0.3 * network + 0.7 * tree) == pytest.approx(0.3)
    assert fit_network_weight(network, tree, network) == 1.0
    assert fit_network_weight(network, tree, tree) == 0.0


def test_the_score_model_plays_its_networks_blended_with_its_tree(trained_score_model):
    """`pianist` = the networks' `averaged` velocity and the tree's, weighted as calibration fitted,
    then stretched piece by piece; the tree reads the score's features, so it moves the result."""
    from velocity.model.decode import load_velocity_model
    from velocity.model.pieces import predict_notes

    model_path, _ = trained_score_model
    model = load_velocity_model(model_path)
    assert model.tree is not None and 0 <= model.calibration.network_weight <= 1
    del model.checkpoint["calibration_unmarked"]  # one calibration for every piece (the next test: two)
    notes = pd.read_parquet(model_path.parents[1] / "aligned/validation.parquet")
    averaged = predict_notes(model, notes, decoding="averaged")
    blended = model.calibration.network_weight * averaged + (1 - model.calibration.network_weight) * model.tree.predict(notes)
    piece_id = notes["piece_id"].to_numpy()
    expected = np.concatenate([model.calibration.apply(blended[piece_id == p]) for p in pd.unique(piece_id)])
    played = predict_notes(model, notes, decoding="pianist")
    np.testing.assert_array_equal(played, expected)
    networks_only = np.concatenate([model.calibration.apply(averaged[piece_id == p]) for p in pd.unique(piece_id)])
    assert not np.array_equal(played, networks_only)


def test_a_score_without_markings_plays_with_a_calibration_of_its_own(trained_score_model):
    """score_train fits a second blend and stretch on the validation scores read with one notated
    velocity; `pianist` plays a score without markings with it, a marked score with the first."""
    from velocity.model.calibration import Calibration
    from velocity.model.decode import load_velocity_model
    from velocity.model.pieces import predict_notes

    model_path, _ = trained_score_model
    model = load_velocity_model(model_path)
    assert model.unmarked_calibration is not None and 0 <= model.unmarked_calibration.network_weight <= 1
    # A calibration unlike the fitted one, so the test tells which of the two plays each piece.
    unmarked = Calibration(centre=50.0, between=2.0, within=1.5, network_weight=0.25)
    model.checkpoint["calibration_unmarked"] = asdict(unmarked)
    notes = pd.read_parquet(model_path.parents[1] / "aligned/validation.parquet")
    first, second = pd.unique(notes["piece_id"])[:2]
    notes = notes[notes["piece_id"].isin([first, second])].reset_index(drop=True)
    flat = notes["piece_id"].to_numpy() == second
    notes["notated_velocity"] = np.where(flat, 80, 40 + 10 * (notes["score_note"] // 16 % 5))  # the first piece marked p to f, the second not at all
    averaged = predict_notes(model, notes, decoding="averaged")
    tree = model.tree.predict(notes)
    played = predict_notes(model, notes, decoding="pianist")
    for rows, calibration in ((~flat, model.calibration), (flat, unmarked)):
        blended = calibration.network_weight * averaged[rows] + (1 - calibration.network_weight) * tree[rows]
        np.testing.assert_array_equal(played[rows], calibration.apply(blended))


def test_decodings_that_share_a_network_pass_give_what_each_gives_alone(trained_score_model):
    """evaluate decodes every decoding at once (`decode_notes`: one pass for `averaged` and
    `pianist`, one for an encoder's `median` and `notes-only`): each the same as decoded alone."""
    from velocity.model.decode import load_velocity_model
    from velocity.model.decodings import DECODINGS
    from velocity.model.pieces import decode_notes, predict_notes

    model_path, _ = trained_score_model
    model = load_velocity_model(model_path)
    notes = pd.read_parquet(model_path.parents[1] / "aligned/validation.parquet")
    together = decode_notes(model, notes, list(DECODINGS))
    for decoding in DECODINGS:
        np.testing.assert_array_equal(together[decoding], predict_notes(model, notes, decoding=decoding), err_msg=decoding)

def test_the_gbt_stage_fits_a_seeded_sample_of_at_most_max_train_notes():
    """`gbt.max_train_notes` caps the notes fitted (a seeded sample, each note's features read from
    its whole piece); unplayed notes (velocity -1) are never fitted; the same seed, the same tree."""
    from velocity.stages.gbt import GbtParams, fit_predict

    rng = np.random.default_rng(0)
    n = 600
    notes = pd.DataFrame({"piece_id": np.repeat(["a", "b"], n // 2), "pitch": rng.integers(40, 90, n),
                          "start": np.tile(np.arange(n // 2) * 0.25, 2), "duration": rng.uniform(0.1, 1.0, n),
                          "dstart": np.full(n, 0.25), "velocity": rng.integers(30, 100, n)})  # fmt: skip
    notes.loc[::7, "velocity"] = -1
    params = GbtParams(max_iter=5, max_train_notes=200, seed=0)
    predicted, report, tree = fit_predict(notes, {"validation": notes}, params)
    assert report["train_notes"] == n and report["fitted_notes"] == 200
    again = fit_predict(notes, {"validation": notes}, params)[0]
    np.testing.assert_array_equal(predicted["validation"], again["validation"])
    everything = fit_predict(notes, {}, GbtParams(max_iter=5, max_train_notes=n, seed=0))[1]
    assert everything["fitted_notes"] == (notes["velocity"] >= 0).sum()

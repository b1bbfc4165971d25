"""Every head at 1, 2 and 4 labelled images per class (issue 18): accurate, with sound probabilities."""
import numpy as np
import pytest
from sklearn.metrics import log_loss

from benchmarks.curve import defaults
from classify.heads import HEADS, RBF_MIN_TRAIN, PlattSVM
from classify.scaling import ModeratedScaler, variance_prior
from classify.select import fit_fixed

DIM = 512


def few_shot(n, k, seed=0, test=40, signal=0.45):
    """n train and `test` test images per class, 512-d: class means differ by `signal` noise standard deviations
    per feature, seen through features of very different scales (as a backbone's are). Like image features, each
    feature alone says little; all together separate the classes."""
    rng = np.random.default_rng(seed)
    means = signal * rng.normal(size=(k, DIM))
    scales = np.exp(0.5 * rng.normal(size=DIM))

    def draw(m):
        y = np.repeat(np.arange(k), m)
        return (means[y] + rng.normal(size=(len(y), DIM))) * scales, y
    return draw(n), draw(test)


def fit_default(head, X, y):
    """The head with the defaults that `benchmarks curve` fits at one image per class."""
    return fit_fixed(HEADS[head].make(), defaults(head, int(np.bincount(y).min())), X, y)


@pytest.mark.parametrize("k", [2, 20])
@pytest.mark.parametrize("n", [1, 2, 4])
@pytest.mark.parametrize("head", list(HEADS))
def test_heads_are_sound_at_a_few_images_per_class(head, n, k):
    (X, y), (Xt, yt) = few_shot(n, k, seed=n * 100 + k)
    model = fit_default(head, X, y)
    p = model.predict_proba(Xt)
    assert p.shape == (len(yt), k) and np.isfinite(p).all() and np.allclose(p.sum(axis=1), 1)
    acc = (model.predict(Xt) == yt).mean()
    assert acc > 1 / k + 0.5 * (1 - 1 / k), acc  # at least half-way from chance to perfect
    assert log_loss(yt, p, labels=range(k)) < np.log(k), head  # better than the uniform prior


def test_moderated_scaler_shrinks_at_few_images_and_standardises_at_many():
    rng = np.random.default_rng(0)
    sd = np.exp(rng.normal(size=300))
    few, many = rng.normal(size=(2, 300)) * sd, rng.normal(size=(5000, 300)) * sd
    s = ModeratedScaler().fit(few)
    assert s.scale_.min() > 0.3 * np.median(s.scale_)  # no feature's scale is a near-zero chance value
    np.testing.assert_allclose(ModeratedScaler().fit(many).scale_, many.std(axis=0), rtol=0.05)
    assert np.all(ModeratedScaler().fit(few[:1]).scale_ == 1)
    d0, s0 = variance_prior(np.full(50, 2.0), 10)  # no spread beyond sampling: the prior alone
    assert d0 == np.inf and s0 == pytest.approx(2.0, rel=0.15)


def test_svm_predicts_the_argmax_of_its_probabilities_with_one_temperature():
    (X, y), (Xt, _) = few_shot(4, 5, seed=3)
    svm = PlattSVM(kernel="linear", C=0.01).fit(X, y)
    p = svm.predict_proba(Xt)
    assert np.array_equal(svm.predict(Xt), svm.classes_[p.argmax(axis=1)])
    assert svm.beta_ > 0
    assert {g["kernel"] for g in HEADS["svm"].grid(RBF_MIN_TRAIN - 1)} == {"linear"}  # RBF only from more images
    assert {g["kernel"] for g in HEADS["svm"].grid(RBF_MIN_TRAIN)} == {"linear", "rbf"}
    binary = PlattSVM().fit(X[y < 2], y[y < 2])
    f = binary.svc_.decision_function(Xt)
    np.testing.assert_allclose(binary.predict_proba(Xt)[:, 1], 1 / (1 + np.exp(-2 * binary.beta_ * f)))

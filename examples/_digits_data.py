"""The handwritten digits data set that ships inside scikit-learn, split for training.

1797 images of 8x8 pixels (64 features, scaled to [0, 1]) and their labels
0-9. No download is needed. Not a model file: the digits examples import it.
"""

import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split


def digits(test_size=0.2, seed=0):
    """(X_train, X_test, y_train, y_test): features scaled to [0, 1], integer labels."""
    data = load_digits()
    X = data.data / 16.0
    return train_test_split(X, data.target, test_size=test_size, random_state=seed, stratify=data.target)


def one_hot(labels, classes=10):
    return np.eye(classes)[labels]


def minibatches(n, batch_size, rng):
    order = rng.permutation(n)
    for start in range(0, n, batch_size):
        yield order[start:start + batch_size]

"""Datasets for training: the packaged 8x8 digits, MNIST, Fashion-MNIST, and your own .npz or .csv files.

    >>> import backprop
    >>> data = backprop.data.load_digits()
    >>> data.x_train.shape, data.y_train.shape
    ((1437, 64), (1437,))

Host-side NumPy, one module per concern: :mod:`.dataset` (the ``Dataset`` and the checks of its arrays),
:mod:`.loading` (datasets by name, the packaged digits, feature rows for prediction), :mod:`.idx_files`
(MNIST's format), :mod:`.csv_files`, :mod:`.npz_files`, :mod:`.scaling`, :mod:`.splitting` (the one
stratified hold-out), :mod:`.downloads` and :mod:`.sequences` (the recurrent examples' data). This package
also holds the packaged data files.

``digits.npz``: how it was made
-------------------------------
The 1,797 8x8 images of handwritten digits from the UCI "Optical Recognition of
Handwritten Digits" data set (E. Alpaydin, C. Kaynak, 1998; CC BY 4.0), taken
from the copy scikit-learn ships as ``sklearn/datasets/data/digits.csv.gz``
(64 pixel columns with values 0..16, then the label). Stored with
``np.savez_compressed`` as:

* ``images``: uint8, shape (1797, 8, 8), values 0..16, in the CSV's row order;
* ``labels``: uint8, shape (1797,), values 0..9;
* ``train_index`` (1437) and ``test_index`` (360): uint16 row indices, sorted.

The split was drawn once and stored, so it never depends on a NumPy version: a
stratified 20% test part, 360 rows shared among the classes by largest
remainder (35 to 37 per class). One generator, ``np.random.default_rng(20240607)``,
permuted each class's row indices in turn (classes 0 to 9) and the first rows
of each permutation became test rows; every other row is a training row.
scikit-learn was used only to read that CSV once; it is not a dependency.
"""

from .csv_files import load_csv
from .dataset import MAX_CLASSES, Dataset, one_hot, validate_features, validate_labels
from .idx_files import load_fashion_mnist, load_mnist, read_idx, write_idx
from .loading import load_dataset, load_digits, load_features
from .npz_files import load_npz
from .scaling import apply_scaler, fit_scaler
from .splitting import split_validation

__all__ = [
    "MAX_CLASSES", "Dataset", "apply_scaler", "fit_scaler", "load_csv", "load_dataset", "load_digits",
    "load_fashion_mnist", "load_features", "load_mnist", "load_npz", "one_hot", "read_idx", "split_validation",
    "validate_features", "validate_labels", "write_idx",
]

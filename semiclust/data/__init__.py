"""The data layer. Importing it registers every built-in dataset in `DATASETS` (the generated ones in
datasets.py, the array files in arrays.py, the image folders and lists in folders.py, the unlabeled pool in
pool.py), so that any use of a data module finds them all."""
from semiclust.data import arrays, datasets, folders, pool  # noqa: F401  (registration)

"""On-disk array datasets read into memory: CIFAR-10/100, STL-10, SVHN, MNIST, Fashion-MNIST, KMNIST."""
from __future__ import annotations

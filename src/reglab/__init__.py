"""reglab: CIFAR-10 classifiers with regularization really applied, measured and chosen well."""

__version__ = "0.1.0"

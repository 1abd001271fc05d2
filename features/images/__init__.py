"""Image data without torchvision: readers, transforms, corruptions and dataset entry points.

- :mod:`features.images.datasets`: ``load_image_dataset``, ``load_corrupted``, ``num_classes``
  (what the training and evaluation jobs call).
- :mod:`features.images.cifar`: CIFAR-10/100 python-version files via a restricted unpickler.
- :mod:`features.images.imagenet`: folder-per-class ImageNet decoded with Pillow.
- :mod:`features.images.digits`: scikit-learn's bundled digits, the built-in default.
- :mod:`features.images.corruptions`: CIFAR-C / ImageNet-C style corruptions, 5 severities.
- :mod:`features.images.corrupted`: readers for the official CIFAR-C and ImageNet-C releases.
- :mod:`features.images.transforms`: numpy / Pillow augmentation and normalisation.
"""

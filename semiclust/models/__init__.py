"""Models: backbones (timm's factory, and semiclust's small-image networks), heads, the network, init, exports.

Importing this package registers semiclust's own backbones (`tinyconv`, `resnet18_cifar`, `resnet34_cifar`)
with timm, as `import timm` registers timm's: `import semiclust.models` is all a timm user needs before
`timm.create_model('tinyconv', ...)`.
"""
from semiclust.models import backbones  # noqa: F401  (registers the small-image backbones with timm)

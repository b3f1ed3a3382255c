"""A frozen classifier: the fixed judge that guides GAN training and that every explanation explains."""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["FrozenClassifier", "class_log_probabilities", "class_probabilities", "floating", "freeze"]


def freeze(module: nn.Module) -> nn.Module:
    """Eval mode and no weight gradients, in place; returns the module. A fixed network must never change, nor
    depend on the batch through BatchNorm statistics (the official medXGAN demo left the generator in training mode)."""
    return module.requires_grad_(False).eval()


def floating(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` in float32, or unchanged when it is float64: half-precision outputs (autocast) and integer images are
    widened, and double precision is kept, so an explanation can run in float64 where float32 rounding matters (the
    batch-independence check compares batches with single calls there)."""
    return tensor.to(torch.promote_types(tensor.dtype, torch.float32))


def class_probabilities(logits: torch.Tensor) -> torch.Tensor:
    """(B, 2) class probabilities from binary-classifier logits: softmax of (B, 2), or [1 - s, s] with s the sigmoid
    of a single logit (B, 1)."""
    logits = floating(logits)
    if logits.shape[1] == 1:
        positive = torch.sigmoid(logits)
        return torch.cat([1 - positive, positive], dim=1)
    return torch.softmax(logits, dim=1)


def class_log_probabilities(logits: torch.Tensor) -> torch.Tensor:
    """(B, 2) log class probabilities, computed from the logits so they keep their gradient where a probability
    saturates at 0 or 1 (``log(1 - p)`` from a rounded p does not): log-softmax of (B, 2), or
    [log sigmoid(-z), log sigmoid(z)] of a single logit z (B, 1)."""
    logits = floating(logits)
    if logits.shape[1] == 1:
        return torch.cat([F.logsigmoid(-logits), F.logsigmoid(logits)], dim=1)
    return torch.log_softmax(logits, dim=1)


class FrozenClassifier(nn.Module):
    """Wrap a trained classifier so that it stays in eval mode and its weights never receive gradients.

    Gradients still flow *through* it to its input, which is what GAN training and gradient explanations need.
    ``features(x)`` returns the input of the last ``nn.Linear`` layer (the penultimate features), used for Frechet
    distances in the classifier's feature space.

    Args:
        network: the classifier; it must return logits of shape (batch, 2) (or (batch, 1) for a single logit).
        checkpoint: optional path of a ``state_dict`` (loaded with ``weights_only=True``).
        key_in_checkpoint: key of the state dict inside the checkpoint, if nested.

    Example::

        classifier = FrozenClassifier(DenseNet(2, 1, 2, block_config=(4, 8, 8)), "bundle/models/model.pt")
        p_lesion = classifier.probability(images)
    """

    def __init__(
        self,
        network: nn.Module,
        checkpoint: str | os.PathLike | None = None,
        key_in_checkpoint: str | None = None,
        map_location: str | torch.device = "cpu",
    ) -> None:
        super().__init__()
        if checkpoint is not None:
            state = torch.load(checkpoint, map_location=map_location, weights_only=True)
            network.load_state_dict(state[key_in_checkpoint] if key_in_checkpoint else state)
        self.network = freeze(network)
        linears = [m for m in self.network.modules() if isinstance(m, nn.Linear)]
        self._feature_layer = linears[-1] if linears else None

    @classmethod
    def wrap(cls, classifier: nn.Module) -> FrozenClassifier:
        """``classifier`` itself when it is already a :class:`FrozenClassifier`, else a new wrapper around it."""
        return classifier if isinstance(classifier, cls) else cls(classifier)

    def train(self, mode: bool = True) -> FrozenClassifier:
        # the classifier is a fixed judge: BatchNorm/Dropout must never switch to training behaviour
        super().train(False)
        return self

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.network(images)

    def probability(self, images: torch.Tensor) -> torch.Tensor:
        """P(positive class) per image."""
        return class_probabilities(self.network(images))[:, 1]

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Penultimate features (the input of the last linear layer), flattened per image."""
        if self._feature_layer is None:
            raise ValueError("FrozenClassifier.features: the network has no nn.Linear layer to read features from")
        captured: list[torch.Tensor] = []
        hook = self._feature_layer.register_forward_pre_hook(lambda _m, args: captured.append(args[0]))
        try:
            self.network(images)
        finally:
            hook.remove()
        return captured[0].flatten(1)

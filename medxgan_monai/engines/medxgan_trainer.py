"""The classifier-guided GAN trainer of medXGAN, as a MONAI/Ignite engine."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from monai.engines import Trainer
from monai.engines.utils import default_prepare_batch
from monai.utils import StrEnum, min_version, optional_import
from torch import nn
from torch.optim import Optimizer

from medxgan_monai.networks.classifier import FrozenClassifier, freeze

if TYPE_CHECKING:
    from ignite.engine import Engine
    from ignite.metrics import Metric
else:
    Engine, _ = optional_import("ignite.engine", "0.4.11", min_version, "Engine")
    Metric, _ = optional_import("ignite.metrics", "0.4.11", min_version, "Metric")

__all__ = [
    "MedXGANKeys",
    "MedXGANTrainer",
    "discriminator_loss",
    "ema_copy",
    "unwrap_parallel",
    "generator_adversarial_loss",
    "output_averages",
]


class MedXGANKeys(StrEnum):
    """Keys of the trainer's per-iteration output."""

    D_LOSS = "d_loss"
    D_R1 = "d_r1"
    G_LOSS = "g_loss"
    G_ADV = "g_adversarial"
    G_CLS = "g_classifier"
    G_MINIMAL = "g_minimal_change"
    E_LOSS = "e_loss"
    E_PIXEL = "e_pixel"
    E_CLS = "e_classifier"
    E_LATENT = "e_latent"
    E_NEGATIVE = "e_negative_code"
    E_COUNTERFACTUAL = "e_counterfactual"


GAN_KEYS = (MedXGANKeys.D_LOSS, MedXGANKeys.G_LOSS, MedXGANKeys.G_ADV, MedXGANKeys.G_CLS, MedXGANKeys.G_MINIMAL)
ENCODER_KEYS = (
    MedXGANKeys.E_LOSS,
    MedXGANKeys.E_PIXEL,
    MedXGANKeys.E_CLS,
    MedXGANKeys.E_LATENT,
    MedXGANKeys.E_NEGATIVE,
    MedXGANKeys.E_COUNTERFACTUAL,
)


def discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor, kind: str = "hinge") -> torch.Tensor:
    """Hinge (Lim and Ye 2017) or logistic (the paper's BCE) discriminator loss on logits."""
    if kind == "hinge":
        return F.relu(1 - real_logits).mean() + F.relu(1 + fake_logits).mean()
    if kind == "bce":
        return F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()
    raise ValueError(f"adversarial loss must be 'hinge' or 'bce', not {kind!r}")


def generator_adversarial_loss(fake_logits: torch.Tensor, kind: str = "hinge") -> torch.Tensor:
    """Generator side of :func:`discriminator_loss` (non-saturating for ``bce``)."""
    if kind == "hinge":
        return -fake_logits.mean()
    if kind == "bce":
        return F.softplus(-fake_logits).mean()
    raise ValueError(f"adversarial loss must be 'hinge' or 'bce', not {kind!r}")


class MedXGANTrainer(Trainer):
    """Train G(z_a, z_p), D and optionally the encoder E against a frozen classifier C (Dravid et al. 2022).

    Each iteration, for a batch of ``m`` real images with labels:

        1. Discriminator: ``m`` fakes from random codes with uniformly drawn classes (z_p = 0 for class 0); minimise
           the adversarial loss on reals vs fakes, plus ``r1_gamma / 2 * ||grad D(real)||^2`` when ``r1_gamma > 0``.
        2. Generator: ``m`` fakes with the real batch's classes; minimise the adversarial loss plus
           ``lambda_classifier * CE(C(G(z_a, z_p)), class)``, so that C(G(z_a, 0)) is negative and C(G(z_a, z_p))
           positive. C stays in eval mode and its weights get no gradient. With ``lambda_minimal_change > 0`` each
           positive sample x+ = G(z_a, z_p) is also generated as its negative realisation x0 = G(z_a, 0) in the same
           batch, and ``lambda_minimal_change * mean|x+ - x0|`` is added, so the pathology code changes only what it
           must (beyond the paper, which relies on the sampling scheme alone; see the bundle docs).
        3. ``g_ema`` (a copy of G) follows G with exponential moving average ``ema_decay`` (0 copies G), warmed up
           as ``min(ema_decay, (1 + t) / (10 + t))`` at iteration ``t``.
        4. Encoder (when given): invert the real batch through ``g_ema``; minimise ``lambda_pixel * L1`` plus
           ``lambda_classifier_match * KL(C(x) || C(G(E(x))))``, plus ``lambda_latent * MSE(E(G(z)), z)`` on generated
           samples (latent cycle), plus ``lambda_negative_code * ||z_p||^2`` on real negatives, plus
           ``lambda_counterfactual * BCE(C(G(E(x)_a, 0)), 0)`` on real images the classifier calls positive (beyond
           the paper: the anatomy code must not carry what the classifier sees, so G(E(x)_a, 0) is a valid
           counterfactual).

    The output of each iteration is a dict of floats keyed by :class:`MedXGANKeys`.

    Args:
        device: where to train.
        max_epochs: epochs to run.
        train_data_loader: yields dicts with ``image`` and ``label`` (0/1).
        g_network, g_optimizer: generator and its optimizer (G must provide ``sample_codes(labels)``).
        d_network, d_optimizer: discriminator and its optimizer; D is called as ``D(images, labels)`` when it has
            ``num_classes > 0`` (class projection), else as ``D(images)``.
        classifier: the trained classifier, wrapped in :class:`FrozenClassifier` if it is not already.
        e_network, e_optimizer: optional encoder and its optimizer.
        g_ema: optional prepared EMA copy of G (for resume); a copy of ``g_network`` otherwise.
        adversarial_loss: ``"hinge"`` or ``"bce"`` (the paper).
        encoder_start_epoch: first epoch (1-based) in which the encoder trains; before it the encoder losses are
            reported as NaN. Training E after G has settled is cheaper than training both from the start.
        gan_stop_epoch: first epoch in which G and D are frozen (only E trains, against a fixed G); ``None`` trains
            G and D in every epoch. Their losses are reported as NaN once frozen.
        amp: mixed precision (CUDA only; ignored on CPU).

    Example::

        trainer = MedXGANTrainer(device, 10, loader, g, g_opt, d, d_opt, classifier, e_network=e, e_optimizer=e_opt)
        trainer.run()
    """

    def __init__(
        self,
        device: torch.device | str,
        max_epochs: int,
        train_data_loader: Iterable,
        g_network: nn.Module,
        g_optimizer: Optimizer,
        d_network: nn.Module,
        d_optimizer: Optimizer,
        classifier: nn.Module,
        e_network: nn.Module | None = None,
        e_optimizer: Optimizer | None = None,
        g_ema: nn.Module | None = None,
        lambda_classifier: float = 2.0,
        lambda_minimal_change: float = 0.0,
        adversarial_loss: str = "hinge",
        r1_gamma: float = 0.0,
        ema_decay: float = 0.999,
        lambda_pixel: float = 10.0,
        lambda_classifier_match: float = 1.0,
        lambda_latent: float = 1.0,
        lambda_negative_code: float = 0.0,
        lambda_counterfactual: float = 0.0,
        encoder_start_epoch: int = 1,
        gan_stop_epoch: int | None = None,
        epoch_length: int | None = None,
        non_blocking: bool = False,
        prepare_batch: Callable = default_prepare_batch,
        key_train_metric: dict[str, Metric] | None = None,
        additional_metrics: dict[str, Metric] | None = None,
        metric_cmp_fn: Callable | None = None,
        train_handlers: Sequence | None = None,
        amp: bool = False,
    ) -> None:
        kwargs: dict[str, Any] = {} if metric_cmp_fn is None else {"metric_cmp_fn": metric_cmp_fn}
        device = torch.device(device)
        super().__init__(
            device=device,
            max_epochs=max_epochs,
            data_loader=train_data_loader,
            epoch_length=epoch_length,
            non_blocking=non_blocking,
            prepare_batch=prepare_batch,
            key_metric=key_train_metric,
            additional_metrics=additional_metrics,
            handlers=train_handlers,
            amp=amp and device.type == "cuda",
            decollate=False,
            **kwargs,
        )
        if (e_network is None) != (e_optimizer is None):
            raise ValueError("MedXGANTrainer: give both e_network and e_optimizer, or neither")
        if not 0.0 <= ema_decay < 1.0:
            raise ValueError(f"MedXGANTrainer: ema_decay must be in [0, 1), not {ema_decay}")
        self.g_network, self.g_optimizer = g_network, g_optimizer
        self.d_network, self.d_optimizer = d_network, d_optimizer
        self.e_network, self.e_optimizer = e_network, e_optimizer
        self.classifier = FrozenClassifier.wrap(classifier)
        self.g_ema = ema_copy(unwrap_parallel(g_network)) if g_ema is None else freeze(g_ema)
        # under DistributedDataParallel each wrapped network may run one forward pass per backward pass
        self.distributed = isinstance(d_network, nn.parallel.DistributedDataParallel)
        if self.distributed and r1_gamma > 0:
            raise ValueError("MedXGANTrainer: R1 (a double backward) is not supported under DistributedDataParallel")
        self.lambda_classifier = lambda_classifier
        self.lambda_minimal_change = lambda_minimal_change
        self.adversarial_loss = adversarial_loss
        self.r1_gamma = r1_gamma
        self.ema_decay = ema_decay
        self.lambda_pixel = lambda_pixel
        self.lambda_classifier_match = lambda_classifier_match
        self.lambda_latent = lambda_latent
        self.lambda_negative_code = lambda_negative_code
        self.lambda_counterfactual = lambda_counterfactual
        self.encoder_start_epoch = encoder_start_epoch
        self.gan_stop_epoch = gan_stop_epoch
        self.conditional_d = getattr(unwrap_parallel(d_network), "num_classes", 0) > 0
        self.scalers = {
            name: torch.amp.GradScaler("cuda", enabled=self.amp) for name in ("generator", "discriminator", "encoder")
        }

    def _discriminate(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.d_network(images, labels) if self.conditional_d else self.d_network(images)

    def _autocast(self):
        return torch.autocast(device_type=self.state.device.type, enabled=self.amp)

    def _step(self, name: str, loss: torch.Tensor, optimizer: Optimizer) -> None:
        scaler = self.scalers[name]
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    def _iteration(self, engine: Engine, batchdata: dict[str, torch.Tensor]) -> dict[str, float]:
        images, labels = engine.prepare_batch(batchdata, engine.state.device, engine.non_blocking)
        labels = labels.reshape(-1).long()
        epoch = engine.state.epoch
        if self.gan_stop_epoch is None or epoch < self.gan_stop_epoch:
            output = self._gan_steps(images, labels)
        else:
            output = {key: float("nan") for key in GAN_KEYS}

        # 4. encoder: invert reals through the EMA generator
        if self.e_network is not None:
            if epoch >= self.encoder_start_epoch:
                output.update(self._encoder_step(images, labels))
            else:
                output.update({key: float("nan") for key in ENCODER_KEYS})
        return output

    def _gan_steps(self, images: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
        """Steps 1-3 of the class docstring: discriminator, generator, moving average."""
        batch_size = images.shape[0]
        output: dict[str, float] = {}

        # 1. discriminator: reals vs fakes of uniformly drawn classes
        self.d_network.train()
        fake_labels = torch.randint(0, 2, (batch_size,), device=images.device)
        with torch.no_grad(), self._autocast():
            fakes = self.g_network(*unwrap_parallel(self.g_network).sample_codes(fake_labels))
        self.d_optimizer.zero_grad(set_to_none=True)
        real_input = images.detach().requires_grad_(self.r1_gamma > 0)
        with self._autocast():
            if self.distributed:
                logits = self._discriminate(torch.cat([real_input, fakes]), torch.cat([labels, fake_labels]))
                real_logits, fake_logits = logits[:batch_size], logits[batch_size:]
            else:
                real_logits, fake_logits = (
                    self._discriminate(real_input, labels),
                    self._discriminate(fakes, fake_labels),
                )
            d_loss = discriminator_loss(real_logits, fake_logits, self.adversarial_loss)
        if self.r1_gamma > 0:
            (gradients,) = torch.autograd.grad(real_logits.float().sum(), real_input, create_graph=True)
            r1 = gradients.pow(2).flatten(1).sum(1).mean()
            d_loss = d_loss + 0.5 * self.r1_gamma * r1
            output[MedXGANKeys.D_R1] = r1.item()
        self._step("discriminator", d_loss, self.d_optimizer)
        output[MedXGANKeys.D_LOSS] = d_loss.item()

        # 2. generator: adversarial + frozen-classifier guidance, with the classes of the real batch
        self.g_network.train()
        self.g_optimizer.zero_grad(set_to_none=True)
        z_a, z_p = unwrap_parallel(self.g_network).sample_codes(labels)
        positives = labels == 1
        paired = self.lambda_minimal_change > 0 and bool(positives.any())
        if paired:
            # one forward pass for the samples and their negative realisations: BatchNorm sees a single batch
            z_a = torch.cat([z_a, z_a[positives]])
            z_p = torch.cat([z_p, torch.zeros_like(z_p[positives])])
        with self._autocast():
            generated = self.g_network(z_a, z_p)
            fakes = generated[:batch_size]
            adversarial = generator_adversarial_loss(self._discriminate(fakes, labels), self.adversarial_loss)
            guidance = F.cross_entropy(self.classifier(fakes).float(), labels)
            g_loss = adversarial + self.lambda_classifier * guidance
            minimal = (fakes[positives] - generated[batch_size:]).float().abs().mean() if paired else None
            if minimal is not None:
                g_loss = g_loss + self.lambda_minimal_change * minimal
        self._step("generator", g_loss, self.g_optimizer)
        output.update({MedXGANKeys.G_LOSS: g_loss.item(), MedXGANKeys.G_ADV: adversarial.item()})
        output[MedXGANKeys.G_CLS] = guidance.item()
        output[MedXGANKeys.G_MINIMAL] = float("nan") if minimal is None else minimal.item()

        # 3. moving average of G, the copy used for inversion and explanation
        self._update_ema()
        return output

    @torch.no_grad()
    def _update_ema(self) -> None:
        # warm-up: early on the average would be dominated by the random initialisation
        step = self.state.iteration
        decay = min(self.ema_decay, (1.0 + step) / (10.0 + step))
        for ema_param, param in zip(self.g_ema.parameters(), self.g_network.parameters(), strict=True):
            ema_param.lerp_(param.detach(), 1.0 - decay)
        for ema_buffer, buffer in zip(self.g_ema.buffers(), self.g_network.buffers(), strict=True):
            ema_buffer.copy_(buffer)

    def _encode(self, images: torch.Tensor, samples: torch.Tensor):
        """Codes of the real batch and of generated samples; under DistributedDataParallel in one forward pass."""
        if isinstance(self.e_network, nn.parallel.DistributedDataParallel):
            codes_a, codes_p = self.e_network(torch.cat([images, samples]))
            count = images.shape[0]
            return (codes_a[:count], codes_p[:count]), (codes_a[count:], codes_p[count:])
        return self.e_network(images), self.e_network(samples)

    def _encoder_step(self, images: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
        self.e_network.train()
        self.e_optimizer.zero_grad(set_to_none=True)
        with self._autocast():
            sample_labels = torch.randint(0, 2, (images.shape[0],), device=images.device)
            with torch.no_grad():
                code_a, code_p = self.g_ema.sample_codes(sample_labels)
                samples = self.g_ema(code_a, code_p)
            (z_a, z_p), (cycle_a, cycle_p) = self._encode(images, samples)
            reconstruction = self.g_ema(z_a, z_p)
            pixel = F.l1_loss(reconstruction.float(), images.float())
            with torch.no_grad():
                target = torch.softmax(self.classifier(images).float(), dim=1)
            matched = F.kl_div(
                torch.log_softmax(self.classifier(reconstruction).float(), dim=1), target, reduction="batchmean"
            )
            latent = F.mse_loss(cycle_a.float(), code_a) + F.mse_loss(cycle_p.float(), code_p)
            negatives = labels == 0
            negative_code = z_p[negatives].float().pow(2).mean() if negatives.any() else z_p.sum() * 0.0
            e_loss = (
                self.lambda_pixel * pixel
                + self.lambda_classifier_match * matched
                + self.lambda_latent * latent
                + self.lambda_negative_code * negative_code
            )
            counterfactual = torch.tensor(float("nan"))
            if self.lambda_counterfactual > 0:
                called_positive = target[:, 1] >= 0.5
                counterfactual = z_a.sum() * 0.0
                if called_positive.any():
                    anatomy = z_a[called_positive]
                    logits = self.classifier(self.g_ema(anatomy, torch.zeros_like(z_p[called_positive]))).float()
                    # -log P(negative) of the counterfactual
                    counterfactual = -torch.log_softmax(logits, dim=1)[:, 0].mean()
                e_loss = e_loss + self.lambda_counterfactual * counterfactual
        self._step("encoder", e_loss, self.e_optimizer)
        return {
            MedXGANKeys.E_LOSS: e_loss.item(),
            MedXGANKeys.E_PIXEL: pixel.item(),
            MedXGANKeys.E_CLS: matched.item(),
            MedXGANKeys.E_LATENT: latent.item(),
            MedXGANKeys.E_NEGATIVE: negative_code.item(),
            MedXGANKeys.E_COUNTERFACTUAL: counterfactual.item(),
        }


def unwrap_parallel(network: nn.Module) -> nn.Module:
    """The network inside a ``DistributedDataParallel`` or ``DataParallel`` wrapper (the network itself otherwise)."""
    parallel = (nn.parallel.DistributedDataParallel, nn.DataParallel)
    return network.module if isinstance(network, parallel) else network


def ema_copy(network: nn.Module) -> nn.Module:
    """A frozen copy of ``network`` in eval mode, to be updated by :class:`MedXGANTrainer` as a moving average."""
    return freeze(copy.deepcopy(network))


def output_averages(keys: Sequence[str]) -> dict[str, Metric]:
    """Ignite ``Average`` metrics of the named entries of the trainer output, for per-epoch logging.

    Example (config)::

        "train#additional_metrics": "$medxgan_monai.engines.output_averages(['d_loss', 'g_loss'])"
    """
    from ignite.metrics import Average

    return {key: Average(output_transform=lambda output, key=key: output[key]) for key in keys}

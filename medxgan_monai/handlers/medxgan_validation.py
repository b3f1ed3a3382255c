"""Validation of a medXGAN generator (and encoder) against the frozen classifier, as an Ignite handler."""

from __future__ import annotations

import logging
from collections.abc import Iterable

import torch
from monai.metrics import FIDMetric, PSNRMetric, SSIMMetric
from torch import nn

from medxgan_monai.handlers._ignite import Engine, Events
from medxgan_monai.networks.classifier import FrozenClassifier

__all__ = ["MedXGANValidator"]

logger = logging.getLogger(__name__)


class MedXGANValidator:
    """Measure a generator G(z_a, z_p) and encoder E against a frozen classifier C; store results in engine metrics.

    Metrics (names are prefixed with ``prefix``):

    * ``cf_validity_negative``: fraction of random anatomies z_a with C(G(z_a, 0)) negative (p < 0.5);
    * ``cf_validity_positive``: fraction with C(G(z_a, z_p)) positive for z_p ~ N(0, I); ``cf_validity``: both;
      the paper's disentanglement check, over ``num_samples`` fixed codes;
    * ``anatomy_ssim``: SSIM between G(z_a, z_p) and G(z_a, 0) (how much anatomy the pathology code leaves intact);
    * ``fd_negative`` / ``fd_positive``: Frechet distance between real and generated images of each class in C's
      penultimate feature space (an FID with the classifier as the feature network; biased upwards with few images);
    * with an encoder: ``inversion_psnr`` (dB, images in [0, 1]) and ``inversion_probability_gap``
      (mean |C(G(E(x))) - C(x)|) on held-out real images; over the real positives x: ``inversion_flip_rate``, the
      fraction with C(G(E(x)_a, 0)) negative, ``inversion_positive_kept``, the fraction whose reconstruction
      C(G(E(x))) is still positive, and ``inversion_valid_flip_rate``, both at once (a flip only means something when
      the reconstruction was positive).

    Example (config)::

        {"_target_": "medxgan_monai.handlers.MedXGANValidator", "classifier": "@classifier",
         "generator": "@g_ema", "encoder": "@encoder", "val_data_loader": "@validate#dataloader"}
    """

    def __init__(
        self,
        classifier: nn.Module,
        generator: nn.Module,
        val_data_loader: Iterable,
        encoder: nn.Module | None = None,
        num_samples: int = 1000,
        batch_size: int = 100,
        interval: int = 1,
        seed: int = 0,
        prefix: str = "val_",
        device: torch.device | str | None = None,
    ) -> None:
        self.classifier = FrozenClassifier.wrap(classifier)
        self.generator = generator
        self.encoder = encoder
        self.val_data_loader = val_data_loader
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.interval = interval
        self.seed = seed
        self.prefix = prefix
        self.device = device

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED(every=self.interval), self)

    def __call__(self, engine: Engine) -> None:
        metrics = self.compute(engine.state.device if self.device is None else self.device)
        engine.state.metrics.update(metrics)
        logger.info("epoch %d medXGAN validation: %s", engine.state.epoch, _format(metrics))

    @torch.no_grad()
    def compute(self, device: torch.device | str = "cpu") -> dict[str, float]:
        device = torch.device(device)
        modes = [(m, m.training) for m in (self.generator, self.encoder) if m is not None]
        for module, _ in modes:
            module.eval()
        try:
            generated = self._generated(device)
            real = self._real(device)
        finally:
            for module, mode in modes:
                module.train(mode)
        fid = FIDMetric()
        metrics = {
            "cf_validity_negative": generated["negative_ok"],
            "cf_validity_positive": generated["positive_ok"],
            "cf_validity": generated["both_ok"],
            "anatomy_ssim": generated["ssim"],
        }
        for name, index in (("negative", 0), ("positive", 1)):
            if len(real["features"][index]) > 1:
                metrics[f"fd_{name}"] = float(fid(generated["features"][index], real["features"][index]))
        metrics.update(real["inversion"])
        return {f"{self.prefix}{key}": float(value) for key, value in metrics.items()}

    def _generated(self, device: torch.device) -> dict:
        rng = torch.Generator(device="cpu").manual_seed(self.seed)
        ssim = SSIMMetric(spatial_dims=self.generator.spatial_dims, data_range=1.0)
        negative_ok, positive_ok, both_ok, ssim_values = [], [], [], []
        features: list[list[torch.Tensor]] = [[], []]
        for start in range(0, self.num_samples, self.batch_size):
            n = min(self.batch_size, self.num_samples - start)
            z_a = torch.randn(n, self.generator.anatomy_dim, generator=rng).to(device)
            z_p = torch.randn(n, self.generator.pathology_dim, generator=rng).to(device)
            negative = self.generator(z_a, torch.zeros_like(z_p))
            positive = self.generator(z_a, z_p)
            p_negative = self.classifier.probability(negative)
            p_positive = self.classifier.probability(positive)
            negative_ok.append(p_negative < 0.5)
            positive_ok.append(p_positive >= 0.5)
            both_ok.append((p_negative < 0.5) & (p_positive >= 0.5))
            ssim_values.append(ssim(positive.float(), negative.float()).reshape(-1))
            features[0].append(self.classifier.features(negative).float().cpu())
            features[1].append(self.classifier.features(positive).float().cpu())
        return {
            "negative_ok": torch.cat(negative_ok).float().mean().item(),
            "positive_ok": torch.cat(positive_ok).float().mean().item(),
            "both_ok": torch.cat(both_ok).float().mean().item(),
            "ssim": torch.cat(ssim_values).mean().item(),
            "features": [torch.cat(f) for f in features],
        }

    def _real(self, device: torch.device) -> dict:
        psnr = PSNRMetric(max_val=1.0)
        features: list[list[torch.Tensor]] = [[], []]
        psnr_values, gaps, flips, kept = [], [], [], []
        for batch in self.val_data_loader:
            images = batch["image"].to(device).float()
            labels = torch.as_tensor(batch["label"]).reshape(-1).to(device)
            image_features = self.classifier.features(images).float().cpu()
            for index in (0, 1):
                features[index].append(image_features[(labels == index).cpu()])
            if self.encoder is None:
                continue
            z_a, z_p = self.encoder(images)
            reconstruction = self.generator(z_a, z_p)
            psnr_values.append(psnr(reconstruction.float(), images).reshape(-1))
            gaps.append((self.classifier.probability(reconstruction) - self.classifier.probability(images)).abs())
            positives = labels == 1
            if positives.any():
                counterfactual = self.generator(z_a[positives], torch.zeros_like(z_p[positives]))
                flips.append(self.classifier.probability(counterfactual) < 0.5)
                kept.append(self.classifier.probability(reconstruction[positives]) >= 0.5)
        inversion = {}
        if psnr_values:
            inversion["inversion_psnr"] = torch.cat(psnr_values).mean().item()
            inversion["inversion_probability_gap"] = torch.cat(gaps).mean().item()
        if flips:
            flipped, positive_kept = torch.cat(flips), torch.cat(kept)
            inversion["inversion_flip_rate"] = flipped.float().mean().item()
            inversion["inversion_positive_kept"] = positive_kept.float().mean().item()
            inversion["inversion_valid_flip_rate"] = (flipped & positive_kept).float().mean().item()
        return {"features": [torch.cat(f) if f else torch.empty(0) for f in features], "inversion": inversion}


def _format(metrics: dict[str, float]) -> str:
    return " ".join(f"{key}: {value:.4f}" for key, value in metrics.items())

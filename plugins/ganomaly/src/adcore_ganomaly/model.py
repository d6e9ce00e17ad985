"""GANomaly (Akcay, Atapour-Abarghouei and Breckon, ACCV 2018), step by step as in the paper.

GANomaly learns, from normal images only, to compress an image into a latent code and to find
that same code again in its own reconstruction. An anomalous image was never seen: its
reconstruction looks normal, so the code of the reconstruction drifts away from the image's.

1. **Generator G = (G_E, G_D).** The encoder ``G_E`` is a DCGAN discriminator body: a strided
   4x4 convolution to ``n_features`` channels and LeakyReLU(0.2), ``extra_layers`` 3x3
   convolutions, then strided 4x4 convolutions with batch norm and LeakyReLU that halve the
   size and double the channels until the map is 4x4, and a final 4x4 convolution to the
   latent code ``z`` of ``latent_vec_size`` values. The decoder ``G_D`` mirrors it with
   transposed convolutions, batch norm and ReLU, and ends in ``tanh``: ``x_hat = G_D(z)``.
   Images are scaled to [-1, 1] (mean = std = 0.5) to match ``tanh``.
2. **Second encoder E.** The same architecture as ``G_E`` (its own weights) encodes the
   reconstruction: ``z_hat = E(x_hat)``.
3. **Discriminator D.** Again the encoder's architecture, with a one-value output and a
   sigmoid: real (an image) or fake (a reconstruction). Its last hidden feature map ``f(.)``
   serves the generator's adversarial loss.
4. **Generator loss** (the paper's Eq. 4), with its weights ``wadv = 1``, ``wcon = 50``,
   ``wenc = 1``::

       L_adv = mean (f(x) - f(x_hat))^2       feature matching through D
       L_con = mean |x - x_hat|               contextual (L1) loss
       L_enc = mean (z - z_hat)^2             encoder loss in latent space
       L_G   = wadv * L_adv + wcon * L_con + wenc * L_enc

5. **Discriminator loss.** Binary cross entropy of D on real images (label 1) and detached
   reconstructions (label 0), averaged, as in the reference implementation.
6. **Training.** Two Adam optimizers (lr 2e-4, betas (0.5, 0.999)) step alternately in every
   training step: the generator (G_E, G_D and E) on ``L_G``, then the discriminator on its
   BCE. When the discriminator's loss collapses below 1e-5 it has won outright and gives the
   generator no useful signal: its weights are drawn afresh (the reference implementation's
   ``reinit_d``).
7. **Score.** The anomaly score of an image is its latent distance
   ``A(x) = mean_k (z_k - z_hat_k)^2``. GANomaly scores whole images: there is no anomaly map.
"""

from __future__ import annotations

import attrs
import torch
import torch.nn.functional as F
from adcore import (
    AnomalyDetector,
    Batch,
    Budget,
    DetectorOutput,
    InputSpec,
    Optimization,
    Stage,
    TrainingSpec,
    non_negative,
    positive,
    to_bool,
    to_size,
    unit_interval,
)
from torch import nn

#: The reference implementation draws the discriminator afresh when its loss falls below this.
DISCRIMINATOR_RESET_BELOW = 1e-5


def _square_power_of_two(instance, attribute, value: tuple[int, int]) -> None:
    height, width = value
    if height != width or height < 16 or height & (height - 1):
        raise ValueError(
            f"{attribute.name} must be square with a side that is a power of two >= 16 "
            f"(the encoder halves the image down to 4x4), got {height}x{width}"
        )


@attrs.define
class GanomalyConfig:
    image_size: tuple[int, int] = attrs.field(default=(32, 32), converter=to_size, validator=_square_power_of_two)
    n_features: int = attrs.field(default=64, validator=positive)
    latent_vec_size: int = attrs.field(default=100, validator=positive)
    extra_layers: int = attrs.field(default=0, validator=non_negative)
    add_final_conv: bool = attrs.field(default=True, converter=to_bool)
    wadv: float = attrs.field(default=1.0, validator=non_negative)
    wcon: float = attrs.field(default=50.0, validator=non_negative)
    wenc: float = attrs.field(default=1.0, validator=non_negative)
    learning_rate: float = attrs.field(default=2e-4, validator=positive)
    beta1: float = attrs.field(default=0.5, validator=unit_interval)
    beta2: float = attrs.field(default=0.999, validator=unit_interval)
    epochs: int = attrs.field(default=15, validator=positive)


def init_dcgan_weights(module: nn.Module) -> None:
    """DCGAN initialisation: convolutions N(0, 0.02), batch-norm scales N(1, 0.02), shifts 0."""
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
        nn.init.normal_(module.weight, 0.0, 0.02)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


class Encoder(nn.Module):
    """DCGAN encoder: image (N, 3, S, S) -> features (N, C, 4, 4) -> code (N, out_channels, 1, 1)."""

    def __init__(self, size: int, out_channels: int, n_features: int, extra_layers: int, final_conv: bool) -> None:
        super().__init__()
        layers: list[nn.Module] = [
            nn.Conv2d(3, n_features, 4, 2, 1, bias=False),
            nn.LeakyReLU(0.2, inplace=True),
        ]
        size, channels = size // 2, n_features
        for _ in range(extra_layers):
            layers += [
                nn.Conv2d(channels, channels, 3, 1, 1, bias=False),
                nn.BatchNorm2d(channels),
                nn.LeakyReLU(0.2, inplace=True),
            ]
        while size > 4:  # halve the map, double the channels
            layers += [
                nn.Conv2d(channels, channels * 2, 4, 2, 1, bias=False),
                nn.BatchNorm2d(channels * 2),
                nn.LeakyReLU(0.2, inplace=True),
            ]
            size, channels = size // 2, channels * 2
        self.features = nn.Sequential(*layers)
        self.feature_channels = channels
        # 4x4 -> 1x1: the latent code (or, for the discriminator, the real/fake logit).
        self.final = nn.Conv2d(channels, out_channels, 4, 1, 0, bias=False) if final_conv else None

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = self.features(images)
        return features if self.final is None else self.final(features)


class Decoder(nn.Module):
    """DCGAN generator: code (N, latent, 1, 1) -> image (N, 3, S, S) in [-1, 1]."""

    def __init__(self, size: int, latent: int, n_features: int, extra_layers: int, in_channels: int | None) -> None:
        super().__init__()
        channels, side = n_features // 2, 4
        while side != size:  # the mirror of the encoder's widest layer
            channels, side = channels * 2, side * 2
        layers: list[nn.Module] = [
            # Without the encoder's final convolution the code is already a 4x4 map.
            nn.ConvTranspose2d(latent, channels, 4, 1, 0, bias=False)
            if in_channels is None
            else nn.ConvTranspose2d(in_channels, channels, 3, 1, 1, bias=False),
            nn.BatchNorm2d(channels),
            nn.ReLU(True),
        ]
        side = 4
        while side < size // 2:  # double the map, halve the channels
            layers += [
                nn.ConvTranspose2d(channels, channels // 2, 4, 2, 1, bias=False),
                nn.BatchNorm2d(channels // 2),
                nn.ReLU(True),
            ]
            channels, side = channels // 2, side * 2
        for _ in range(extra_layers):
            layers += [nn.Conv2d(channels, channels, 3, 1, 1, bias=False), nn.BatchNorm2d(channels), nn.ReLU(True)]
        layers += [nn.ConvTranspose2d(channels, 3, 4, 2, 1, bias=False), nn.Tanh()]
        self.layers = nn.Sequential(*layers)

    def forward(self, code: torch.Tensor) -> torch.Tensor:
        return self.layers(code)


class Generator(nn.Module):
    """Encoder G_E, decoder G_D and second encoder E: x -> (x_hat, z, z_hat)."""

    def __init__(self, cfg: GanomalyConfig) -> None:
        super().__init__()
        size = cfg.image_size[0]
        args = (size, cfg.latent_vec_size, cfg.n_features, cfg.extra_layers, cfg.add_final_conv)
        self.encoder = Encoder(*args)
        decoder_input = None
        if not cfg.add_final_conv:  # the code is the encoder's last 4x4 feature map
            decoder_input = self.encoder.feature_channels
        self.decoder = Decoder(size, cfg.latent_vec_size, cfg.n_features, cfg.extra_layers, decoder_input)
        self.second_encoder = Encoder(*args)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        z = self.encoder(images)
        reconstruction = self.decoder(z)
        z_hat = self.second_encoder(reconstruction)
        return reconstruction, z, z_hat


class Discriminator(nn.Module):
    """The encoder's architecture with a one-value output: (real probability (N,), features)."""

    def __init__(self, cfg: GanomalyConfig) -> None:
        super().__init__()
        self.body = Encoder(cfg.image_size[0], 1, cfg.n_features, cfg.extra_layers, final_conv=True)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.body.features(images)
        probability = torch.sigmoid(self.body.final(features)).flatten()
        return probability, features


def generator_loss(
    real_features: torch.Tensor,
    fake_features: torch.Tensor,
    images: torch.Tensor,
    reconstruction: torch.Tensor,
    z: torch.Tensor,
    z_hat: torch.Tensor,
    wadv: float,
    wcon: float,
    wenc: float,
) -> dict[str, torch.Tensor]:
    """The paper's Eq. 4: weighted adversarial (feature matching), contextual (L1) and encoder (L2) losses."""
    adversarial = (real_features - fake_features).square().mean()
    contextual = (images - reconstruction).abs().mean()
    encoder = (z - z_hat).square().mean()
    total = wadv * adversarial + wcon * contextual + wenc * encoder
    return {"total": total, "adversarial": adversarial, "contextual": contextual, "encoder": encoder}


def discriminator_loss(real_probability: torch.Tensor, fake_probability: torch.Tensor) -> torch.Tensor:
    """BCE: images are real (1), reconstructions fake (0); the mean of the two, as the reference."""
    real = F.binary_cross_entropy(real_probability, torch.ones_like(real_probability))
    fake = F.binary_cross_entropy(fake_probability, torch.zeros_like(fake_probability))
    return 0.5 * (real + fake)


def latent_distance(z: torch.Tensor, z_hat: torch.Tensor) -> torch.Tensor:
    """The anomaly score A(x) = mean_k (z_k - z_hat_k)^2, one value per image."""
    return (z - z_hat).square().flatten(1).mean(dim=1)


class Ganomaly(AnomalyDetector):
    name = "ganomaly"
    Config = GanomalyConfig
    #: The encoder halves a square image down to 4 x 4, as the paper's DCGAN.
    square_input = True

    def __init__(self, config: GanomalyConfig | None = None, **overrides) -> None:
        super().__init__(config, **overrides)
        self.generator = Generator(self.config)
        self.discriminator = Discriminator(self.config)
        self.generator.apply(init_dcgan_weights)
        self.discriminator.apply(init_dcgan_weights)
        #: How often the discriminator was drawn afresh during the last fit (for the log and tests).
        self.discriminator_resets = 0

    @property
    def input_spec(self) -> InputSpec:
        # Pixels in [-1, 1], the range of the decoder's tanh (no pretrained backbone to follow).
        return InputSpec(self.config.image_size, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))

    @property
    def training_spec(self) -> TrainingSpec:
        return TrainingSpec(
            [
                Stage(
                    "adversarial",
                    self.adversarial_step,
                    self.configure_optimizers,
                    epochs=self.config.epochs,
                    manual=True,
                )
            ]
        )

    def fit_begin(self) -> None:
        self.discriminator_resets = 0

    def configure_optimizers(self, budget: Budget) -> Optimization:
        cfg = self.config
        betas = (cfg.beta1, cfg.beta2)
        return Optimization(
            {
                "generator": torch.optim.Adam(self.generator.parameters(), lr=cfg.learning_rate, betas=betas),
                "discriminator": torch.optim.Adam(self.discriminator.parameters(), lr=cfg.learning_rate, betas=betas),
            }
        )

    def adversarial_step(self, batch: Batch, optimizers) -> dict[str, torch.Tensor]:
        """One step of each network, in the reference's order: generator, then discriminator."""
        cfg = self.config
        images = batch.image
        reconstruction, z, z_hat = self.generator(images)
        # The discriminator's view, on a reconstruction detached from the generator.
        real_probability, _ = self.discriminator(images)
        fake_probability, _ = self.discriminator(reconstruction.detach())
        d_loss = discriminator_loss(real_probability, fake_probability)
        # The generator's loss, through the discriminator's features (feature matching).
        _, real_features = self.discriminator(images)
        _, fake_features = self.discriminator(reconstruction)
        g_losses = generator_loss(
            real_features, fake_features, images, reconstruction, z, z_hat, cfg.wadv, cfg.wcon, cfg.wenc
        )
        optimizers.step("generator", g_losses["total"])
        optimizers.step("discriminator", d_loss)
        self.reset_discriminator_if_collapsed(d_loss)
        return {
            "loss": g_losses["total"].detach(),
            "discriminator": d_loss.detach(),
            "adversarial": g_losses["adversarial"].detach(),
            "contextual": g_losses["contextual"].detach(),
            "encoder": g_losses["encoder"].detach(),
        }

    def reset_discriminator_if_collapsed(self, d_loss: torch.Tensor) -> bool:
        """Draw the discriminator afresh when its loss fell below 1e-5 (the reference's ``reinit_d``)."""
        if d_loss.item() >= DISCRIMINATOR_RESET_BELOW:
            return False
        self.discriminator.apply(init_dcgan_weights)
        self.discriminator_resets += 1
        return True

    def forward(self, images: torch.Tensor) -> DetectorOutput:
        _, z, z_hat = self.generator(images)
        return DetectorOutput(pred_score=latent_distance(z, z_hat))

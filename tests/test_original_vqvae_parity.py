"""The built-in `vq` quantizer, as the ``original`` preset configures it, against a transcription of the
VQEmbedding of the widely used PyTorch VQ-VAE tutorial formulation (van den Oord et al., 2017)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

import vqkit


class TutorialVQEmbedding(nn.Module):
    """Transcribed from the tutorial formulation, unchanged in substance."""

    def __init__(self, num_embeddings: int, embedding_dim: int, commitment_cost: float = 0.25) -> None:
        super().__init__()
        self.embedding_dim = embedding_dim
        self.num_embeddings = num_embeddings
        self.commitment_cost = commitment_cost
        self.embedding = nn.Embedding(num_embeddings, embedding_dim)
        self.embedding.weight.data.uniform_(-1 / self.num_embeddings, 1 / self.num_embeddings)

    def forward(self, z: torch.Tensor):
        b, c, h, w = z.shape
        z_channel_last = z.permute(0, 2, 3, 1)
        z_flattened = z_channel_last.reshape(b * h * w, self.embedding_dim)
        distances = (
            torch.sum(z_flattened**2, dim=-1, keepdim=True)
            + torch.sum(self.embedding.weight.t() ** 2, dim=0, keepdim=True)
            - 2 * torch.matmul(z_flattened, self.embedding.weight.t())
        )
        encoding_indices = torch.argmin(distances, dim=-1)
        z_q = self.embedding(encoding_indices)
        z_q = z_q.reshape(b, h, w, self.embedding_dim)
        z_q = z_q.permute(0, 3, 1, 2)
        loss = F.mse_loss(z_q, z.detach()) + self.commitment_cost * F.mse_loss(z_q.detach(), z)
        z_q = z + (z_q - z).detach()
        return z_q, loss, encoding_indices


def _original(k: int = 64, d: int = 16) -> nn.Module:
    """vq as ``build_model(preset="original")`` builds it."""
    return vqkit.build_model(preset="original", latent_dim=d, codebook_size=k, seed=0).quantizer.train()


def _pair(k: int = 64, d: int = 16):
    torch.manual_seed(0)
    tutorial = TutorialVQEmbedding(k, d)
    ours = _original(k, d)
    ours.embedding.weight.data.copy_(torch.randn(k, d) * 0.5)
    tutorial.embedding.weight.data.copy_(ours.embedding.weight.data)
    return tutorial, ours


def test_uniform_init_is_the_tutorials() -> None:
    q = vqkit.quantizers.get("vq")(16, 64, init="uniform")
    w = q.embedding.weight
    assert w.abs().max() <= 1 / 64 and w.std() > 0
    w = _original().embedding.weight
    assert w.abs().max() <= 1 / 64 and w.std() > 0


def test_original_preset_is_the_tutorials_configuration() -> None:
    model = vqkit.build_model(preset="original", seed=0)
    q = model.quantizer
    assert q.init == "uniform" and not q.upkeep.kmeans_init and q.upkeep.restart_after == 0
    assert isinstance(model.decoder.net[0], nn.ConvTranspose2d)
    assert isinstance(model.decoder.net[-1], nn.Tanh)
    default = vqkit.build_model(seed=0)
    assert default.quantizer.upkeep.kmeans_init and default.quantizer.upkeep.restart_after == 10
    assert isinstance(default.decoder.net[0], nn.Conv2d)
    assert not any(isinstance(m, nn.Tanh) for m in default.decoder.modules())  # linear + clamp


def test_vq_matches_tutorial_indices_outputs_loss_and_gradients() -> None:
    tutorial, ours = _pair()
    z = torch.randn(4, 16, 5, 6)
    z_tutorial = z.clone().requires_grad_(True)
    z_ours = z.clone().requires_grad_(True)

    zq_s, loss_s, idx_s = tutorial(z_tutorial)
    out = ours(z_ours)

    assert torch.equal(out.indices.reshape(-1), idx_s)
    assert out.indices.shape == (4, 5, 6) and out.indices.dtype == torch.int64
    torch.testing.assert_close(out.z_q, zq_s, rtol=0, atol=0)
    torch.testing.assert_close(out.loss, loss_s, rtol=1e-6, atol=1e-7)

    # Same downstream objective through both: gradients to the encoder side and to the codebook agree.
    target = torch.randn_like(z)
    ((zq_s - target) ** 2).mean().add(loss_s).backward()
    ((out.z_q - target) ** 2).mean().add(out.loss).backward()
    torch.testing.assert_close(z_ours.grad, z_tutorial.grad, rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(
        ours.embedding.weight.grad, tutorial.embedding.weight.grad, rtol=1e-6, atol=1e-8
    )


def test_quantize_dequantize_agree_with_forward() -> None:
    _, ours = _pair()
    z = torch.randn(3, 16, 4, 4)
    out = ours(z)
    idx = ours.quantize(z)
    assert torch.equal(idx, out.indices)
    torch.testing.assert_close(ours.dequantize(idx), out.z_q, rtol=0, atol=1e-6)


def test_original_architecture_shapes() -> None:
    model = vqkit.build_model(preset="original", channels=3, image_size=32, latent_dim=128, seed=0)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    out = model(x)
    assert out.reconstruction.shape == x.shape
    assert out.reconstruction.abs().max() <= 1
    assert model.encoder(x).shape == (2, 128, 4, 4)
    assert model.grid == (4, 4)
    assert model.encode(x).shape == (2, 4, 4)

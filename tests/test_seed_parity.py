"""The built-in `vq` quantizer against a transcription of the seed tutorial's VQEmbedding."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

import vqkit


class SeedVQEmbedding(nn.Module):
    """Transcribed from the seed tutorial (shared/seed), unchanged in substance."""

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


def _pair(k: int = 64, d: int = 16):
    torch.manual_seed(0)
    seed = SeedVQEmbedding(k, d)
    ours = vqkit.quantizers.get("vq")(d, k, init="uniform")
    ours.embedding.weight.data.copy_(torch.randn(k, d) * 0.5)
    seed.embedding.weight.data.copy_(ours.embedding.weight.data)
    return seed, ours


def test_uniform_init_is_the_seeds() -> None:
    q = vqkit.quantizers.get("vq")(16, 64, init="uniform")
    w = q.embedding.weight
    assert w.abs().max() <= 1 / 64 and w.std() > 0


def test_vq_matches_seed_indices_outputs_loss_and_gradients() -> None:
    seed, ours = _pair()
    z = torch.randn(4, 16, 5, 6)
    z_seed = z.clone().requires_grad_(True)
    z_ours = z.clone().requires_grad_(True)

    zq_s, loss_s, idx_s = seed(z_seed)
    out = ours(z_ours)

    assert torch.equal(out.indices.reshape(-1), idx_s)
    assert out.indices.shape == (4, 5, 6) and out.indices.dtype == torch.int64
    torch.testing.assert_close(out.z_q, zq_s, rtol=0, atol=0)
    torch.testing.assert_close(out.loss, loss_s, rtol=1e-6, atol=1e-7)

    # Same downstream objective through both: gradients to the encoder side and to the codebook agree.
    target = torch.randn_like(z)
    ((zq_s - target) ** 2).mean().add(loss_s).backward()
    ((out.z_q - target) ** 2).mean().add(out.loss).backward()
    torch.testing.assert_close(z_ours.grad, z_seed.grad, rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(ours.embedding.weight.grad, seed.embedding.weight.grad, rtol=1e-6, atol=1e-8)


def test_quantize_dequantize_agree_with_forward() -> None:
    _, ours = _pair()
    z = torch.randn(3, 16, 4, 4)
    out = ours(z)
    idx = ours.quantize(z)
    assert torch.equal(idx, out.indices)
    torch.testing.assert_close(ours.dequantize(idx), out.z_q, rtol=0, atol=1e-6)


def test_seed_architecture_shapes() -> None:
    model = vqkit.build_model("conv3", "vq", channels=3, image_size=32, latent_dim=128, seed=0)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    out = model(x)
    assert out.reconstruction.shape == x.shape
    assert out.reconstruction.abs().max() <= 1
    assert model.encoder(x).shape == (2, 128, 4, 4)
    assert model.grid == (4, 4)
    assert model.encode(x).shape == (2, 4, 4)

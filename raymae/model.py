"""The ISSTAD network: a ViT masked autoencoder and its stage-2 extension.

Module names follow facebookresearch/mae ``models_mae.py`` so that the official
MAE checkpoints load key for key. Stage 1 is the plain MAE. Stage 2 (built with
``stage2=True``) appends decoder blocks and adds a per-pixel two-class head; the
MAE's ``decoder_pred`` becomes the reconstruction head.

Shapes: images (N, C, H, W); tokens (N, L, D) with L = (H / p) * (W / p).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from timm.layers import PatchEmbed
from timm.models.vision_transformer import Block

from raymae.config import ModelConfig


def sincos_pos_embed(embed_dim: int, grid_size: int, cls_token: bool = True) -> np.ndarray:
    """Fixed 2-D sine-cosine position embedding, (1 + grid_size**2, D) with a cls row."""
    coords = np.arange(grid_size, dtype=np.float64)
    grid_w, grid_h = np.meshgrid(coords, coords)  # w varies fastest, as in MAE

    def embed_1d(dim: int, pos: np.ndarray) -> np.ndarray:
        omega = 1.0 / 10000 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2.0))
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    emb = np.concatenate([embed_1d(embed_dim // 2, grid_w), embed_1d(embed_dim // 2, grid_h)], axis=1)
    if cls_token:
        emb = np.concatenate([np.zeros((1, embed_dim)), emb], axis=0)
    return emb.astype(np.float32)


@dataclass
class Stage2Output:
    """What the stage-2 network predicts for a batch.

    recon:  (N, C, H, W) the repaired (clean) image, in normalised pixel space.
    logits: one (N, 2, H, W) map of normal/anomalous logits per supervised
            decoder block; the last entry is the final prediction.
    """

    recon: torch.Tensor
    logits: list[torch.Tensor]

    @property
    def anomaly_prob(self) -> torch.Tensor:
        """(N, H, W) probability that each pixel is anomalous."""
        return self.logits[-1].softmax(dim=1)[:, 1]


# Parameters that exist only in the stage-2 network (everything else comes from stage 1).
STAGE2_PREFIXES = ("stage2_blocks", "seg_", "pixel_fusion")


class PixelFusion(nn.Module):
    """Per-pixel 2-class head that fuses decoder tokens with a shallow view of the input.

    The tokens say *what* is wrong in a patch; the two 3x3 convolutions over the
    image let the head place the boundary to the pixel, which a linear head per
    patch learns only slowly from scratch.
    token features (N, WIDTH, H, W) + image (N, C, H, W) -> logits (N, 2, H, W);
    with the ``compare`` head the image is (N, 2C, H, W): the input and its reconstruction.
    """

    WIDTH = 16

    def __init__(self, in_chans: int):
        super().__init__()
        w = self.WIDTH
        self.stem = nn.Sequential(nn.Conv2d(in_chans, w, 3, padding=1), nn.GELU(),
                                  nn.Conv2d(w, w, 3, padding=1), nn.GELU())
        self.fuse = nn.Sequential(nn.Conv2d(2 * w, w, 3, padding=1), nn.GELU(), nn.Conv2d(w, 2, 1))

    def forward(self, tokens: torch.Tensor, stem: torch.Tensor) -> torch.Tensor:
        return self.fuse(torch.cat([tokens, stem], dim=1))


class MaskedAutoencoderViT(nn.Module):
    """ViT MAE (stage 1) that grows the ISSTAD heads for stage 2."""

    def __init__(self, cfg: ModelConfig, stage2: bool = False):
        super().__init__()
        cfg = cfg.resolved()
        self.cfg = cfg
        self.stage2 = stage2
        p, dim, ddim = cfg.patch_size, cfg.embed_dim, cfg.decoder_embed_dim

        # encoder
        self.patch_embed = PatchEmbed(cfg.image_size, p, cfg.in_chans, dim)
        num_patches = self.patch_embed.num_patches
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, dim), requires_grad=False)
        self.blocks = nn.ModuleList(
            [Block(dim, cfg.num_heads, cfg.mlp_ratio, qkv_bias=True) for _ in range(cfg.depth)])
        self.norm = nn.LayerNorm(dim, eps=1e-6)

        # decoder
        self.decoder_embed = nn.Linear(dim, ddim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, ddim))
        self.decoder_pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, ddim), requires_grad=False)
        self.decoder_blocks = nn.ModuleList(
            [Block(ddim, cfg.decoder_num_heads, cfg.mlp_ratio, qkv_bias=True) for _ in range(cfg.decoder_depth)])
        self.decoder_norm = nn.LayerNorm(ddim, eps=1e-6)
        self.decoder_pred = nn.Linear(ddim, p * p * cfg.in_chans)

        if stage2:
            self.stage2_blocks = nn.ModuleList(
                [Block(ddim, cfg.decoder_num_heads, cfg.mlp_ratio, qkv_bias=True)
                 for _ in range(cfg.stage2_extra_blocks)])
            n_heads = cfg.decoder_depth + cfg.stage2_extra_blocks if cfg.deep_supervision else 1
            self.seg_norms = nn.ModuleList([nn.LayerNorm(ddim, eps=1e-6) for _ in range(n_heads)])
            width = 2 if cfg.pixel_head == "linear" else PixelFusion.WIDTH
            per_token = width if cfg.pixel_upsampling == "bilinear" else p * p * width
            self.seg_heads = nn.ModuleList([nn.Linear(ddim, per_token) for _ in range(n_heads)])
            if cfg.pixel_head != "linear":  # "compare" stacks the reconstruction onto the input
                self.pixel_fusion = PixelFusion(cfg.in_chans * (2 if cfg.pixel_head == "compare" else 1))

        self.encoder_frozen = False
        self._init_weights()

    # ------------------------------------------------------------------ init
    def _init_weights(self) -> None:
        grid = int(self.patch_embed.num_patches ** 0.5)
        self.pos_embed.data.copy_(torch.from_numpy(sincos_pos_embed(self.cfg.embed_dim, grid)).unsqueeze(0))
        self.decoder_pos_embed.data.copy_(
            torch.from_numpy(sincos_pos_embed(self.cfg.decoder_embed_dim, grid)).unsqueeze(0))
        w = self.patch_embed.proj.weight.data
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.normal_(self.cls_token, std=0.02)
        nn.init.normal_(self.mask_token, std=0.02)
        self.apply(self._init_module)

    @staticmethod
    def _init_module(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.constant_(m.bias, 0)
        elif isinstance(m, nn.LayerNorm):
            nn.init.constant_(m.bias, 0)
            nn.init.constant_(m.weight, 1.0)

    def encoder_parameters(self) -> list[nn.Parameter]:
        """Parameters of the encoder (frozen in stage 2 by default)."""
        mods = [self.patch_embed, self.blocks, self.norm]
        return [self.cls_token] + [p for m in mods for p in m.parameters()]

    def set_encoder_frozen(self, frozen: bool) -> None:
        """Freeze (or unfreeze) the encoder; a frozen encoder also runs without autograd."""
        self.encoder_frozen = frozen
        for p in self.encoder_parameters():
            p.requires_grad_(not frozen)

    def set_fused_attention(self, fused: bool) -> None:
        """Every block's attention through torch's fused kernel (SDPA) or timm's explicit
        softmax(q k^T / sqrt(d)) v: the same function, computed in a different order."""
        for m in self.modules():
            if hasattr(m, "fused_attn"):
                m.fused_attn = fused

    def set_pixel_prior(self, share: float) -> None:
        """Bias the pixel head's last layer so it starts out predicting ``share`` anomalous.

        With two classes, p(anomalous) = sigmoid(b1 - b0), so the anomalous bias
        becomes log(share / (1 - share)) and the normal one 0 (RetinaNet's prior init).
        """
        if self.cfg.pixel_head == "linear":  # every head's bias holds (normal, anomalous) per pixel
            biases = [h.bias.view(-1, 2) for h in self.seg_heads]
        else:  # the fusion convolutions' last layer gives the logits of every head
            biases = [self.pixel_fusion.fuse[-1].bias.view(1, 2)]
        with torch.no_grad():
            for b in biases:
                b[:, 0] = 0.0
                b[:, 1] = float(np.log(share / (1.0 - share)))

    # ------------------------------------------------------------- patches
    def patchify(self, imgs: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) -> (N, L, p*p*C)."""
        p = self.cfg.patch_size
        n, c, h, w = imgs.shape
        x = imgs.reshape(n, c, h // p, p, w // p, p)
        x = torch.einsum("nchpwq->nhwpqc", x)
        return x.reshape(n, (h // p) * (w // p), p * p * c)

    def unpatchify(self, x: torch.Tensor, chans: int | None = None, channels_last: bool = False) -> torch.Tensor:
        """(N, L, p*p*C) -> (N, C, H, W) for a square grid; in channels-last memory if asked."""
        p = self.cfg.patch_size
        c = chans if chans is not None else self.cfg.in_chans
        n, L, _ = x.shape
        h = w = int(L ** 0.5)
        if h * w != L:
            raise ValueError(f"{L} tokens do not form a square grid")
        x = x.reshape(n, h, w, p, p, c)
        if channels_last:  # one copy into (N, H, W, C), seen as (N, C, H, W)
            return torch.einsum("nhwpqc->nhpwqc", x).reshape(n, h * p, w * p, c).permute(0, 3, 1, 2)
        x = torch.einsum("nhwpqc->nchpwq", x)
        return x.reshape(n, c, h * p, w * p)

    # -------------------------------------------------------------- masking
    @staticmethod
    def random_masking(x: torch.Tensor, mask_ratio: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Keep a random (1 - mask_ratio) share of tokens per sample (argsort of noise).

        x: (N, L, D) -> kept (N, L_keep, D), mask (N, L) with 1 = removed,
        ids_restore (N, L) that undoes the shuffle.
        """
        n, L, d = x.shape
        len_keep = int(L * (1 - mask_ratio))
        noise = torch.rand(n, L, device=x.device)
        ids_shuffle = torch.argsort(noise, dim=1)
        ids_restore = torch.argsort(ids_shuffle, dim=1)
        ids_keep = ids_shuffle[:, :len_keep]
        kept = torch.gather(x, 1, ids_keep.unsqueeze(-1).repeat(1, 1, d))
        mask = torch.ones(n, L, device=x.device)
        mask[:, :len_keep] = 0
        mask = torch.gather(mask, 1, ids_restore)
        return kept, mask, ids_restore

    # -------------------------------------------------------------- encoder
    def forward_encoder(self, imgs: torch.Tensor, mask_ratio: float):
        """(N, C, H, W) -> latent (N, 1 + L_keep, D), mask (N, L), ids_restore (N, L)."""
        x = self.patch_embed(imgs) + self.pos_embed[:, 1:, :]
        if mask_ratio > 0:
            x, mask, ids_restore = self.random_masking(x, mask_ratio)
        else:
            n, L, _ = x.shape
            mask = torch.zeros(n, L, device=x.device)
            ids_restore = torch.arange(L, device=x.device).expand(n, L)
        cls = (self.cls_token + self.pos_embed[:, :1, :]).expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1)
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x), mask, ids_restore

    # -------------------------------------------------------------- decoder
    def _decoder_tokens(self, latent: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        """Embed latent tokens, fill masked places with mask tokens, add positions: (N, 1 + L, Dd)."""
        x = self.decoder_embed(latent)
        n, L = ids_restore.shape
        mask_tokens = self.mask_token.repeat(n, L + 1 - x.shape[1], 1)
        x_ = torch.cat([x[:, 1:, :], mask_tokens], dim=1)
        x_ = torch.gather(x_, 1, ids_restore.unsqueeze(-1).repeat(1, 1, x.shape[2]))
        x = torch.cat([x[:, :1, :], x_], dim=1)
        return x + self.decoder_pos_embed

    def forward_decoder(self, latent: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        """Stage-1 decoder: -> pixel predictions per patch (N, L, p*p*C)."""
        x = self._decoder_tokens(latent, ids_restore)
        for blk in self.decoder_blocks:
            x = blk(x)
        return self.decoder_pred(self.decoder_norm(x))[:, 1:, :]

    def forward_loss(self, imgs: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Mean squared error on the removed patches only (per-patch normalised if configured)."""
        target = self.patchify(imgs)
        if self.cfg.norm_pix_loss:
            mean = target.mean(dim=-1, keepdim=True)
            var = target.var(dim=-1, keepdim=True)
            target = (target - mean) / (var + 1e-6) ** 0.5
        loss = ((pred - target) ** 2).mean(dim=-1)
        return (loss * mask).sum() / mask.sum().clamp(min=1)

    def forward(self, imgs: torch.Tensor, mask_ratio: float = 0.75):
        """Stage 1: -> (loss, pred (N, L, p*p*C), mask (N, L)); stage 2: -> Stage2Output.

        Training calls the model through ``forward`` so that DDP syncs gradients.
        """
        if self.stage2:
            return self.forward_stage2(imgs, frozen_encoder=self.encoder_frozen)
        latent, mask, ids_restore = self.forward_encoder(imgs, mask_ratio)
        pred = self.forward_decoder(latent, ids_restore)
        return self.forward_loss(imgs, pred, mask), pred, mask

    # -------------------------------------------------------------- stage 2
    def forward_stage2(self, imgs: torch.Tensor, frozen_encoder: bool = False) -> Stage2Output:
        """No masking; decoder + extra blocks; reconstruction and pixel-class heads."""
        if not self.stage2:
            raise RuntimeError("this model was built without stage-2 heads")
        with torch.set_grad_enabled(torch.is_grad_enabled() and not frozen_encoder):
            latent, _, ids_restore = self.forward_encoder(imgs, mask_ratio=0.0)
        x = self._decoder_tokens(latent, ids_restore)
        blocks = list(self.decoder_blocks) + list(self.stage2_blocks)
        segs = []
        for i, blk in enumerate(blocks):
            x = blk(x)
            head = i if self.cfg.deep_supervision else (0 if i == len(blocks) - 1 else None)
            if head is not None:
                segs.append(self.token_map(self.seg_heads[head](self.seg_norms[head](x))[:, 1:, :]))
        recon = self.unpatchify(self.decoder_pred(self.decoder_norm(x))[:, 1:, :])
        return Stage2Output(recon=recon, logits=self._pixel_logits(segs, imgs, recon))

    def token_map(self, seg: torch.Tensor) -> torch.Tensor:
        """Pixel head outputs per token (N, L, D) -> (N, C, H, W) at pixel resolution.

        "patch": D = p*p*C, unpatchified, in channels-last memory (the pixel head's convolutions
        run in about 0.7 of their time so on a CPU). "bilinear": D = C, interpolated between
        token centres.
        """
        if self.cfg.pixel_upsampling == "patch":
            return self.unpatchify(seg, chans=seg.shape[-1] // self.cfg.patch_size ** 2, channels_last=True)
        n, tokens, c = seg.shape
        side = int(tokens ** 0.5)
        grid = seg.transpose(1, 2).reshape(n, c, side, side)
        return F.interpolate(grid, scale_factor=self.cfg.patch_size, mode="bilinear", align_corners=False)

    def _pixel_logits(self, segs: list[torch.Tensor], imgs: torch.Tensor,
                      recon: torch.Tensor) -> list[torch.Tensor]:
        """Per-block token maps (N, W, H, W) -> logits (N, 2, H, W), through the pixel head."""
        if self.cfg.pixel_head == "linear":
            return segs
        view = torch.cat([imgs, recon], dim=1) if self.cfg.pixel_head == "compare" else imgs
        stem = self.pixel_fusion.stem(view.contiguous(memory_format=torch.channels_last))
        return [self.pixel_fusion(seg, stem) for seg in segs]


def build_model(cfg: ModelConfig, stage2: bool = False) -> MaskedAutoencoderViT:
    """The one constructor used by training, evaluation and scoring."""
    return MaskedAutoencoderViT(cfg, stage2=stage2)

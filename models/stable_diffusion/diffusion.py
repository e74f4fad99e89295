"""The diffusion process of SD-2 (LDM's DDPM with v-prediction) and its DDIM sampler.

    alphas_cumprod(1000)            betas linear in sqrt: (linspace(sqrt 0.00085, sqrt 0.012, 1000))^2
    noised(z0, noise, t)            x_t = sqrt(a_t) z0 + sqrt(1 - a_t) noise
    v_target(z0, noise, t)          v = sqrt(a_t) noise - sqrt(1 - a_t) z0   (the training target; loss MSE)
    ddim_timesteps(50)              [981, 961, ..., 1]: LDM's "uniform" spacing, stride 1000 // steps, plus 1
    ddim_sample(...)                eta 0, classifier-free guidance on v (uncond = the empty prompt)

Legend: B batch, C latent channels, H/W latent size.
"""

from __future__ import annotations

from typing import Callable

import torch

LINEAR_START, LINEAR_END, TIMESTEPS = 0.00085, 0.012, 1000


def alphas_cumprod(timesteps: int = TIMESTEPS, start: float = LINEAR_START, end: float = LINEAR_END) -> torch.Tensor:
    """float64, as LDM registers them (its buffers are cast to fp32 only when used)."""
    betas = torch.linspace(start ** 0.5, end ** 0.5, timesteps, dtype=torch.float64) ** 2
    return torch.cumprod(1.0 - betas, dim=0)


def _gather(a: torch.Tensor, t_B: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return a.to(like.device)[t_B].to(torch.float32).view(-1, *([1] * (like.dim() - 1)))


def noised(z0: torch.Tensor, noise: torch.Tensor, t_B: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    at = _gather(a, t_B, z0)
    return at.sqrt() * z0 + (1 - at).sqrt() * noise


def v_target(z0: torch.Tensor, noise: torch.Tensor, t_B: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    at = _gather(a, t_B, z0)
    return at.sqrt() * noise - (1 - at).sqrt() * z0


def ddim_timesteps(steps: int, timesteps: int = TIMESTEPS) -> list[int]:
    """Descending, as they are visited."""
    if not 1 <= steps <= timesteps:
        raise ValueError(f"DDIM steps {steps}: want 1..{timesteps}")
    stride = timesteps // steps
    return [t + 1 for t in range(0, timesteps, stride)][::-1]


@torch.no_grad()
def ddim_sample(model: Callable, x_T: torch.Tensor, context: torch.Tensor, uncond_context: torch.Tensor,
                a: torch.Tensor, steps: int = 50, guidance: float = 8.0) -> torch.Tensor:
    """z0 from x_T by deterministic DDIM (eta 0). `model(x, t, context)` predicts v; with guidance != 1 the
    conditional and unconditional predictions come from one batch of 2B."""
    x = x_T
    visited = ddim_timesteps(steps, len(a))
    for i, t in enumerate(visited):
        t_prev = visited[i + 1] if i + 1 < len(visited) else -1
        at = float(a[t])
        a_prev = float(a[t_prev]) if t_prev >= 0 else float(a[0])  # LDM: the last step lands on alphas_cumprod[0]
        t_B = torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)
        if guidance == 1.0:
            v = model(x, t_B, context).float()
        else:
            v_uncond, v_cond = model(torch.cat([x, x]), torch.cat([t_B, t_B]),
                                     torch.cat([uncond_context, context])).float().chunk(2)
            v = v_uncond + guidance * (v_cond - v_uncond)
        x0 = at ** 0.5 * x - (1 - at) ** 0.5 * v
        eps = at ** 0.5 * v + (1 - at) ** 0.5 * x
        x = a_prev ** 0.5 * x0 + (1 - a_prev) ** 0.5 * eps
    return x

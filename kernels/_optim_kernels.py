"""Elementwise optimizer updates over the flat buffers of multi_tensor.py: Triton kernels and the torch
reference of each, dispatched per call. Used by optimizers.py.

Every function updates one param group: the blocks [first, first + count) of the flat buffers, with the
group's hyperparameters as scalars; per-tensor values (trust-ratio scales, the active flag of tensors
whose gradient is None this step) are read through `block_tensor`. Math is fp32 whatever the
parameter dtype; states are fp32. sqrt is the correctly rounded one (tl.sqrt_rn): the fast
approximate sqrt would cost the bit-level agreement with torch's optimizers for no measurable gain
in a memory-bound kernel.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.dispatch import use_triton
from kernels.multi_tensor import BLOCK, FlatLayout


@triton.jit
def _blocks(first_block, BLOCK_TENSOR, ACTIVE, HAS_ACTIVE: tl.constexpr, BLOCK_SIZE: tl.constexpr):
    blk = first_block + tl.program_id(0)
    t = tl.load(BLOCK_TENSOR + blk)
    lanes = tl.arange(0, BLOCK_SIZE)
    if HAS_ACTIVE:  # all lanes off for a tensor without a gradient this step
        mask = lanes < BLOCK_SIZE * tl.load(ACTIVE + t).to(tl.int32)
    else:
        mask = lanes < BLOCK_SIZE
    return blk, t, blk.to(tl.int64) * BLOCK_SIZE + lanes, mask


@triton.jit
def _lars_kernel(P, G, BUF, BLOCK_TENSOR, ACTIVE, SCALE, first_block, weight_decay, momentum,
                 HAS_ACTIVE: tl.constexpr, BLOCK_SIZE: tl.constexpr):
    _, t, offs, mask = _blocks(first_block, BLOCK_TENSOR, ACTIVE, HAS_ACTIVE, BLOCK_SIZE)
    w = tl.load(P + offs, mask=mask).to(tl.float32)
    g = tl.load(G + offs, mask=mask).to(tl.float32)
    v = tl.load(BUF + offs, mask=mask) * momentum + (g + weight_decay * w) * tl.load(SCALE + t)
    tl.store(BUF + offs, v, mask=mask)
    tl.store(P + offs, (w - v).to(P.dtype.element_ty), mask=mask)


@triton.jit
def _adam_kernel(P, G, M, V, BLOCK_TENSOR, ACTIVE, CLIP, first_block, beta1, beta2, eps, weight_decay, decay,
                 step_size, sqrt_bc2, DECOUPLED: tl.constexpr, HAS_CLIP: tl.constexpr, HAS_ACTIVE: tl.constexpr,
                 BLOCK_SIZE: tl.constexpr):
    _, _, offs, mask = _blocks(first_block, BLOCK_TENSOR, ACTIVE, HAS_ACTIVE, BLOCK_SIZE)
    w = tl.load(P + offs, mask=mask).to(tl.float32)
    g = tl.load(G + offs, mask=mask).to(tl.float32)
    if HAS_CLIP:
        g = g * tl.load(CLIP)
    if DECOUPLED:
        w = w * decay  # decay = 1 - lr * weight_decay (AdamW)
    else:
        g = g + weight_decay * w
    m = tl.load(M + offs, mask=mask)
    m = m + (1.0 - beta1) * (g - m)  # torch's lerp
    v = tl.load(V + offs, mask=mask) * beta2 + (1.0 - beta2) * g * g
    w = w - step_size * (m / (tl.sqrt_rn(v) / sqrt_bc2 + eps))
    tl.store(M + offs, m, mask=mask)
    tl.store(V + offs, v, mask=mask)
    tl.store(P + offs, w.to(P.dtype.element_ty), mask=mask)


@triton.jit
def _adagrad_kernel(P, G, S, BLOCK_TENSOR, ACTIVE, first_block, clr, eps, weight_decay,
                    HAS_ACTIVE: tl.constexpr, BLOCK_SIZE: tl.constexpr):
    _, _, offs, mask = _blocks(first_block, BLOCK_TENSOR, ACTIVE, HAS_ACTIVE, BLOCK_SIZE)
    w = tl.load(P + offs, mask=mask).to(tl.float32)
    # torch.optim.Adagrad's operations and rounding order: grad.add(w, alpha=wd) and
    # sum.addcmul_(g, g) are fused multiply-adds in torch's kernels (CPU vectorized and CUDA), and the update
    # is param.addcdiv_(g, std, value=-clr) = w + (-clr * g) / std
    g = tl.fma(w, weight_decay, tl.load(G + offs, mask=mask).to(tl.float32))
    s = tl.fma(g, g, tl.load(S + offs, mask=mask))
    tl.store(S + offs, s, mask=mask)
    tl.store(P + offs, (w + (-clr * g) / (tl.sqrt_rn(s) + eps)).to(P.dtype.element_ty), mask=mask)


@triton.jit
def _sgd_kernel(P, G, BUF, BLOCK_TENSOR, ACTIVE, first_block, lr, weight_decay, momentum, NESTEROV: tl.constexpr,
                HAS_ACTIVE: tl.constexpr, BLOCK_SIZE: tl.constexpr):
    _, _, offs, mask = _blocks(first_block, BLOCK_TENSOR, ACTIVE, HAS_ACTIVE, BLOCK_SIZE)
    w = tl.load(P + offs, mask=mask).to(tl.float32)
    # torch.optim.SGD's operations and rounding order: d = g + wd w, buf = m buf + d, then (Nesterov)
    # d + m buf or buf, w - lr d; each `add(x, alpha=a)` of torch is the fused multiply-add x * a + self
    d = tl.fma(w, weight_decay, tl.load(G + offs, mask=mask).to(tl.float32))
    buf = tl.load(BUF + offs, mask=mask) * momentum + d
    if NESTEROV:
        d = tl.fma(buf, momentum, d)
    else:
        d = buf
    tl.store(BUF + offs, buf, mask=mask)
    tl.store(P + offs, tl.fma(d, -lr, w).to(P.dtype.element_ty), mask=mask)


@triton.jit
def _lamb_moments_kernel(P, G, M, V, U, PARTIAL, BLOCK_TENSOR, ACTIVE, CLIP, first_block, num_blocks, beta1,
                         beta2, eps, weight_decay, bc1, bc2, HAS_ACTIVE: tl.constexpr, BLOCK_SIZE: tl.constexpr):
    """Adam moments and the LAMB update direction u (into U), plus this block's sums of w^2 and u^2."""
    blk, _, offs, mask = _blocks(first_block, BLOCK_TENSOR, ACTIVE, HAS_ACTIVE, BLOCK_SIZE)
    w = tl.load(P + offs, mask=mask, other=0.0).to(tl.float32)  # masked lanes must add 0 to the sums
    g = tl.load(G + offs, mask=mask, other=0.0).to(tl.float32) * tl.load(CLIP)
    m = tl.load(M + offs, mask=mask) * beta1 + (1.0 - beta1) * g
    v = tl.load(V + offs, mask=mask) * beta2 + (1.0 - beta2) * g * g
    u = tl.where(mask, (m / bc1) / (tl.sqrt_rn(v / bc2) + eps) + weight_decay * w, 0.0)
    tl.store(M + offs, m, mask=mask)
    tl.store(V + offs, v, mask=mask)
    tl.store(U + offs, u, mask=mask)
    tl.store(PARTIAL + blk, tl.sum(w * w, axis=0))
    tl.store(PARTIAL + num_blocks + blk, tl.sum(u * u, axis=0))


@triton.jit
def _scaled_sub_kernel(P, U, BLOCK_TENSOR, ACTIVE, SCALE, first_block, HAS_ACTIVE: tl.constexpr,
                       BLOCK_SIZE: tl.constexpr):
    _, t, offs, mask = _blocks(first_block, BLOCK_TENSOR, ACTIVE, HAS_ACTIVE, BLOCK_SIZE)
    w = tl.load(P + offs, mask=mask).to(tl.float32) - tl.load(SCALE + t) * tl.load(U + offs, mask=mask)
    tl.store(P + offs, w.to(P.dtype.element_ty), mask=mask)


def _commit(layout: FlatLayout, active, first: int, count: int, pairs) -> None:
    """Reference path: write new values (fp32) back into their buffers, except for inactive tensors."""
    keep = layout.expand(active, first, count).bool() if active is not None else None
    for dst, new in pairs:
        dst.copy_(new if keep is None else torch.where(keep, new, dst.float()))


def _slices(first: int, count: int, *flats: torch.Tensor):
    return [f[first * BLOCK:(first + count) * BLOCK] for f in flats]


def lars_update(layout, w, g, buf, scale, active, first, count, weight_decay, momentum):
    if use_triton(w):
        _lars_kernel[(count,)](w, g, buf, layout.block_tensor, active, scale, first, weight_decay, momentum,
                               HAS_ACTIVE=active is not None, BLOCK_SIZE=BLOCK)
        return
    w_, g_, b_ = _slices(first, count, w, g, buf)
    new_b = b_ * momentum + (g_.float() + weight_decay * w_.float()) * layout.expand(scale, first, count)
    _commit(layout, active, first, count, [(b_, new_b), (w_, w_.float() - new_b)])


def adam_update(layout, w, g, m, v, active, clip, first, count, *, lr, beta1, beta2, eps, weight_decay,
                decoupled, step):
    bc1, bc2 = 1.0 - beta1 ** step, 1.0 - beta2 ** step
    step_size, sqrt_bc2, decay = lr / bc1, bc2 ** 0.5, 1.0 - lr * weight_decay
    if use_triton(w):
        _adam_kernel[(count,)](w, g, m, v, layout.block_tensor, active, clip, first, beta1, beta2, eps,
                               weight_decay, decay, step_size, sqrt_bc2, DECOUPLED=decoupled,
                               HAS_CLIP=clip is not None, HAS_ACTIVE=active is not None, BLOCK_SIZE=BLOCK)
        return
    w_, g_, m_, v_ = _slices(first, count, w, g, m, v)
    if active is None and w_.dtype == torch.float32:
        _adam_in_place(w_, g_, m_, v_, clip, beta1=beta1, beta2=beta2, eps=eps, weight_decay=weight_decay,
                       decoupled=decoupled, decay=decay, step_size=step_size, sqrt_bc2=sqrt_bc2)
        return
    grad, weight = g_.float() * (clip if clip is not None else 1.0), w_.float()
    if decoupled:
        weight = weight * decay
    else:
        grad = grad + weight_decay * weight
    new_m = m_ + (1.0 - beta1) * (grad - m_)
    new_v = v_ * beta2 + (1.0 - beta2) * grad * grad
    new_w = weight - step_size * (new_m / (new_v.sqrt() / sqrt_bc2 + eps))
    _commit(layout, active, first, count, [(m_, new_m), (v_, new_v), (w_, new_w)])


def _adam_in_place(w_, g_, m_, v_, clip, *, beta1, beta2, eps, weight_decay, decoupled, decay, step_size,
                   sqrt_bc2) -> None:
    """adam_update's reference arithmetic, operation for operation (so the same bits), on fp32 buffers updated in
    place with one scratch buffer: every parameter active, so nothing needs masking. The out-of-place form costs
    ~20 passes over the flat buffers and allocates each temporary; this one ~12 and one allocation."""
    grad = g_.float() if clip is None else g_.float() * clip
    if decoupled:
        w_.mul_(decay)
    elif weight_decay != 0.0:
        grad = grad + weight_decay * w_
    t = torch.sub(grad, m_)
    m_.add_(t.mul_(1.0 - beta1))
    torch.mul(grad, 1.0 - beta2, out=t).mul_(grad)
    v_.mul_(beta2).add_(t)
    torch.sqrt(v_, out=t).div_(sqrt_bc2).add_(eps)
    torch.div(m_, t, out=t).mul_(step_size)
    w_.sub_(t)


def adagrad_update(layout, w, g, s, active, first, count, *, clr, eps, weight_decay):
    if use_triton(w):
        _adagrad_kernel[(count,)](w, g, s, layout.block_tensor, active, first, clr, eps, weight_decay,
                                  HAS_ACTIVE=active is not None, BLOCK_SIZE=BLOCK)
        return
    w_, g_, s_ = _slices(first, count, w, g, s)
    # torch.optim.Adagrad's own operations, so that this path agrees with it bit for bit
    grad = g_.float().add(w_.float(), alpha=weight_decay) if weight_decay != 0 else g_.float()
    new_s = torch.addcmul(s_, grad, grad)
    _commit(layout, active, first, count, [(s_, new_s), (w_, w_.float() + (-clr * grad) / (new_s.sqrt() + eps))])


def sgd_update(layout, w, g, buf, active, first, count, *, lr, weight_decay, momentum, nesterov):
    if use_triton(w):
        _sgd_kernel[(count,)](w, g, buf, layout.block_tensor, active, first, lr, weight_decay, momentum,
                              NESTEROV=nesterov, HAS_ACTIVE=active is not None, BLOCK_SIZE=BLOCK)
        return
    w_, g_, b_ = _slices(first, count, w, g, buf)
    # torch.optim.SGD's own operations (dampening 0), so that this path agrees with it bit for bit
    d = g_.float().add(w_.float(), alpha=weight_decay) if weight_decay != 0 else g_.float()
    new_b = b_.mul(momentum).add_(d)
    d = d.add(new_b, alpha=momentum) if nesterov else new_b
    _commit(layout, active, first, count, [(b_, new_b), (w_, w_.float().add(d, alpha=-lr))])


def lamb_moments(layout, w, g, m, v, u, partial, active, clip, first, count, *, beta1, beta2, eps,
                 weight_decay, bc1, bc2):
    if use_triton(w):
        _lamb_moments_kernel[(count,)](w, g, m, v, u, partial, layout.block_tensor, active, clip, first,
                                       layout.num_blocks, beta1, beta2, eps, weight_decay, bc1, bc2,
                                       HAS_ACTIVE=active is not None, BLOCK_SIZE=BLOCK)
        return
    w_, g_, m_, v_, u_ = _slices(first, count, w, g, m, v, u)
    grad = g_.float() * clip
    new_m = m_ * beta1 + (1.0 - beta1) * grad
    new_v = v_ * beta2 + (1.0 - beta2) * grad * grad
    new_u = (new_m / bc1) / ((new_v / bc2).sqrt() + eps) + weight_decay * w_.float()
    if active is not None:
        new_u = torch.where(layout.expand(active, first, count).bool(), new_u, 0.0)
    _commit(layout, active, first, count, [(m_, new_m), (v_, new_v)])
    u_.copy_(new_u)
    partial[0, first:first + count] = w_.float().view(-1, BLOCK).pow(2).sum(1)
    partial[1, first:first + count] = new_u.view(-1, BLOCK).pow(2).sum(1)


def scaled_sub(layout, w, u, scale, active, first, count):
    if use_triton(w):
        _scaled_sub_kernel[(count,)](w, u, layout.block_tensor, active, scale, first,
                                     HAS_ACTIVE=active is not None, BLOCK_SIZE=BLOCK)
        return
    w_, u_ = _slices(first, count, w, u)
    _commit(layout, active, first, count, [(w_, w_.float() - layout.expand(scale, first, count) * u_)])

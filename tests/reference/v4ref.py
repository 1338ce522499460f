#!/usr/bin/python3
"""v4ref -- independent NumPy reference of the DeepSeek-V4 forward pass.

Written from docs/V4-MODEL.md (sections 2, 3, 4, 5.1, 10) only; it shares no code
with engine/ or kernels/.  It is the numeric oracle for tests/reference/compare.py.

Numerics (V4-MODEL.md 4.11b target):
  * every weight is dequantised exactly to float32 up front (FP8 e4m3 x ue8m0 128x128
    blocks, FP4 e2m1 x ue8m0 1x32 blocks, BF16, F32);
  * activations and accumulations are float32 everywhere (float64 with --f64, for
    diagnostics only).  NO bf16 rounding of activations and NO FP8 activation
    quantisation before GEMMs;
  * the quantisers that ARE emulated exactly: window / compressed KV FP8 e4m3
    fake-quant of the non-rope dims (64-blocks), and the indexer's Hadamard + FP4 e2m1
    fake-quant (32-blocks) of indexer q and indexer keys.

The model is run token by token (position 0, 1, 2, ...) with explicit per-layer state:
window of past kv vectors, compressed entries, indexer keys, compressor block buffers.

CLI:
  /usr/bin/python3 tests/reference/v4ref.py -m MODEL_DIR --prompt-ids 5,17,42 -n 8 \
      [--gen-ids a,b,...] [--logits-out FILE] [--mtp-out FILE] [--f64] [--diag]
"""

import argparse
import json
import math
import os
import struct
import sys

import numpy as np

# Working float type.  float32 by default (closest to a float32 C engine); set_dtype()
# switches to float64 for diagnostics.
DT = np.float32


def set_dtype(dt):
    global DT
    DT = dt


# ----------------------------------------------------------------------------------------
# Diagnostics: counts of decisions that sit within a hair of a tie.  A float32 engine that
# sums in another order may legitimately decide those differently; --diag reports them.
# ----------------------------------------------------------------------------------------

class Diag:
    """Records, for every discrete decision (FP8/FP4 rounding and scale choice, MoE and
    indexer top-k), its relative distance to the nearest tie ("margin").  A decision whose
    margin is below float32 noise (~1e-6) may legitimately go the other way in an engine
    that sums in another order, and any such flip cascades into O(1e-2) logit changes."""

    def __init__(self):
        self.enabled = False
        self.ctx = ""
        self.records = []   # (margin, kind, ctx)

    def margin(self, kind, rel):
        if self.enabled:
            self.records.append((float(rel), kind, self.ctx))

    def summary(self):
        if not self.records:
            return "v4ref-diag: no discrete decisions recorded"
        r = min(self.records)
        n6 = sum(1 for x in self.records if x[0] < 1e-6)
        n5 = sum(1 for x in self.records if x[0] < 1e-5)
        nt = sum(1 for x in self.records if x[1].endswith("exact-tie"))
        return (f"v4ref-diag: decisions={len(self.records)} below_1e-6={n6} below_1e-5={n5} "
                f"exact_ties={nt} min_margin={r[0]:.3g} kind={r[1]} at={r[2].replace(' ', '_')}")


DIAG = Diag()


# ----------------------------------------------------------------------------------------
# safetensors reading and exact dequantisation
# ----------------------------------------------------------------------------------------

def _e4m3_table():
    """float64 value of each of the 256 e4m3fn codes (bias 7, no inf, 0x7F/0xFF = NaN)."""
    t = np.zeros(256, np.float64)
    for b in range(256):
        s = -1.0 if b & 0x80 else 1.0
        e = (b >> 3) & 0xF
        m = b & 0x7
        if e == 15 and m == 7:
            t[b] = np.nan
        elif e == 0:
            t[b] = s * (m / 8.0) * 2.0 ** -6          # subnormal
        else:
            t[b] = s * (1.0 + m / 8.0) * 2.0 ** (e - 7)
    return t


E4M3_TABLE = _e4m3_table()
# e2m1 nibble -> value (bit 3 = sign)
E2M1_TABLE = np.array([0, 0.5, 1, 1.5, 2, 3, 4, 6,
                       -0.0, -0.5, -1, -1.5, -2, -3, -4, -6], np.float64)

_ST_DTYPES = {
    "F8_E4M3": (np.uint8, 1), "F8_E8M0": (np.uint8, 1), "I8": (np.int8, 1),
    "U8": (np.uint8, 1), "BF16": (np.uint16, 2), "F16": (np.float16, 2),
    "F32": (np.float32, 4), "F64": (np.float64, 8), "I32": (np.int32, 4),
    "I64": (np.int64, 8),
}


def read_safetensors(path):
    """-> {name: (dtype_string, raw numpy array with the stored shape)}"""
    out = {}
    with open(path, "rb") as f:
        (hlen,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(hlen))
        base = 8 + hlen
    mm = np.memmap(path, dtype=np.uint8, mode="r")
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dt = info["dtype"]
        if dt not in _ST_DTYPES:
            raise ValueError(f"{path}: tensor {name}: unsupported dtype {dt}")
        npdt, size = _ST_DTYPES[dt]
        a, b = info["data_offsets"]
        shape = tuple(info["shape"])
        n = int(np.prod(shape)) if shape else 1
        if b - a != n * size:
            raise ValueError(f"{path}: tensor {name}: byte size {b - a} != {n}*{size}")
        raw = np.frombuffer(mm[base + a: base + b].tobytes(), dtype=np.dtype(npdt).newbyteorder("<"))
        out[name] = (dt, raw.reshape(shape))
    return out


def e8m0_to_f64(u8):
    """ue8m0 scale byte b -> 2^(b-127)  (0xFF = NaN)."""
    u = u8.astype(np.int64)
    v = np.ldexp(1.0, u - 127)
    return np.where(u == 255, np.nan, v)


def bf16_to_f64(u16):
    return (u16.astype(np.uint32) << 16).view(np.float32).astype(np.float64)


def dequant_fp8(wq, scale):
    """wq: uint8 [out, in] e4m3; scale: [ceil(out/128), ceil(in/128)] float64 -> [out, in]"""
    out_, in_ = wq.shape
    w = E4M3_TABLE[wq]                                           # [out, in]
    s = np.repeat(np.repeat(scale, 128, axis=0), 128, axis=1)[:out_, :in_]
    return w * s


def dequant_fp4(wq, scale):
    """wq: int8 [out, in/2] (low nibble = even element); scale [out, in/32] -> [out, in]"""
    u = wq.view(np.uint8)
    out_, half = u.shape
    w = np.empty((out_, 2 * half), np.float64)
    w[:, 0::2] = E2M1_TABLE[u & 0x0F]
    w[:, 1::2] = E2M1_TABLE[u >> 4]
    blk = (2 * half) // scale.shape[1]
    if blk * scale.shape[1] != 2 * half:
        raise ValueError(f"fp4 scale shape {scale.shape} does not tile {w.shape}")
    return w * np.repeat(scale, blk, axis=1)


def load_checkpoint(model_dir):
    """-> {name: np.ndarray}: float64 (exact dequantised values) or int64 (I64 tensors)."""
    idx = os.path.join(model_dir, "model.safetensors.index.json")
    if os.path.exists(idx):
        with open(idx) as f:
            files = sorted(set(json.load(f)["weight_map"].values()))
    else:
        files = sorted(x for x in os.listdir(model_dir) if x.endswith(".safetensors"))
    if not files:
        raise FileNotFoundError(f"{model_dir}: no safetensors files")
    raw = {}
    for fn in files:
        raw.update(read_safetensors(os.path.join(model_dir, fn)))

    def scale_of(name):
        for sname in (name[:-len(".weight")] + ".scale", name + "_scale_inv",
                      name[:-len(".weight")] + ".weight_scale_inv"):
            if sname in raw:
                dt, s = raw[sname]
                if dt == "F8_E8M0":
                    return sname, e8m0_to_f64(s)
                if dt == "F32":
                    return sname, s.astype(np.float64)
                if dt == "BF16":
                    return sname, bf16_to_f64(s)
                raise ValueError(f"{sname}: unsupported scale dtype {dt}")
        raise KeyError(f"{name}: quantised weight without a scale tensor")

    W, used_scales = {}, set()
    for name, (dt, a) in raw.items():
        if dt == "F8_E4M3":
            sname, s = scale_of(name)
            used_scales.add(sname)
            W[name] = dequant_fp8(a, s)
        elif dt == "I8":                      # packed FP4 e2m1 (routed experts)
            sname, s = scale_of(name)
            used_scales.add(sname)
            W[name] = dequant_fp4(a, s)
        elif dt == "BF16":
            W[name] = bf16_to_f64(a)
        elif dt in ("F32", "F16", "F64"):
            W[name] = a.astype(np.float64)
        elif dt in ("I64", "I32"):
            W[name] = a.astype(np.int64)
        elif dt in ("F8_E8M0", "U8"):
            pass                              # scales; consumed above
        else:
            raise ValueError(f"{name}: unsupported dtype {dt}")
    return W


# ----------------------------------------------------------------------------------------
# Configuration (both dialects, V4-MODEL.md 2.1)
# ----------------------------------------------------------------------------------------

class Config:
    pass


def load_config(model_dir):
    p_inf = os.path.join(model_dir, "inference", "config.json")
    p_hf = os.path.join(model_dir, "config.json")
    c = Config()
    if os.path.exists(p_inf):
        with open(p_inf) as f:
            j = json.load(f)
        c.dialect = "inference"

        def g(key, default=KeyError):
            if key in j and j[key] is not None:
                return j[key]
            if default is KeyError:
                raise KeyError(f"{p_inf}: missing key '{key}'")
            return default
        c.vocab_size = g("vocab_size")
        c.dim = g("dim")
        c.n_layers = g("n_layers")
        c.n_mtp = g("n_mtp_layers", 1)
        c.n_heads = g("n_heads")
        c.head_dim = g("head_dim")
        c.rope_dim = g("rope_head_dim")
        c.q_lora_rank = g("q_lora_rank")
        c.o_groups = g("o_groups")
        c.o_lora_rank = g("o_lora_rank")
        c.window = g("window_size")
        c.compress_ratios = list(g("compress_ratios"))
        c.rope_theta = g("rope_theta", 10000.0)
        c.compress_rope_theta = g("compress_rope_theta", None)
        c.rope_factor = g("rope_factor", 1.0)
        c.original_seq_len = g("original_seq_len", 0)
        c.beta_fast = g("beta_fast", 32)
        c.beta_slow = g("beta_slow", 1)
        c.index_n_heads = g("index_n_heads", 0)
        c.index_head_dim = g("index_head_dim", 0)
        c.index_topk = g("index_topk", 0)
        c.n_experts = g("n_routed_experts")
        c.n_shared = g("n_shared_experts", 1)
        c.topk_experts = g("n_activated_experts")
        c.moe_inter_dim = g("moe_inter_dim")
        c.n_hash_layers = g("n_hash_layers", 0)
        c.route_scale = g("route_scale", 1.0)
        c.swiglu_limit = g("swiglu_limit", 0.0)
        c.hc_mult = g("hc_mult", 4)
        c.hc_iters = g("hc_sinkhorn_iters", 20)
        c.hc_eps = g("hc_eps", 1e-6)
        c.norm_eps = g("norm_eps", 1e-6)
        sf = g("score_func", "sqrtsoftplus")
    elif os.path.exists(p_hf):
        with open(p_hf) as f:
            j = json.load(f)
        c.dialect = "hf"

        def g(key, default=KeyError):
            if key in j and j[key] is not None:
                return j[key]
            if default is KeyError:
                raise KeyError(f"{p_hf}: missing key '{key}'")
            return default
        c.vocab_size = g("vocab_size")
        c.dim = g("hidden_size")
        c.n_layers = g("num_hidden_layers")
        c.n_mtp = g("num_nextn_predict_layers", 0)
        c.n_heads = g("num_attention_heads")
        if g("num_key_value_heads", 1) != 1:
            raise ValueError("num_key_value_heads must be 1 (shared-KV MQA)")
        c.head_dim = g("head_dim")
        c.rope_dim = g("qk_rope_head_dim")
        c.q_lora_rank = g("q_lora_rank")
        c.o_groups = g("o_groups")
        c.o_lora_rank = g("o_lora_rank")
        c.window = g("sliding_window")
        c.compress_ratios = list(g("compress_ratios"))
        c.rope_theta = g("rope_theta", 10000.0)
        c.compress_rope_theta = g("compress_rope_theta", None)
        rs = g("rope_scaling", None) or {}
        c.rope_factor = rs.get("factor", 1.0)
        c.original_seq_len = rs.get("original_max_position_embeddings", 0) if rs else 0
        c.beta_fast = rs.get("beta_fast", 32)
        c.beta_slow = rs.get("beta_slow", 1)
        c.index_n_heads = g("index_n_heads", 0)
        c.index_head_dim = g("index_head_dim", 0)
        c.index_topk = g("index_topk", 0)
        c.n_experts = g("n_routed_experts")
        c.n_shared = g("n_shared_experts", 1)
        c.topk_experts = g("num_experts_per_tok")
        c.moe_inter_dim = g("moe_intermediate_size")
        c.n_hash_layers = g("num_hash_layers", 0)
        c.route_scale = g("routed_scaling_factor", 1.0)
        c.swiglu_limit = g("swiglu_limit", 0.0)
        c.hc_mult = g("hc_mult", 4)
        c.hc_iters = g("hc_sinkhorn_iters", 20)
        c.hc_eps = g("hc_eps", 1e-6)
        c.norm_eps = g("rms_norm_eps", 1e-6)
        sf = g("scoring_func", "sqrtsoftplus")
    else:
        raise FileNotFoundError(f"{model_dir}: neither inference/config.json nor config.json")
    if sf != "sqrtsoftplus":
        raise ValueError(f"score function '{sf}' not supported (need sqrtsoftplus)")
    if any(r > 0 for r in c.compress_ratios) and c.compress_rope_theta is None:
        raise KeyError("compress_rope_theta missing but compress_ratios has compressed layers")
    if c.hc_iters < 1:
        raise ValueError("hc_sinkhorn_iters must be >= 1")
    # compress_ratios has n_layers + n_mtp entries; the MTP block uses index n_layers.
    while len(c.compress_ratios) < c.n_layers + max(c.n_mtp, 1):
        c.compress_ratios.append(0)
    return c


# ----------------------------------------------------------------------------------------
# Numeric primitives
# ----------------------------------------------------------------------------------------

def ceil_log2(x):
    """Exact ceil(log2(x)) of positive floats (from the binary exponent, no libm log2)."""
    m, e = np.frexp(x)                     # x = m * 2^e, m in [0.5, 1)
    return np.where(m == 0.5, e - 1, e).astype(np.int64)


def pow2(e):
    return np.ldexp(np.ones_like(e, dtype=DT), e).astype(DT)


def round_half_even(x):
    return np.round(x)                     # numpy rounds halves to even


def e4m3_round(x):
    """Round values already clamped to [-448, 448] onto the e4m3fn grid, nearest-even,
    including subnormals (spacing 2^-9 below 2^-6)."""
    ax = np.abs(x)
    _, e = np.frexp(ax)                    # floor(log2 ax) = e - 1  (ax > 0)
    expo = np.maximum(e.astype(np.int64) - 1, -6)
    q = pow2(expo - 3)                     # quantum of x's binade (3 mantissa bits)
    y = x / q                              # exact (power-of-two division)
    return (round_half_even(y) * q).astype(DT)


def e2m1_round(x):
    """Round values already clamped to [-6, 6] onto {0,.5,1,1.5,2,3,4,6}, nearest-even."""
    ax = np.abs(x)
    q = np.where(ax < 2, DT(0.5), np.where(ax < 4, DT(1.0), DT(2.0))).astype(DT)
    y = x / q
    return (round_half_even(y) * q).astype(DT)


def _diag_quant(kind, x, rounded, amax_scaled, ratio):
    """Margins of one fake-quant call: x = clamped scaled values [..., nb, block],
    rounded = their grid values, amax_scaled = block amax / s, ratio = amax / fmt_max."""
    # rounding: distance to the rounding midpoint, relative to the block's amax
    step = np.abs(np.abs(x) - np.abs(rounded))          # distance to the chosen grid point
    # the midpoint lies half a quantum away from the grid point: recover the local quantum
    # as the gap between neighbouring grid points around |rounded|
    q = _local_quantum(kind, np.abs(x))
    d = np.abs(q / 2 - step)
    DIAG.margin(kind + "-round", np.min(d / np.maximum(amax_scaled, 1e-30)))
    m, _ = np.frexp(ratio)                              # ratio = m 2^e, m in [0.5, 1)
    DIAG.margin(kind + "-scale", np.min(np.minimum((m - 0.5) / 0.5, 1.0 - m)))


def _local_quantum(kind, ax):
    if kind == "fp8":
        _, e = np.frexp(ax)
        return np.ldexp(1.0, np.maximum(e.astype(np.int64) - 1, -6) - 3)
    return np.where(ax < 2, 0.5, np.where(ax < 4, 1.0, 2.0))


def _blocked(v, block):
    """[..., n] -> ([..., nb, block] zero-padded view copy, n).  Zero padding changes
    neither a block's amax nor its other values."""
    n = v.shape[-1]
    nb = -(-n // block)
    pad = nb * block - n
    if pad:
        v = np.concatenate([v, np.zeros(v.shape[:-1] + (pad,), v.dtype)], axis=-1)
    return v.reshape(v.shape[:-1] + (nb, block)), n


def fake_quant_fp8(v, block=64):
    """FakeQuantFP8_64: per block s = 2^ceil(log2(max(amax,1e-4)/448)),
    v <- e4m3_round(clamp(v/s, +-448)) * s.   v: [..., n] (last block may be partial)."""
    b, n = _blocked(v.astype(DT), block)                      # [..., nb, block]
    amax = np.max(np.abs(b), axis=-1, keepdims=True)          # [..., nb, 1]
    ratio = np.maximum(amax, DT(1e-4)) / DT(448.0)
    s = pow2(ceil_log2(ratio))
    x = np.clip(b / s, DT(-448.0), DT(448.0))
    r = e4m3_round(x)
    if DIAG.enabled:
        _diag_quant("fp8", x, r, amax / s, ratio)
    q = r * s
    return q.reshape(q.shape[:-2] + (-1,))[..., :n].astype(DT)


def fake_quant_fp4(v, block=32):
    """FakeQuantFP4_32: per block s = 2^ceil(log2(max(amax, 6*2^-126)/6)),
    v <- e2m1_round(clamp(v/s, +-6)) * s.   v: [..., n]."""
    b, n = _blocked(v.astype(DT), block)
    amax = np.max(np.abs(b), axis=-1, keepdims=True)
    ratio = np.maximum(amax, DT(6.0 * 2.0 ** -126)) / DT(6.0)
    s = pow2(ceil_log2(ratio))
    x = np.clip(b / s, DT(-6.0), DT(6.0))
    r = e2m1_round(x)
    if DIAG.enabled:
        _diag_quant("fp4", x, r, amax / s, ratio)
    q = r * s
    return q.reshape(q.shape[:-2] + (-1,))[..., :n].astype(DT)


def hadamard_pm1(n):
    """Sylvester-order Hadamard matrix of +-1 entries, [n, n] (n a power of two)."""
    if n < 1 or n & (n - 1):
        raise ValueError(f"Hadamard size {n} is not a power of two")
    h = np.ones((1, 1))
    while h.shape[0] < n:
        h = np.block([[h, h], [h, -h]])
    return h


def hadamard(x, hpm1):
    """Orthonormal Walsh-Hadamard on the last axis: y = (H x) / sqrt(n).  x: [..., n]"""
    n = hpm1.shape[0]
    return ((x @ hpm1.T.astype(DT)) * DT(1.0 / math.sqrt(n))).astype(DT)


def yarn_range(rd, base, factor, orig, beta_fast, beta_slow):
    """(low, high) of the YaRN ramp (V4-MODEL.md 4.0): corr(r) = rd*ln(orig/(2*pi*r)) /
    (2*ln(base)); low = max(floor(corr(beta_fast)), 0); high = min(ceil(corr(beta_slow)), rd-1)."""
    def corr(r):
        return rd * math.log(orig / (r * 2 * math.pi)) / (2 * math.log(base))
    return max(math.floor(corr(beta_fast)), 0), min(math.ceil(corr(beta_slow)), rd - 1)


def rope_freqs(rd, base, yarn=None):
    """Frequencies f[i], i < rd/2, in float64.  yarn = (factor, original_seq_len,
    beta_fast, beta_slow) or None.  V4-MODEL.md 4.0."""
    i = np.arange(rd // 2, dtype=np.float64)
    f0 = base ** (-2.0 * i / rd)                      # f0[i] = base^(-2i/rd)
    if yarn is None:
        return f0
    factor, orig, beta_fast, beta_slow = yarn
    low, high = yarn_range(rd, base, factor, orig, beta_fast, beta_slow)
    if low == high:
        high += 0.001
    ramp = np.clip((i - low) / (high - low), 0.0, 1.0)
    smooth = 1.0 - ramp
    return f0 / factor * (1.0 - smooth) + f0 * smooth


class Rope:
    """Interleaved RoPE on the LAST rd dims.  cos/sin are evaluated in float64
    (angle = pos * f[i] in float64) and rounded to the working type."""

    def __init__(self, rd, freqs):
        self.rd = rd
        self.f = freqs                  # [rd/2] float64
        self._cache = {}

    def cs(self, pos):
        r = self._cache.get(pos)
        if r is None:
            ang = pos * self.f                                   # [rd/2]
            r = (np.cos(ang).astype(DT), np.sin(ang).astype(DT))
            self._cache[pos] = r
        return r

    def apply(self, v, pos, inverse=False):
        """v: [..., n]; rotates pairs (v[n-rd+2i], v[n-rd+2i+1]) by pos*f[i] (or -pos*f[i])."""
        c, s = self.cs(pos)
        if inverse:
            s = -s
        out = v.astype(DT, copy=True)
        nd = v.shape[-1] - self.rd
        a = v[..., nd::2]                                        # [..., rd/2]
        b = v[..., nd + 1::2]
        out[..., nd::2] = a * c - b * s
        out[..., nd + 1::2] = a * s + b * c
        return out


# Optional float-noise injection (None, or (numpy Generator, relative size)).  Used only by
# the stability check in compare.py: it imitates an engine that sums in another order.
NOISE = None

# A planted bug (None or one of PLANTS), for the mutation checks of test_reference: the
# comparison must fail when the reference computes a plausible slip of the spec.
PLANTS = ("rope-sign", "compressor-late", "no-sink")
PLANT = None


def linear(w, x):
    """y = x W^T (no bias anywhere in V4).  w: [out, in], x: [..., in] -> [..., out]"""
    y = (x @ w.T).astype(DT)
    if NOISE is not None:
        rng, rel = NOISE
        y = (y * (1.0 + rel * rng.standard_normal(y.shape))).astype(DT)
    return y


def rmsnorm(x, w, eps):
    """x: [..., n]; y = w * x / sqrt(mean(x^2) + eps) (w None = unweighted)."""
    r = DT(1.0) / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + DT(eps))
    y = x * r
    if w is not None:
        y = y * w
    return y.astype(DT)


def sigmoid(x):
    with np.errstate(over="ignore"):          # exp(-x) -> inf gives the right limit 0
        return (DT(1.0) / (DT(1.0) + np.exp(-x))).astype(DT)


def softmax(x, axis):
    m = np.max(x, axis=axis, keepdims=True)
    e = np.exp(x - m)
    return (e / np.sum(e, axis=axis, keepdims=True)).astype(DT)


def sinkhorn(c, iters, eps):
    """c: [hc, hc] logits -> doubly-stochastic-ish matrix (V4-MODEL.md 4.3):
    row softmax + eps, column normalise, then (iters-1) x (row, column) normalisation."""
    eps = DT(eps)
    c = softmax(c, axis=1) + eps
    c = c / (np.sum(c, axis=0, keepdims=True) + eps)
    for _ in range(iters - 1):
        c = c / (np.sum(c, axis=1, keepdims=True) + eps)
        c = c / (np.sum(c, axis=0, keepdims=True) + eps)
    return c.astype(DT)


def stable_topk(scores, k, kind="topk"):
    """Indices of the k largest scores, ties broken by the lower index; sorted by rank."""
    order = np.argsort(-scores, kind="stable")
    if DIAG.enabled and 0 < k < len(scores):
        a, b = scores[order[k - 1]], scores[order[k]]
        if a == b:
            # exact tie at the cut, resolved by the lower index.  Common in the indexer: its
            # q and k are FP4-grid values with power-of-two scales, so q.k is exact in any
            # float32 order and equal (often 0 after ReLU) scores really are equal.
            DIAG.margin(kind + "-exact-tie", float("inf"))
        else:
            DIAG.margin(kind, float(a - b) / max(float(np.max(np.abs(scores))), 1e-30))
    return order[:k]


# ----------------------------------------------------------------------------------------
# mHC (V4-MODEL.md 4.3)
# ----------------------------------------------------------------------------------------

class HC:
    """One hyper-connection site (hc_attn or hc_ffn) of a block."""

    def __init__(self, fn, scale, base, hc, iters, hc_eps, norm_eps):
        self.fn = fn            # [(2+hc)*hc, hc*D]
        self.scale = scale      # [3]
        self.base = base        # [(2+hc)*hc]
        self.hc, self.iters, self.hc_eps, self.norm_eps = hc, iters, hc_eps, norm_eps

    def pre(self, X):
        """X: [hc, D] -> (a [D], post [hc], C [hc, hc])"""
        hc = self.hc
        v = X.reshape(-1)                                            # [hc*D], stream-major
        r = DT(1.0) / np.sqrt(np.mean(v * v) + DT(self.norm_eps))
        mix = linear(self.fn, v) * r                                     # [(2+hc)*hc]
        pre = sigmoid(mix[:hc] * self.scale[0] + self.base[:hc]) + DT(self.hc_eps)     # [hc]
        post = DT(2.0) * sigmoid(mix[hc:2 * hc] * self.scale[1] + self.base[hc:2 * hc])  # [hc]
        C = (mix[2 * hc:] * self.scale[2] + self.base[2 * hc:]).reshape(hc, hc)      # C[j][k]
        C = sinkhorn(C, self.iters, self.hc_eps)
        a = (pre @ X).astype(DT)                                     # [D] = sum_s pre[s] X[s]
        return a, post, C

    @staticmethod
    def post(o, X, post, C):
        """Xnew[k] = post[k] * o + sum_j C[j][k] * X[j].   o [D], X [hc, D] -> [hc, D]"""
        return (post[:, None] * o[None, :] + C.T @ X).astype(DT)


def hc_head(X, fn, scale, base, hc_eps, norm_eps):
    """Final collapse: X [hc, D] -> [D] (no Sinkhorn, no post)."""
    v = X.reshape(-1)
    r = DT(1.0) / np.sqrt(np.mean(v * v) + DT(norm_eps))
    mix = linear(fn, v) * r                                            # [hc]
    pre = sigmoid(mix * scale[0] + base) + DT(hc_eps)                # [hc]
    return (pre @ X).astype(DT)


# ----------------------------------------------------------------------------------------
# Compressor (V4-MODEL.md 4.6) -- one instance per (layer, attention|indexer)
# ----------------------------------------------------------------------------------------

class Compressor:
    def __init__(self, W, pfx, ratio, d, rope, norm_eps, kind, hpm1=None):
        self.m = ratio
        self.overlap = ratio == 4                   # CSA: 8-slot overlapping pooling
        self.c = 2 if self.overlap else 1
        self.d = d
        self.wkv = W[pfx + "wkv.weight"]            # [c*d, D]
        self.wgate = W[pfx + "wgate.weight"]        # [c*d, D]
        self.ape = W[pfx + "ape"]                   # [m, c*d]
        self.norm = W[pfx + "norm.weight"]          # [d]
        for nm, t, shp in (("wkv", self.wkv, (self.c * d, None)), ("ape", self.ape, (ratio, self.c * d)),
                           ("norm", self.norm, (d,))):
            if t.shape[0] != shp[0] or (len(shp) > 1 and shp[1] is not None and t.shape[1] != shp[1]):
                raise ValueError(f"{pfx}{nm}: shape {t.shape}, expected {shp}")
        self.rope, self.norm_eps, self.kind, self.hpm1 = rope, norm_eps, kind, hpm1
        self.reset()

    def reset(self):
        self.prev = None        # (K [m, c*d], Z [m, c*d]) of the previous complete block
        self.cur_k = []         # K_t of the current block so far
        self.cur_z = []         # Z_t (score incl. ape) of the current block so far
        self.late = None        # PLANT "compressor-late": the entry held back one token

    def push(self, a, p):
        """Feed token p's normalised block input a [D]; returns the new entry c_j [d]
        when (p+1) mod m == 0 (j = p div m), else None."""
        if PLANT == "compressor-late":            # the entry reaches the token after its block
            late, self.late = getattr(self, "late", None), self._push(a, p)
            return late
        return self._push(a, p)

    def _push(self, a, p):
        m, d = self.m, self.d
        self.cur_k.append(linear(self.wkv, a))                        # [c*d]
        self.cur_z.append((linear(self.wgate, a) + self.ape[p % m]).astype(DT))  # [c*d]
        if (p + 1) % m != 0:
            return None
        j = p // m
        K = np.stack(self.cur_k)                                      # [m, c*d]
        Z = np.stack(self.cur_z)                                      # [m, c*d]
        if self.overlap:
            sk, sz = K[:, d:], Z[:, d:]                               # Kb/Zb of block j
            if self.prev is not None:                                 # Ka/Za of block j-1
                sk = np.concatenate([self.prev[0][:, :d], sk], axis=0)   # [8, d]
                sz = np.concatenate([self.prev[1][:, :d], sz], axis=0)
        else:
            sk, sz = K, Z                                             # [m, d]
        w = softmax(sz, axis=0)                                       # per-channel softmax
        c = np.sum(w * sk, axis=0).astype(DT)                         # [d]
        self.prev = (K, Z)
        self.cur_k, self.cur_z = [], []
        c = rmsnorm(c, self.norm, self.norm_eps)
        c = self.rope.apply(c, j * m)                                 # RoPE position j*m
        if self.kind == "attn":
            nd = d - self.rope.rd
            c[:nd] = fake_quant_fp8(c[:nd], 64)
        else:                                                         # indexer keys
            c = fake_quant_fp4(hadamard(c, self.hpm1), 32)
        return c


# ----------------------------------------------------------------------------------------
# Block (main layers and the MTP block): attention half + FFN half
# ----------------------------------------------------------------------------------------

class Block:
    def __init__(self, cfg, W, pfx, layer_id, rope_main, rope_comp):
        self.cfg = cfg
        self.layer_id = layer_id
        self.m = cfg.compress_ratios[layer_id]
        self.rope = rope_main if self.m == 0 else rope_comp
        hc, D = cfg.hc_mult, cfg.dim
        H, hd, rd = cfg.n_heads, cfg.head_dim, cfg.rope_dim
        self.H, self.hd, self.rd = H, hd, rd
        self.eps = cfg.norm_eps

        def t(name, shape=None):
            key = pfx + name
            if key not in W:
                raise KeyError(f"missing tensor {key}")
            x = W[key]
            if shape is not None and tuple(x.shape) != tuple(shape):
                raise ValueError(f"{key}: shape {tuple(x.shape)}, expected {tuple(shape)}")
            return x

        nmix = (2 + hc) * hc
        self.hc_attn = HC(t("hc_attn_fn", (nmix, hc * D)), t("hc_attn_scale", (3,)),
                          t("hc_attn_base", (nmix,)), hc, cfg.hc_iters, cfg.hc_eps, cfg.norm_eps)
        self.hc_ffn = HC(t("hc_ffn_fn", (nmix, hc * D)), t("hc_ffn_scale", (3,)),
                         t("hc_ffn_base", (nmix,)), hc, cfg.hc_iters, cfg.hc_eps, cfg.norm_eps)
        self.attn_norm = t("attn_norm.weight", (D,))
        self.ffn_norm = t("ffn_norm.weight", (D,))
        # ---- attention ----
        Rq, G, Ro = cfg.q_lora_rank, cfg.o_groups, cfg.o_lora_rank
        if H % G:
            raise ValueError("n_heads must be a multiple of o_groups")
        self.G, self.Ro = G, Ro
        self.sink = t("attn.attn_sink", (H,))
        self.wq_a = t("attn.wq_a.weight", (Rq, D))
        self.q_norm = t("attn.q_norm.weight", (Rq,))
        self.wq_b = t("attn.wq_b.weight", (H * hd, Rq))
        self.wkv = t("attn.wkv.weight", (hd, D))
        self.kv_norm = t("attn.kv_norm.weight", (hd,))
        self.wo_a = t("attn.wo_a.weight", (G * Ro, H * hd // G)).reshape(G, Ro, H * hd // G)
        self.wo_b = t("attn.wo_b.weight", (D, G * Ro))
        self.scale = DT(hd ** -0.5)
        self.comp = self.idx_comp = None
        if self.m > 0:
            self.comp = Compressor(W, pfx + "attn.compressor.", self.m, hd, self.rope, self.eps, "attn")
        if self.m == 4:
            Hi, di = cfg.index_n_heads, cfg.index_head_dim
            self.Hi, self.di = Hi, di
            self.hpm1 = hadamard_pm1(di)
            self.idx_wq_b = t("attn.indexer.wq_b.weight", (Hi * di, Rq))
            self.idx_wproj = t("attn.indexer.weights_proj.weight", (Hi, D))
            self.idx_wscale = DT(di ** -0.5 * Hi ** -0.5)
            self.idx_comp = Compressor(W, pfx + "attn.indexer.compressor.", 4, di, self.rope,
                                       self.eps, "index", self.hpm1)
        # ---- MoE ----
        E, k, I = cfg.n_experts, cfg.topk_experts, cfg.moe_inter_dim
        self.k = k
        self.gate = t("ffn.gate.weight", (E, D))
        self.is_hash = layer_id < cfg.n_hash_layers
        if self.is_hash:
            self.tid2eid = t("ffn.gate.tid2eid")
            if self.tid2eid.shape != (cfg.vocab_size, k):
                raise ValueError(f"tid2eid shape {self.tid2eid.shape}, expected {(cfg.vocab_size, k)}")
            srt = np.sort(self.tid2eid, axis=1)
            if srt.min() < 0 or srt.max() >= E or (k > 1 and np.any(srt[:, 1:] == srt[:, :-1])):
                raise ValueError(f"{pfx}ffn.gate.tid2eid: a row repeats an expert or is out of range")
            self.bias = None
        else:
            self.bias = t("ffn.gate.bias", (E,))
        self.experts = []
        for e in range(E):
            ep = f"ffn.experts.{e}."
            self.experts.append((t(ep + "w1.weight", (I, D)), t(ep + "w3.weight", (I, D)),
                                 t(ep + "w2.weight", (D, I))))
        self.shared = None
        if pfx + "ffn.shared_experts.w1.weight" in W:
            w1 = t("ffn.shared_experts.w1.weight")
            self.shared = (w1, t("ffn.shared_experts.w3.weight", w1.shape),
                           t("ffn.shared_experts.w2.weight", w1.shape[::-1]))
        self.route_scale = DT(cfg.route_scale)
        self.limit = cfg.swiglu_limit
        self.reset()

    def reset(self):
        self.window = []          # kv vectors [hd] of the last W positions (oldest first)
        self.entries = []         # compressed entries c_j [hd]
        self.idx_keys = []        # indexer keys kI_j [di]
        if self.comp:
            self.comp.reset()
        if self.idx_comp:
            self.idx_comp.reset()
        self.last_sel = None

    # -- attention (V4-MODEL.md 4.5) ---------------------------------------------------------
    def attention(self, a, p):
        """a: [D] normalised block input at position p -> [D]"""
        H, hd, rd = self.H, self.hd, self.rd
        qr = rmsnorm(linear(self.wq_a, a), self.q_norm, self.eps)     # [Rq]
        q = linear(self.wq_b, qr).reshape(H, hd)                      # [H, hd]
        q = rmsnorm(q, None, self.eps)                                # unweighted per head
        q0 = q[0].copy()
        q = self.rope.apply(q, p)                                     # [H, hd]
        if PLANT == "rope-sign":                                      # head 0 rotated backwards
            q[0] = self.rope.apply(q0, p, inverse=True)
        kv = rmsnorm(linear(self.wkv, a), self.kv_norm, self.eps)     # [hd]
        kv = self.rope.apply(kv, p)
        kv[:hd - rd] = fake_quant_fp8(kv[:hd - rd], 64)               # nope dims only
        self.window.append(kv)
        if len(self.window) > self.cfg.window:
            self.window.pop(0)                                        # keep [p-W+1, p]
        keys = list(self.window)
        if self.m > 0:
            c = self.comp.push(a, p)
            if c is not None:
                self.entries.append(c)                                # visible to this token
        if self.m == 4:
            ki = self.idx_comp.push(a, p)
            if ki is not None:
                self.idx_keys.append(ki)
            sel = self.indexer(a, qr, p)
            self.last_sel = sel
            keys += [self.entries[j] for j in sel]
        elif self.m > 0:
            keys += self.entries                                      # HCA: all entries
        Kmat = np.stack(keys)                                         # [N, hd], K = V
        z = (q @ Kmat.T) * self.scale                                 # [H, N]
        M = np.max(z, axis=1, keepdims=True)                          # [H, 1]
        e = np.exp(z - M)                                             # [H, N]
        den = np.sum(e, axis=1) + np.exp(self.sink - M[:, 0])         # [H]  sink in denominator
        if PLANT == "no-sink":
            den = np.sum(e, axis=1)
        o = (e @ Kmat) / den[:, None]                                 # [H, hd]
        o = self.rope.apply(o.astype(DT), p, inverse=True)            # de-rotate at query pos
        og = o.reshape(self.G, -1)                                    # [G, H*hd/G]
        zg = np.stack([linear(self.wo_a[g], og[g]) for g in range(self.G)])  # [G, Ro]
        return linear(self.wo_b, zg.reshape(-1))                      # [D]

    def indexer(self, a, qr, p):
        """Lightning indexer (V4-MODEL.md 4.7) -> list of selected compressed entry ids."""
        nvalid = len(self.idx_keys)                                   # == (p+1) div 4
        assert nvalid == len(self.entries) and (nvalid == (p + 1) // 4 or PLANT == "compressor-late")
        if nvalid == 0:
            return []
        qI = linear(self.idx_wq_b, qr).reshape(self.Hi, self.di)      # [Hi, di]
        qI = self.rope.apply(qI, p)
        qI = fake_quant_fp4(hadamard(qI, self.hpm1), 32)
        w = linear(self.idx_wproj, a) * self.idx_wscale               # [Hi]
        kI = np.stack(self.idx_keys)                                  # [nvalid, di]
        sc = (w @ np.maximum(qI @ kI.T, DT(0))).astype(DT)            # [nvalid]
        k = min(self.cfg.index_topk, nvalid)
        return sorted(stable_topk(sc, k, "index-topk").tolist())

    # -- MoE (V4-MODEL.md 4.8) ---------------------------------------------------------------
    def swiglu(self, w1, w3, x):
        g = linear(w1, x)                                             # [I]
        u = linear(w3, x)
        if self.limit and self.limit > 0:
            lim = DT(self.limit)
            u = np.clip(u, -lim, lim)
            g = np.minimum(g, lim)                                    # gate clamped above only
        return (g * sigmoid(g) * u).astype(DT)

    def moe(self, f, tok):
        logits = linear(self.gate, f)                                 # [E]
        s = np.sqrt(np.logaddexp(DT(0), logits)).astype(DT)           # sqrt(softplus)
        if self.is_hash:
            idx = self.tid2eid[tok]                                   # [k]
        else:
            idx = stable_topk((s + self.bias).astype(DT), self.k, "moe-topk")  # bias: selection only
        w = s[idx] / np.sum(s[idx]) * self.route_scale                # [k]
        y = np.zeros_like(f)
        for wi, e in zip(w, idx):
            w1, w3, w2 = self.experts[e]
            h = self.swiglu(w1, w3, f) * wi                           # weight before w2
            y = y + linear(w2, h)
        if self.shared is not None:
            w1, w3, w2 = self.shared
            y = y + linear(w2, self.swiglu(w1, w3, f))
        return y.astype(DT)

    # -- whole block ---------------------------------------------------------------------------
    def forward(self, X, tok, p):
        """X: [hc, D] streams at position p -> [hc, D]"""
        DIAG.ctx = f"{'mtp' if self.layer_id >= self.cfg.n_layers else 'layer'} {self.layer_id} pos {p}"
        a, post, C = self.hc_attn.pre(X)
        a = rmsnorm(a, self.attn_norm, self.eps)
        X = HC.post(self.attention(a, p), X, post, C)
        f, post, C = self.hc_ffn.pre(X)
        f = rmsnorm(f, self.ffn_norm, self.eps)
        X = HC.post(self.moe(f, tok), X, post, C)
        assert X.dtype == DT
        return X


# ----------------------------------------------------------------------------------------
# Whole model
# ----------------------------------------------------------------------------------------

class Model:
    def __init__(self, cfg, W):
        """W: {name: array} of exact dequantised weights (any float type; cast to DT)."""
        self.cfg = cfg
        W = {k: (v.astype(DT) if v.dtype.kind == "f" else v) for k, v in W.items()}
        D, V, hc = cfg.dim, cfg.vocab_size, cfg.hc_mult
        rd = cfg.rope_dim
        self.rope_main = Rope(rd, rope_freqs(rd, cfg.rope_theta))
        yarn = None
        if cfg.original_seq_len and cfg.original_seq_len > 0:
            yarn = (cfg.rope_factor, cfg.original_seq_len, cfg.beta_fast, cfg.beta_slow)
        self.rope_comp = Rope(rd, rope_freqs(rd, cfg.compress_rope_theta or cfg.rope_theta, yarn))

        def t(key, shape=None):
            if key not in W:
                raise KeyError(f"missing tensor {key}")
            if shape is not None and tuple(W[key].shape) != tuple(shape):
                raise ValueError(f"{key}: shape {W[key].shape}, expected {shape}")
            return W[key]
        self.embed = t("embed.weight", (V, D))
        self.head = t("head.weight", (V, D))
        self.norm = t("norm.weight", (D,))
        self.hc_head = (t("hc_head_fn", (hc, hc * D)), t("hc_head_scale", (1,)), t("hc_head_base", (hc,)))
        self.layers = [Block(cfg, W, f"layers.{L}.", L, self.rope_main, self.rope_comp)
                       for L in range(cfg.n_layers)]
        self.mtp = None
        if cfg.n_mtp > 0 and "mtp.0.e_proj.weight" in W:
            P = "mtp.0."
            self.mtp = Block(cfg, W, P, cfg.n_layers, self.rope_main, self.rope_comp)
            self.mtp_e_proj = t(P + "e_proj.weight", (D, D))
            self.mtp_h_proj = t(P + "h_proj.weight", (D, D))
            self.mtp_enorm = t(P + "enorm.weight", (D,))
            self.mtp_hnorm = t(P + "hnorm.weight", (D,))
            self.mtp_norm = t(P + "norm.weight", (D,))
            self.mtp_hc_head = (t(P + "hc_head_fn", (hc, hc * D)), t(P + "hc_head_scale", (1,)),
                                t(P + "hc_head_base", (hc,)))

    def reset(self):
        for b in self.layers:
            b.reset()
        if self.mtp:
            self.mtp.reset()

    def logits_from(self, X, hch, norm):
        fn, scale, base = hch
        h = hc_head(X, fn, scale, base, self.cfg.hc_eps, self.cfg.norm_eps)   # [D]
        h = rmsnorm(h, norm, self.cfg.norm_eps)
        return linear(self.head, h)                                   # [V]

    def step(self, tok, p):
        """Main model at position p with input token tok -> (logits [V], X_last [hc, D])."""
        if not 0 <= tok < self.cfg.vocab_size:
            raise ValueError(f"token id {tok} out of range")
        x = self.embed[tok]                                           # [D]
        X = np.tile(x, (self.cfg.hc_mult, 1)).astype(DT)              # [hc, D]
        for blk in self.layers:
            X = blk.forward(X, tok, p)
        return self.logits_from(X, self.hc_head, self.norm), X

    def mtp_step(self, X_main, tok_next, p):
        """MTP block at position p: X_main [hc, D] (main last-layer streams at p, before
        hc_head) and token p+1 -> logits [V] predicting token p+2."""
        if self.mtp is None:
            raise RuntimeError("checkpoint has no MTP block (mtp.0.*)")
        e = rmsnorm(self.embed[tok_next], self.mtp_enorm, self.cfg.norm_eps)   # [D]
        Xh = rmsnorm(X_main, self.mtp_hnorm, self.cfg.norm_eps)                 # [hc, D]
        X = (linear(self.mtp_e_proj, e)[None, :] + linear(self.mtp_h_proj, Xh)).astype(DT)  # [hc, D]
        X = self.mtp.forward(X, tok_next, p)
        return self.logits_from(X, self.mtp_hc_head, self.mtp_norm)


def generate(model, prompt, n, gen_ids=None, want_mtp=False):
    """Runs the prompt from position 0, then n generated tokens.
    Row i of the logits is the distribution generated token i is chosen from (row 0 = at
    the last prompt position).  Token i = argmax, or gen_ids[i] when forced.
    MTP row t (t = 0 .. P+n-2) = MTP logits from X_main[t] and token t+1.
    -> (tokens [n], logits [n, V], mtp_logits [P+n-1, V] or None, argmax [n])"""
    model.reset()
    P = len(prompt)
    if P == 0:
        raise ValueError("empty prompt")
    seq = list(prompt)                    # prompt followed by generated/forced tokens
    rows, mtp_rows, chosen, amax = [], [], [], []
    last = P + n - 2 if n > 0 else P - 1  # last position the main model must run
    for p in range(last + 1):
        logits, X = model.step(seq[p], p)                 # X: [hc, D] before hc_head
        if n > 0 and p >= P - 1:                          # generated token p-P+1 chosen here
            rows.append(logits)
            am = int(np.argmax(logits))                   # ties -> lower id
            amax.append(am)
            tok = gen_ids[p - (P - 1)] if gen_ids is not None else am
            chosen.append(tok)
            seq.append(tok)
        if want_mtp and p + 1 < len(seq):
            mtp_rows.append(model.mtp_step(X, seq[p + 1], p))
    V = model.cfg.vocab_size
    L = np.stack(rows) if rows else np.zeros((0, V), DT)
    M = None
    if want_mtp:
        M = np.stack(mtp_rows) if mtp_rows else np.zeros((0, V), DT)
    return chosen, L, M, amax


def load_model(model_dir):
    cfg = load_config(model_dir)
    return Model(cfg, load_checkpoint(model_dir))


def parse_ids(s):
    s = s.strip()
    return [int(x) for x in s.split(",") if x.strip() != ""] if s else []


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-m", "--model", required=True, help="model directory")
    ap.add_argument("--prompt-ids", required=True, help="comma-separated prompt token ids")
    ap.add_argument("-n", type=int, default=8, help="tokens to generate")
    ap.add_argument("--gen-ids", help="force generated token i to gen_ids[i] (teacher forcing)")
    ap.add_argument("--logits-out", help="write n rows of vocab float32 logits (little-endian)")
    ap.add_argument("--mtp-out", help="write MTP logits rows t = 0..P+n-2 (float32)")
    ap.add_argument("--temperature", type=float, default=0.0,
                    help="accepted for CLI compatibility with the engine; must be 0")
    ap.add_argument("--f64", action="store_true", help="compute in float64 (diagnostics)")
    ap.add_argument("--diag", action="store_true", help="report near-tie quantiser/top-k decisions on stderr")
    args = ap.parse_args(argv)
    if args.temperature != 0:
        ap.error("only greedy decoding (--temperature 0) is implemented")
    if args.f64:
        set_dtype(np.float64)
    DIAG.enabled = args.diag
    prompt = parse_ids(args.prompt_ids)
    gen = parse_ids(args.gen_ids) if args.gen_ids is not None else None
    if args.n < 0:
        ap.error("-n must be >= 0")
    if gen is not None and len(gen) < args.n:
        ap.error(f"--gen-ids has {len(gen)} ids, need {args.n}")
    if not prompt:
        ap.error("--prompt-ids is empty")
    model = load_model(args.model)
    V = model.cfg.vocab_size
    bad = [t for t in prompt + (gen or []) if not 0 <= t < V]
    if bad:
        ap.error(f"token id(s) {bad[:5]} outside 0..{V - 1}")
    if args.mtp_out and model.mtp is None:
        sys.exit("v4ref: --mtp-out: model has no MTP block")
    toks, L, M, am = generate(model, prompt, args.n, gen, want_mtp=bool(args.mtp_out))
    if args.logits_out:
        L.astype("<f4").tofile(args.logits_out)
    if args.mtp_out:
        M.astype("<f4").tofile(args.mtp_out)
    if gen is not None:
        diff = [i for i in range(args.n) if am[i] != toks[i]]
        if diff:
            print(f"v4ref: forced token differs from reference argmax at steps {diff}", file=sys.stderr)
    if DIAG.enabled:
        print(DIAG.summary(), file=sys.stderr)
        for r in sorted(DIAG.records)[:5]:
            print(f"  margin {r[0]:.3g}  {r[1]}  {r[2]}", file=sys.stderr)
    print(",".join(str(t) for t in toks))
    return 0


if __name__ == "__main__":
    sys.exit(main())

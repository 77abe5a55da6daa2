//! Portable kernels: the reference for the SIMD ones and the fallback on other CPUs.

use super::{ActRow, QFormat, QK, WeightRow, f16_to_f32};

/// Q4_1 weights · Q8_1 activations: Σ_b d_w·d_x·Σ(q_w·q_x) + m_w·s_x.
pub(super) fn dot_q4_1(w: WeightRow<'_>, x: ActRow<'_>) -> f32 {
    let mut sum = 0f32;
    for b in 0..w.nb {
        let qw = &w.qs[b * QK / 2..(b + 1) * QK / 2];
        let qx = &x.qs[b * QK..(b + 1) * QK];
        let mut sumi = 0i32;
        for j in 0..QK / 2 {
            sumi += (qw[j] & 0x0f) as i32 * qx[j] as i32;
            sumi += (qw[j] >> 4) as i32 * qx[j + QK / 2] as i32;
        }
        sum += f16_to_f32(w.d[b]) * x.d[b] * sumi as f32 + f16_to_f32(w.m[b]) * x.s[b];
    }
    sum
}

/// Q8_0 weights · Q8_1 activations: Σ_b d_w·d_x·Σ(q_w·q_x).
pub(super) fn dot_q8_0(w: WeightRow<'_>, x: ActRow<'_>) -> f32 {
    let mut sum = 0f32;
    for b in 0..w.nb {
        let qw = &w.qs[b * QK..(b + 1) * QK];
        let qx = &x.qs[b * QK..(b + 1) * QK];
        let sumi: i32 = qw.iter().zip(qx).map(|(&a, &b)| a as i8 as i32 * b as i32).sum();
        sum += f16_to_f32(w.d[b]) * x.d[b] * sumi as f32;
    }
    sum
}

/// One weight row as f32.
pub(super) fn dequantize(format: QFormat, w: WeightRow<'_>, out: &mut [f32]) {
    for (b, out) in out.chunks_exact_mut(QK).enumerate() {
        let d = f16_to_f32(w.d[b]);
        match format {
            QFormat::Q4_1 => {
                let m = f16_to_f32(w.m[b]);
                let qs = &w.qs[b * QK / 2..(b + 1) * QK / 2];
                for (j, &q) in qs.iter().enumerate() {
                    out[j] = (q & 0x0f) as f32 * d + m;
                    out[j + QK / 2] = (q >> 4) as f32 * d + m;
                }
            }
            QFormat::Q8_0 => {
                for (o, &q) in out.iter_mut().zip(&w.qs[b * QK..(b + 1) * QK]) {
                    *o = q as i8 as f32 * d;
                }
            }
        }
    }
}

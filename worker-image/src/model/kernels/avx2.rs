//! AVX2 kernels (x86-64 with AVX2, FMA and F16C, detected at run time).
//!
//! Soundness: the kernels are `#[target_feature(enable = "avx2,fma,f16c")]` functions, called
//! (the one `unsafe` each) only from wrappers that [`dot_kernel`] hands out after
//! `is_x86_feature_detected!` confirmed all three features. The only other `unsafe` is the
//! unaligned loads and stores in `load*`/`store8f`, which read exactly the bytes of a
//! fixed-size array reference.

use super::{Dot4Fn, DotFn, QFormat};

fn detected() -> bool {
    #[cfg(target_arch = "x86_64")]
    return std::arch::is_x86_feature_detected!("avx2")
        && std::arch::is_x86_feature_detected!("fma")
        && std::arch::is_x86_feature_detected!("f16c");
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// The AVX2 kernel for `format`, when this CPU has AVX2, FMA and F16C.
pub(super) fn dot_kernel(format: QFormat) -> Option<DotFn> {
    #[cfg(target_arch = "x86_64")]
    if detected() {
        return Some(match format {
            QFormat::Q4_1 => x86::dot_q4_1,
            QFormat::Q8_0 => x86::dot_q8_0,
        });
    }
    let _ = format;
    None
}

/// The AVX2 kernel for one weight row and four activation rows, as for [`dot_kernel`].
pub(super) fn dot4_kernel(format: QFormat) -> Option<Dot4Fn> {
    #[cfg(target_arch = "x86_64")]
    if detected() {
        return Some(match format {
            QFormat::Q4_1 => x86::dot4_q4_1,
            QFormat::Q8_0 => x86::dot4_q8_0,
        });
    }
    let _ = format;
    None
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::super::{ActRow, QK, SCALE_GROUP as GROUP, WeightRow, padded};

    /// The lengths every kernel relies on.
    fn check(w: WeightRow<'_>, x: ActRow<'_>, quant_bytes: usize) {
        let (nb, sb) = (w.nb, padded(w.nb));
        assert!(w.d.len() == sb && (w.m.is_empty() || w.m.len() == sb));
        assert!(w.qs.len() == nb * quant_bytes);
        assert!(x.nb == nb && x.d.len() == sb && x.s.len() == sb && x.qs.len() == nb * QK);
    }

    pub(super) fn dot_q4_1(w: WeightRow<'_>, x: ActRow<'_>) -> f32 {
        check(w, x, QK / 2);
        assert!(w.m.len() == w.d.len());
        // SAFETY: dot_kernel hands this function out only when avx2, fma and f16c are
        // detected.
        unsafe { q4_1(w, x) }
    }

    pub(super) fn dot_q8_0(w: WeightRow<'_>, x: ActRow<'_>) -> f32 {
        check(w, x, QK);
        // SAFETY: as for dot_q4_1.
        unsafe { q8_0(w, x) }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    fn load16(bytes: &[u8; 16]) -> __m128i {
        // SAFETY: reads the 16 bytes of `bytes`; loadu has no alignment requirement.
        unsafe { _mm_loadu_si128(bytes.as_ptr().cast()) }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    fn load8h(halves: &[u16; GROUP]) -> __m128i {
        // SAFETY: reads the 16 bytes of `halves`; loadu has no alignment requirement.
        unsafe { _mm_loadu_si128(halves.as_ptr().cast()) }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    fn load32(bytes: &[u8; 32]) -> __m256i {
        // SAFETY: reads the 32 bytes of `bytes`; loadu has no alignment requirement.
        unsafe { _mm256_loadu_si256(bytes.as_ptr().cast()) }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    fn load32i(bytes: &[i8; 32]) -> __m256i {
        // SAFETY: reads the 32 bytes of `bytes`; loadu has no alignment requirement.
        unsafe { _mm256_loadu_si256(bytes.as_ptr().cast()) }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    fn load8f(v: &[f32; GROUP]) -> __m256 {
        // SAFETY: reads the 8 floats of `v`; loadu has no alignment requirement.
        unsafe { _mm256_loadu_ps(v.as_ptr()) }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    fn store8f(v: __m256) -> [f32; GROUP] {
        let mut out = [0f32; GROUP];
        // SAFETY: writes the 8 floats of `out`; storeu has no alignment requirement.
        unsafe { _mm256_storeu_ps(out.as_mut_ptr(), v) };
        out
    }

    /// `N` values of `s` from `at`.
    fn chunk<T, const N: usize>(s: &[T], at: usize) -> &[T; N] {
        let Some(Ok(a)) = s.get(at..at + N).map(<&[T; N]>::try_from) else {
            unreachable!("kernel reads past a checked row");
        };
        a
    }

    fn check4(w: WeightRow<'_>, xs: &[ActRow<'_>; 4], quant_bytes: usize) {
        for &x in xs {
            check(w, x, quant_bytes);
        }
    }

    pub(super) fn dot4_q4_1(w: WeightRow<'_>, xs: &[ActRow<'_>; 4]) -> [f32; 4] {
        check4(w, xs, QK / 2);
        assert!(w.m.len() == w.d.len());
        // SAFETY: as for dot_q4_1.
        unsafe { multi::<true>(w, xs) }
    }

    pub(super) fn dot4_q8_0(w: WeightRow<'_>, xs: &[ActRow<'_>; 4]) -> [f32; 4] {
        check4(w, xs, QK);
        // SAFETY: as for dot_q4_1.
        unsafe { multi::<false>(w, xs) }
    }

    /// One weight row (Q4_1 when `Q4`, else Q8_0) against four activation rows: each weight
    /// block is loaded and unpacked once for the four.
    #[target_feature(enable = "avx2,fma,f16c")]
    fn multi<const Q4: bool>(w: WeightRow<'_>, xs: &[ActRow<'_>; 4]) -> [f32; 4] {
        let nb = w.nb;
        let low = _mm256_set1_epi8(0x0f);
        let mut acc = [_mm256_setzero_ps(); 4];
        let mut acc_min = [_mm256_setzero_ps(); 4];
        let mut b0 = 0;
        while b0 < nb {
            let n = (nb - b0).min(GROUP);
            let dw = scales(w.d, b0);
            let mw = if Q4 { scales(w.m, b0) } else { _mm256_setzero_ps() };
            let mut dd = [[0f32; GROUP]; 4];
            for j in 0..4 {
                dd[j] = store8f(_mm256_mul_ps(dw, floats(xs[j].d, b0)));
                if Q4 {
                    acc_min[j] = _mm256_fmadd_ps(mw, floats(xs[j].s, b0), acc_min[j]);
                }
            }
            for (i, b) in (b0..b0 + n).enumerate() {
                let qw = if Q4 {
                    let packed = load16(chunk(w.qs, b * QK / 2));
                    _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(packed, 4), packed), low)
                } else {
                    load32(chunk(w.qs, b * QK))
                };
                let (ua, sign) = if Q4 { (qw, None) } else { (_mm256_sign_epi8(qw, qw), Some(qw)) };
                for j in 0..4 {
                    let qx = load32i(chunk(xs[j].qs, b * QK));
                    let qx = match sign {
                        Some(s) => _mm256_sign_epi8(qx, s),
                        None => qx,
                    };
                    acc[j] = _mm256_fmadd_ps(_mm256_set1_ps(dd[j][i]), dot_bytes(ua, qx), acc[j]);
                }
            }
            b0 += n;
        }
        std::array::from_fn(|j| hsum(acc[j]) + hsum(acc_min[j]))
    }

    /// Scales of the [`GROUP`] blocks from `b`, as f32.
    #[target_feature(enable = "avx2,fma,f16c")]
    fn scales(h: &[u16], b: usize) -> __m256 {
        _mm256_cvtph_ps(load8h(chunk(h, b)))
    }

    /// f32 values of the [`GROUP`] blocks from `b`.
    #[target_feature(enable = "avx2,fma,f16c")]
    fn floats(v: &[f32], b: usize) -> __m256 {
        load8f(chunk(v, b))
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_movehdup_ps(s));
        _mm_cvtss_f32(s)
    }

    /// Σ over the 32 byte pairs of `a` (unsigned) · `b` (signed), as 8 f32 partial sums.
    #[target_feature(enable = "avx2,fma,f16c")]
    fn dot_bytes(a: __m256i, b: __m256i) -> __m256 {
        let pairs = _mm256_maddubs_epi16(a, b);
        _mm256_cvtepi32_ps(_mm256_madd_epi16(pairs, _mm256_set1_epi16(1)))
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    fn q4_1(w: WeightRow<'_>, x: ActRow<'_>) -> f32 {
        let nb = w.nb;
        let low = _mm256_set1_epi8(0x0f);
        let (mut acc0, mut acc1, mut acc_min) =
            (_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps());
        let mut b0 = 0;
        while b0 < nb {
            let n = (nb - b0).min(GROUP);
            let dw = scales(w.d, b0);
            acc_min = _mm256_fmadd_ps(scales(w.m, b0), floats(x.s, b0), acc_min);
            let dd = store8f(_mm256_mul_ps(dw, floats(x.d, b0)));
            for (i, &scale) in dd.iter().enumerate().take(n) {
                let b = b0 + i;
                let packed = load16(chunk(w.qs, b * QK / 2));
                // Low nibbles are values 0..16 of the block, high nibbles 16..32.
                let both = _mm256_set_m128i(_mm_srli_epi16(packed, 4), packed);
                let qw = _mm256_and_si256(both, low);
                let qx = load32i(chunk(x.qs, b * QK));
                let p = dot_bytes(qw, qx);
                if i % 2 == 0 {
                    acc0 = _mm256_fmadd_ps(_mm256_set1_ps(scale), p, acc0);
                } else {
                    acc1 = _mm256_fmadd_ps(_mm256_set1_ps(scale), p, acc1);
                }
            }
            b0 += n;
        }
        hsum(_mm256_add_ps(acc0, acc1)) + hsum(acc_min)
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    fn q8_0(w: WeightRow<'_>, x: ActRow<'_>) -> f32 {
        let nb = w.nb;
        let (mut acc0, mut acc1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        let mut b0 = 0;
        while b0 < nb {
            let n = (nb - b0).min(GROUP);
            let dd = store8f(_mm256_mul_ps(scales(w.d, b0), floats(x.d, b0)));
            for (i, &scale) in dd.iter().enumerate().take(n) {
                let b = b0 + i;
                let qw = load32(chunk(w.qs, b * QK));
                let qx = load32i(chunk(x.qs, b * QK));
                // maddubs wants its first operand unsigned: move the sign of w onto x.
                let p = dot_bytes(_mm256_sign_epi8(qw, qw), _mm256_sign_epi8(qx, qw));
                if i % 2 == 0 {
                    acc0 = _mm256_fmadd_ps(_mm256_set1_ps(scale), p, acc0);
                } else {
                    acc1 = _mm256_fmadd_ps(_mm256_set1_ps(scale), p, acc1);
                }
            }
            b0 += n;
        }
        hsum(_mm256_add_ps(acc0, acc1))
    }
}

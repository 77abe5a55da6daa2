//! Quantized matrix kernels for the CPU forward pass of GGUF models.
//!
//! Weights are repacked once at load ([`QMatrix`]): the quants of each row contiguous and the
//! f16 block scales in arrays of their own, so that the AVX2 kernels load whole blocks and
//! convert eight scales per instruction. Activations are quantized once per matmul input
//! ([`QActivations`], llama.cpp's Q8_1 with f32 scales) and shared by every weight row.
//! [`matmul`] spreads one whole matmul over candle's CPU thread pool.

#[allow(unsafe_code)]
mod avx2;
#[allow(unsafe_code)]
mod parallel;
mod scalar;
#[cfg(test)]
mod tests;

use std::ops::Range;

use candle_core::quantized::GgmlDType;

pub use parallel::{num_threads, par_rows};

/// Values per quantization block, in every format here.
pub const QK: usize = 32;

/// Block scales are stored per row padded with zeros to a multiple of this, so that the SIMD
/// kernels always convert and load whole groups.
const SCALE_GROUP: usize = 8;

fn padded(nb: usize) -> usize {
    nb.div_ceil(SCALE_GROUP) * SCALE_GROUP
}

/// Weight formats with kernels of ours.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QFormat {
    /// 4-bit quants with an f16 scale and an f16 minimum per block.
    Q4_1,
    /// 8-bit quants with an f16 scale per block.
    Q8_0,
}

impl QFormat {
    /// The format of a GGML dtype, when there is a kernel for it.
    pub fn of(dtype: GgmlDType) -> Option<Self> {
        match dtype {
            GgmlDType::Q4_1 => Some(Self::Q4_1),
            GgmlDType::Q8_0 => Some(Self::Q8_0),
            _ => None,
        }
    }

    /// Bytes of one GGUF block.
    fn block_bytes(self) -> usize {
        match self {
            Self::Q4_1 => 20,
            Self::Q8_0 => 34,
        }
    }

    /// Bytes of quants in one block.
    fn quant_bytes(self) -> usize {
        match self {
            Self::Q4_1 => QK / 2,
            Self::Q8_0 => QK,
        }
    }
}

/// A `rows × cols` weight matrix (GGUF layout: row `r` holds the weights of output `r`).
#[derive(Debug, Clone)]
pub struct QMatrix {
    format: QFormat,
    rows: usize,
    cols: usize,
    qs: Vec<u8>,
    d: Vec<u16>,
    m: Vec<u16>,
}

/// One weight row as the kernels see it: `nb` blocks of quants, f16 scales and f16 minimums
/// (Q4_1 only), the latter two padded to [`SCALE_GROUP`].
#[derive(Clone, Copy)]
struct WeightRow<'a> {
    nb: usize,
    qs: &'a [u8],
    d: &'a [u16],
    m: &'a [u16],
}

impl QMatrix {
    /// Repacks GGUF block data of a `rows × cols` tensor.
    pub fn from_gguf(
        format: QFormat,
        rows: usize,
        cols: usize,
        data: &[u8],
    ) -> Result<Self, String> {
        if !cols.is_multiple_of(QK) {
            return Err(format!("{cols} columns are not a multiple of the block size {QK}"));
        }
        let (nb, blocks) = (cols / QK, rows * cols / QK);
        if data.len() != blocks * format.block_bytes() {
            return Err(format!(
                "{format:?} tensor {rows}×{cols} needs {} bytes, has {}",
                blocks * format.block_bytes(),
                data.len()
            ));
        }
        let mut m = Self {
            format,
            rows,
            cols,
            qs: Vec::with_capacity(blocks * format.quant_bytes()),
            d: Vec::with_capacity(rows * padded(nb)),
            m: Vec::new(),
        };
        let f16_at = |b: &[u8], i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        for row in data.chunks_exact(nb * format.block_bytes()) {
            for block in row.chunks_exact(format.block_bytes()) {
                m.d.push(f16_at(block, 0));
                match format {
                    QFormat::Q4_1 => {
                        m.m.push(f16_at(block, 2));
                        m.qs.extend_from_slice(&block[4..]);
                    }
                    QFormat::Q8_0 => m.qs.extend_from_slice(&block[2..]),
                }
            }
            m.d.resize(m.d.len() + padded(nb) - nb, 0);
            if format == QFormat::Q4_1 {
                m.m.resize(m.d.len(), 0);
            }
        }
        Ok(m)
    }

    /// Output features.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Input features.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Stacks matrices of one format and width: the rows of `parts`, in order.
    pub fn concat_rows(parts: &[&QMatrix]) -> Result<Self, String> {
        let first = parts.first().ok_or("nothing to concatenate")?;
        if parts.iter().any(|p| p.format != first.format || p.cols != first.cols) {
            return Err("cannot stack matrices of different formats or widths".into());
        }
        let mut out = Self { rows: 0, qs: vec![], d: vec![], m: vec![], ..(*first).clone() };
        for p in parts {
            out.rows += p.rows;
            out.qs.extend_from_slice(&p.qs);
            out.d.extend_from_slice(&p.d);
            out.m.extend_from_slice(&p.m);
        }
        Ok(out)
    }

    fn row(&self, r: usize) -> WeightRow<'_> {
        let nb = self.cols / QK;
        let (qb, sb) = (self.format.quant_bytes(), padded(nb));
        WeightRow {
            nb,
            qs: &self.qs[r * nb * qb..(r + 1) * nb * qb],
            d: &self.d[r * sb..(r + 1) * sb],
            m: if self.m.is_empty() { &[] } else { &self.m[r * sb..(r + 1) * sb] },
        }
    }

    /// Row `r` as f32 (used for the embedding lookup).
    pub fn dequantize_row(&self, r: usize, out: &mut [f32]) {
        scalar::dequantize(self.format, self.row(r), out);
    }
}

/// Rows of activations quantized to 8 bits per value in blocks of [`QK`]: llama.cpp's and
/// candle's Q8_1, whose scale `d` and `s = d · Σq` are f16 values, here held as f32 so the
/// kernels need not convert them. Buffers are reused across calls.
#[derive(Debug, Default)]
pub struct QActivations {
    rows: usize,
    cols: usize,
    qs: Vec<i8>,
    d: Vec<f32>,
    s: Vec<f32>,
}

/// One quantized activation row of `nb` blocks, scales padded to [`SCALE_GROUP`].
#[derive(Clone, Copy)]
struct ActRow<'a> {
    nb: usize,
    qs: &'a [i8],
    d: &'a [f32],
    s: &'a [f32],
}

impl QActivations {
    /// Quantizes `x`, `rows` rows of `cols` values (a multiple of [`QK`]).
    pub fn quantize(&mut self, x: &[f32], cols: usize) {
        debug_assert!(cols.is_multiple_of(QK));
        self.cols = cols;
        self.rows = x.len() / cols;
        let (nb, sb) = (cols / QK, padded(cols / QK));
        self.qs.resize(x.len(), 0);
        self.d.clear();
        self.d.resize(self.rows * sb, 0.0);
        self.s.clear();
        self.s.resize(self.rows * sb, 0.0);
        for (i, (xs, qs)) in x.chunks_exact(QK).zip(self.qs.chunks_exact_mut(QK)).enumerate() {
            let b = i / nb * sb + i % nb;
            let amax = xs.iter().fold(0f32, |a, v| a.max(v.abs()));
            let d = amax / 127.0;
            let id = if d != 0.0 { 1.0 / d } else { 0.0 };
            let mut sum = 0i32;
            for (q, v) in qs.iter_mut().zip(xs) {
                *q = (v * id).round() as i8;
                sum += *q as i32;
            }
            // Rounded as candle stores them: d and Σq in f16, s their f16 product.
            let d = round_to_f16(d);
            self.d[b] = d;
            self.s[b] = round_to_f16(round_to_f16(sum as f32) * d);
        }
    }

    fn row(&self, t: usize) -> ActRow<'_> {
        let (nb, sb) = (self.cols / QK, padded(self.cols / QK));
        ActRow {
            nb,
            qs: &self.qs[t * self.cols..(t + 1) * self.cols],
            d: &self.d[t * sb..(t + 1) * sb],
            s: &self.s[t * sb..(t + 1) * sb],
        }
    }
}

type DotFn = fn(WeightRow<'_>, ActRow<'_>) -> f32;
type Dot4Fn = fn(WeightRow<'_>, &[ActRow<'_>; 4]) -> [f32; 4];

/// The dot-product kernel for `format` on this CPU.
fn dot_kernel(format: QFormat) -> DotFn {
    avx2::dot_kernel(format).unwrap_or(match format {
        QFormat::Q4_1 => scalar::dot_q4_1,
        QFormat::Q8_0 => scalar::dot_q8_0,
    })
}

/// The kernel for one weight row and four activation rows.
fn dot4_kernel(format: QFormat) -> Dot4Fn {
    avx2::dot4_kernel(format).unwrap_or(match format {
        QFormat::Q4_1 => |w, xs| xs.map(|x| scalar::dot_q4_1(w, x)),
        QFormat::Q8_0 => |w, xs| xs.map(|x| scalar::dot_q8_0(w, x)),
    })
}

/// Whether the SIMD kernels run on this CPU (reported in the logs).
pub fn simd_name() -> &'static str {
    if avx2::dot_kernel(QFormat::Q4_1).is_some() { "avx2" } else { "scalar" }
}

/// `out[t·rows + r] = w[r] · x[t]` for every activation row `t` of `x` and weight row `r`.
pub fn matmul(w: &QMatrix, x: &QActivations, out: &mut [f32]) {
    debug_assert_eq!(w.cols, x.cols);
    let (n, m) = (w.rows, x.rows);
    let out = &mut out[..n * m];
    let dot = dot_kernel(w.format);
    let threads = num_threads();
    if m == 1 {
        // One token: the weight rows are split over the threads.
        let grain = n.div_ceil(threads * 8).max(16);
        let a = x.row(0);
        par_rows(out, 1, grain, |rows: Range<usize>, out: &mut [f32]| {
            for (r, o) in rows.zip(out) {
                *o = dot(w.row(r), a);
            }
        });
        return;
    }
    // Several tokens: each thread takes a tile of tokens and walks all weight rows once, so a
    // weight row is read from memory once per tile and the tile's activations stay in L1.
    let dot4 = dot4_kernel(w.format);
    let tile = m.div_ceil(threads).clamp(1, 16);
    par_rows(out, n, tile, |tokens: Range<usize>, out: &mut [f32]| {
        let t0 = tokens.start;
        for r in 0..n {
            let wr = w.row(r);
            let mut t = t0;
            while t + 4 <= tokens.end {
                let rows = [x.row(t), x.row(t + 1), x.row(t + 2), x.row(t + 3)];
                for (j, v) in dot4(wr, &rows).into_iter().enumerate() {
                    out[(t + j - t0) * n + r] = v;
                }
                t += 4;
            }
            for t in t..tokens.end {
                out[(t - t0) * n + r] = dot(wr, x.row(t));
            }
        }
    });
}

/// `x` rounded (to nearest, ties to even) to the closest f16 value.
pub fn round_to_f16(x: f32) -> f32 {
    half::f16::from_f32(x).to_f32()
}

/// IEEE half-precision bits to f32.
pub fn f16_to_f32(h: u16) -> f32 {
    half::f16::from_bits(h).to_f32()
}

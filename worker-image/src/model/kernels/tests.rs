//! The kernels against candle's quantized matmul on random inputs of awkward sizes.

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{Device, Module, Tensor};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::*;

fn random(rng: &mut StdRng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect()
}

/// A random `rows × cols` weight in `dtype`, as candle's QTensor and as our QMatrix.
fn weight(rng: &mut StdRng, dtype: GgmlDType, rows: usize, cols: usize) -> (QTensor, QMatrix) {
    let w = Tensor::from_vec(random(rng, rows * cols), (rows, cols), &Device::Cpu).expect("w");
    let q = QTensor::quantize(&w, dtype).expect("quantize");
    let format = QFormat::of(dtype).expect("format");
    let ours = QMatrix::from_gguf(format, rows, cols, &q.data().expect("data")).expect("repack");
    (q, ours)
}

fn ours(w: &QMatrix, x: &[f32], cols: usize) -> Vec<f32> {
    let mut act = QActivations::default();
    act.quantize(x, cols);
    let mut out = vec![0f32; act.rows * w.rows];
    matmul(w, &act, &mut out);
    out
}

fn assert_close(what: &str, got: &[f32], want: &[f32], tol: f32) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    let scale = want.iter().fold(1e-3f32, |a, v| a.max(v.abs()));
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!((g - w).abs() <= tol * scale, "{what}: [{i}] {g} vs {w} (scale {scale})");
    }
}

#[test]
fn matmul_matches_candle() {
    let mut rng = StdRng::seed_from_u64(7);
    for dtype in [GgmlDType::Q4_1, GgmlDType::Q8_0] {
        // Block counts 2, 6, 18 (not a multiple of the 8-block scale group) and 48.
        for (rows, cols) in [(1, 64), (7, 192), (33, 576), (100, 1536)] {
            for tokens in [1, 2, 5, 17] {
                let (q, w) = weight(&mut rng, dtype, rows, cols);
                let x = random(&mut rng, tokens * cols);
                let xt = Tensor::from_vec(x.clone(), (tokens, cols), &Device::Cpu).expect("x");
                let want = QMatMul::from_qtensor(q).expect("qmatmul").forward(&xt).expect("mm");
                let want: Vec<f32> = want.flatten_all().and_then(|t| t.to_vec1()).expect("v");
                let what = format!("{dtype:?} {rows}x{cols} · {tokens} tokens");
                assert_close(&what, &ours(&w, &x, cols), &want, 2e-3);
            }
        }
    }
}

#[test]
fn simd_matches_scalar_on_odd_block_counts() {
    let mut rng = StdRng::seed_from_u64(11);
    for dtype in [GgmlDType::Q4_1, GgmlDType::Q8_0] {
        for cols in [32, 96, 544, 800] {
            let (_, w) = weight(&mut rng, dtype, 3, cols);
            let x = random(&mut rng, cols);
            let mut act = QActivations::default();
            act.quantize(&x, cols);
            let scalar = match w.format {
                QFormat::Q4_1 => scalar::dot_q4_1,
                QFormat::Q8_0 => scalar::dot_q8_0,
            };
            let simd = dot_kernel(w.format);
            for r in 0..w.rows {
                let (a, b) = (simd(w.row(r), act.row(0)), scalar(w.row(r), act.row(0)));
                assert!((a - b).abs() <= 1e-4 * a.abs().max(1.0), "{dtype:?} {cols}: {a} vs {b}");
                let four = dot4_kernel(w.format)(w.row(r), &[act.row(0); 4]);
                assert!(four.iter().all(|&c| (c - b).abs() <= 1e-4 * b.abs().max(1.0)), "{four:?}");
            }
        }
    }
}

#[test]
fn dequantize_row_matches_candle() {
    let mut rng = StdRng::seed_from_u64(3);
    for dtype in [GgmlDType::Q4_1, GgmlDType::Q8_0] {
        let (q, w) = weight(&mut rng, dtype, 5, 96);
        let want: Vec<Vec<f32>> = q.dequantize(&Device::Cpu).and_then(|t| t.to_vec2()).expect("dq");
        let mut row = vec![0f32; 96];
        for (r, want) in want.iter().enumerate() {
            w.dequantize_row(r, &mut row);
            assert_eq!(&row, want, "{dtype:?} row {r}");
        }
    }
}

#[test]
fn f16_conversion_is_exact() {
    for bits in 0..=u16::MAX {
        let (exp, mant) = ((bits >> 10) & 0x1f, (bits & 0x3ff) as f64);
        let sign = if bits & 0x8000 != 0 { -1.0 } else { 1.0 };
        let want = match exp {
            0 => sign * mant * 2f64.powi(-24),
            0x1f if mant == 0.0 => sign * f64::INFINITY,
            0x1f => f64::NAN,
            e => sign * (1024.0 + mant) * 2f64.powi(e as i32 - 25),
        };
        let got = f16_to_f32(bits);
        assert!(got as f64 == want || (got.is_nan() && want.is_nan()), "{bits:#06x}: {got}");
        assert_eq!(got.is_sign_negative(), bits & 0x8000 != 0, "{bits:#06x}: sign");
    }
}

#[test]
fn f16_rounding_matches_candle() {
    let mut rng = StdRng::seed_from_u64(5);
    let mut xs: Vec<f32> = (0..20_000).map(|_| rng.random_range(-1.0f32..1.0)).collect();
    xs.extend((0..20_000).map(|i| (i as f32 - 10_000.0) * 1e-8));
    xs.extend([0.0, 6.1035156e-5, 6.1e-5, 3.0e-8, 2.9e-8, 1000.3, -2049.0, 4063.0]);
    let want: Vec<f32> = Tensor::from_vec(xs.clone(), xs.len(), &Device::Cpu)
        .and_then(|t| t.to_dtype(candle_core::DType::F16))
        .and_then(|t| t.to_dtype(candle_core::DType::F32))
        .and_then(|t| t.to_vec1())
        .expect("f16");
    for (x, w) in xs.iter().zip(want) {
        assert_eq!(round_to_f16(*x).to_bits(), w.to_bits(), "{x:e}");
    }
}

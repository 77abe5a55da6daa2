//! Re-quantizes the SmolLM2 GGUF into other GGUF types, to test those kernels on real weights.

use std::fs::File;
use std::io::{BufReader, BufWriter};
use std::path::Path;

use candle_core::Device;
use candle_core::quantized::gguf_file::Content;
use candle_core::quantized::{GgmlDType, QTensor};

/// Writes `out` with every quantized tensor of `src` re-quantized to `dtype`; tensors whose
/// rows do not fit `dtype`'s block size get `fallback` (as llama.cpp's mixed `_M` files do).
pub fn requantize(src: &Path, out: &Path, dtype: GgmlDType, fallback: GgmlDType) {
    let mut reader = BufReader::new(File::open(src).expect("open gguf"));
    let ct = Content::read(&mut reader).expect("read gguf");
    let mut names: Vec<&String> = ct.tensor_infos.keys().collect();
    names.sort();
    let mut tensors = Vec::new();
    for name in names {
        let q = ct.tensor(&mut reader, name, &Device::Cpu).expect("tensor");
        let target = match q.dtype() {
            GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16 => q.dtype(),
            _ if q.shape().dims().last().is_some_and(|d| d % dtype.block_size() == 0) => dtype,
            _ => fallback,
        };
        let t = q.dequantize(&Device::Cpu).expect("dequantize");
        tensors.push((name.clone(), QTensor::quantize(&t, target).expect("quantize")));
    }
    let metadata: Vec<(&str, &_)> = ct.metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let tensor_refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let mut w = BufWriter::new(File::create(out).expect("create gguf"));
    candle_core::quantized::gguf_file::write(&mut w, &metadata, &tensor_refs).expect("write gguf");
}

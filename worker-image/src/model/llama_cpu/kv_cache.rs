//! Keys and values of one sequence, stored in fixed-size chunks of positions so that the
//! cache grows without copying what it holds.

/// Positions per chunk.
const CHUNK: usize = 64;

/// Rows of `row_len` values by position, allocated a chunk at a time.
#[derive(Debug, Clone)]
pub(super) struct ChunkedRows {
    row_len: usize,
    chunks: Vec<Box<[f32]>>,
}

impl ChunkedRows {
    fn new(row_len: usize) -> Self {
        Self { row_len, chunks: Vec::new() }
    }

    /// The row at `pos`, allocating its chunk when needed.
    pub(super) fn row_mut(&mut self, pos: usize) -> &mut [f32] {
        while self.chunks.len() <= pos / CHUNK {
            self.chunks.push(vec![0f32; CHUNK * self.row_len].into_boxed_slice());
        }
        let at = (pos % CHUNK) * self.row_len;
        &mut self.chunks[pos / CHUNK][at..at + self.row_len]
    }

    /// The row at `pos` (which must have been written).
    pub(super) fn row(&self, pos: usize) -> &[f32] {
        let at = (pos % CHUNK) * self.row_len;
        &self.chunks[pos / CHUNK][at..at + self.row_len]
    }
}

/// Keys and values of every layer.
#[derive(Debug, Clone)]
pub(super) struct LayerCache {
    pub(super) k: ChunkedRows,
    pub(super) v: ChunkedRows,
}

/// The KV cache of one sequence.
#[derive(Debug, Clone)]
pub struct KvCache {
    pub(super) layers: Vec<LayerCache>,
    /// Positions held.
    pub(super) len: usize,
}

impl KvCache {
    pub(super) fn new(n_layer: usize, kv_dim: usize) -> Self {
        let layer = LayerCache { k: ChunkedRows::new(kv_dim), v: ChunkedRows::new(kv_dim) };
        Self { layers: vec![layer; n_layer], len: 0 }
    }
}

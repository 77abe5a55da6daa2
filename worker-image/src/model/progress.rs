//! A reader that reports how much of a file has been read.

use std::io::{Read, Seek, SeekFrom};

/// Wraps a reader over a file of `total` bytes and calls `progress` with the percentage of
/// bytes read so far, whenever it changes.
pub struct ProgressReader<'a, R> {
    inner: R,
    total: u64,
    read: u64,
    last: u8,
    progress: &'a dyn Fn(u8),
}

impl<'a, R> ProgressReader<'a, R> {
    /// Wraps `inner`.
    pub fn new(inner: R, total: u64, progress: &'a dyn Fn(u8)) -> Self {
        Self { inner, total: total.max(1), read: 0, last: 0, progress }
    }

    fn advance(&mut self, n: usize) {
        self.read += n as u64;
        let pct = (self.read.saturating_mul(100) / self.total).min(100) as u8;
        if pct != self.last {
            self.last = pct;
            (self.progress)(pct);
        }
    }
}

impl<R: Read> Read for ProgressReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.advance(n);
        Ok(n)
    }
}

impl<R: Seek> Seek for ProgressReader<'_, R> {
    fn seek(&mut self, pos: SeekFrom) -> std::io::Result<u64> {
        self.inner.seek(pos)
    }
}

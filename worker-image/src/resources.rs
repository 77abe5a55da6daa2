//! Resource use of this process: resident memory, free disk, and (with the `cuda` feature)
//! accelerator memory.

use std::path::Path;

use rbee_api::heartbeat::{DeviceInfo, VramUsage};

use crate::status::EngineStatus;

/// Resident set size from /proc/self/status.
pub fn rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}

/// Free bytes available to this process on the filesystem holding `path`.
pub fn free_disk_bytes(path: &Path) -> Option<u64> {
    let stat = nix::sys::statvfs::statvfs(path).ok()?;
    Some(stat.blocks_available().saturating_mul(stat.fragment_size()))
}

/// The accelerator and its memory.
pub struct Gpu {
    /// Which device.
    pub device: DeviceInfo,
    /// Its memory.
    pub vram: VramUsage,
}

/// Accelerator memory of the device in use; `None` on the cpu backend or without a driver.
#[cfg(not(feature = "vram-probe"))]
pub fn gpu(_status: &EngineStatus) -> Option<Gpu> {
    None
}

/// Whether libcuda can be loaded; every driver call panics without it.
#[cfg(feature = "vram-probe")]
#[allow(unsafe_code)]
fn driver_present() -> bool {
    // SAFETY: only tries to dlopen libcuda and reports whether it could; it calls no driver
    // function and touches no shared state beyond the loader's own lazy handle.
    unsafe { cudarc::driver::sys::is_culib_present() }
}

/// Accelerator memory of the device in use, from the driver, in this process's context.
#[cfg(feature = "vram-probe")]
pub fn gpu(status: &EngineStatus) -> Option<Gpu> {
    use rbee_api::Backend;
    if status.backend() != Backend::Cuda || !driver_present() {
        return None;
    }
    let index: usize = status.device().rsplit(':').next()?.parse().ok()?;
    let ctx = cudarc::driver::CudaContext::new(index).ok()?;
    let (free, total) = cudarc::driver::result::mem_get_info().ok()?;
    let name = ctx.name().ok();
    let uuid = cudarc::driver::result::device::get(index as i32)
        .ok()
        .and_then(|d| cudarc::driver::result::device::get_uuid(d).ok())
        .map(|u| {
            format!(
                "GPU-{}",
                u.bytes.iter().map(|b| format!("{:02x}", *b as u8)).collect::<String>()
            )
        });
    Some(Gpu {
        device: DeviceInfo { index: u32::try_from(index).unwrap_or(0), uuid, name },
        vram: VramUsage { used_bytes: (total - free) as u64, total_bytes: total as u64 },
    })
}

//! Resource use of this process: resident memory, free disk, and (with the `vram-probe`
//! feature) accelerator memory; with the `cuda` feature, whether a CUDA device can be used.

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

/// Accelerator memory of the device in use, as the driver reports it for the whole device
/// (what `nvidia-smi` shows as used and total), with the device's name and UUID.
#[cfg(feature = "vram-probe")]
pub fn gpu(status: &EngineStatus) -> Option<Gpu> {
    if status.backend() != rbee_api::Backend::Cuda || !cuda::driver_present() {
        return None;
    }
    let index = cuda_ordinal(status.device())?;
    let ctx = cudarc::driver::CudaContext::new(index).ok()?;
    let (free, total) = ctx.mem_get_info().ok()?;
    let uuid = ctx.uuid().ok().map(|u| gpu_uuid(u.bytes.map(|b| b as u8)));
    Some(Gpu {
        device: DeviceInfo { index: u32::try_from(index).ok()?, uuid, name: ctx.name().ok() },
        vram: VramUsage { used_bytes: (total - free) as u64, total_bytes: total as u64 },
    })
}

#[cfg(feature = "cuda")]
pub use cuda::check_cuda_device;

/// The ordinal in a device label `cuda:N`.
#[cfg(any(feature = "vram-probe", test))]
fn cuda_ordinal(label: &str) -> Option<usize> {
    label.strip_prefix("cuda:")?.parse().ok()
}

/// A device UUID as `nvidia-smi` prints it: `GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`.
#[cfg(any(feature = "vram-probe", test))]
fn gpu_uuid(bytes: [u8; 16]) -> String {
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("GPU-{}-{}-{}-{}-{}", &hex[..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..])
}

/// The CUDA driver and libraries, loaded at run time (cudarc's dynamic loading): a build with
/// the `cuda` feature starts on machines without them and says what is missing when asked
/// for `--backend cuda`.
#[cfg(feature = "vram-probe")]
#[allow(unsafe_code)]
mod cuda {
    /// Whether libcuda can be loaded; every driver call panics without it.
    pub fn driver_present() -> bool {
        // SAFETY: dlopen()s libcuda and closes it again, calling no function of it; the
        // driver's initialisers only set up the driver's own state.
        unsafe { cudarc::driver::sys::is_culib_present() }
    }

    /// Why CUDA device `index` cannot be used. Checked before candle opens it, because
    /// candle's loader panics when the driver or a CUDA library is missing.
    #[cfg(feature = "cuda")]
    pub fn check_cuda_device(index: u32) -> Result<(), String> {
        use cudarc::driver::{CudaContext, result};
        if !driver_present() {
            return Err(format!(
                "--backend cuda: no NVIDIA driver found (libcuda.so.1 cannot be loaded). {WHERE}, \
                 or use --backend cpu"
            ));
        }
        let missing = missing_libraries();
        if !missing.is_empty() {
            return Err(format!(
                "--backend cuda: the CUDA 13 libraries {} cannot be loaded: run the cuda image of \
                 llm-worker-rbee, or add their folder (e.g. nvidia/cu13/lib of the nvidia-cublas, \
                 nvidia-curand and nvidia-cuda-nvrtc wheels) to LD_LIBRARY_PATH",
                missing.join(", ")
            ));
        }
        let driver_error = |what: &str, e: result::DriverError| {
            format!("--backend cuda: {what}: {e}. {WHERE}, or use --backend cpu")
        };
        result::init().map_err(|e| driver_error("the NVIDIA driver failed to initialise", e))?;
        check_driver_version()?;
        let count = result::device::get_count()
            .map_err(|e| driver_error("cannot count the CUDA devices", e))?;
        if i64::from(index) >= i64::from(count) {
            return Err(format!(
                "--backend cuda: there is no CUDA device {index}: the driver sees {count} \
                 (--device counts from 0)"
            ));
        }
        let ctx = CudaContext::new(index as usize)
            .map_err(|e| driver_error(&format!("cannot open CUDA device {index}"), e))?;
        let (major, minor) = ctx
            .compute_capability()
            .map_err(|e| driver_error(&format!("cannot query CUDA device {index}"), e))?;
        if major < MIN_COMPUTE_CAPABILITY {
            return Err(format!(
                "--backend cuda: CUDA device {index} ({}) has compute capability {major}.{minor}; \
                 this build's kernels need {MIN_COMPUTE_CAPABILITY}.0 or newer (A100, L4/L40, \
                 H100/H200): use --backend cpu",
                ctx.name().unwrap_or_default()
            ));
        }
        Ok(())
    }

    #[cfg(feature = "cuda")]
    const WHERE: &str = "Run on a node with an NVIDIA GPU and driver 580 or newer (in \
                         Kubernetes, request nvidia.com/gpu so that the NVIDIA container toolkit \
                         mounts the driver)";

    /// Oldest GPU generation the kernels are compiled for (A100).
    #[cfg(feature = "cuda")]
    const MIN_COMPUTE_CAPABILITY: i32 = 8;

    /// CUDA version (×1000) the kernels were compiled with; older drivers cannot load them.
    #[cfg(feature = "cuda")]
    const BUILT_FOR_CUDA: i32 = 13000;

    #[cfg(feature = "cuda")]
    fn check_driver_version() -> Result<(), String> {
        let mut version = 0i32;
        // SAFETY: cuDriverGetVersion writes one int through a pointer to a live local.
        let status = unsafe { cudarc::driver::sys::cuDriverGetVersion(&mut version) };
        if status != cudarc::driver::sys::CUresult::CUDA_SUCCESS || version >= BUILT_FOR_CUDA {
            return Ok(());
        }
        Err(format!(
            "--backend cuda: the NVIDIA driver supports CUDA {}.{}, but this build needs CUDA \
             {}.{} (driver 580 or newer): upgrade the node's driver, or use --backend cpu",
            version / 1000,
            version % 1000 / 10,
            BUILT_FOR_CUDA / 1000,
            BUILT_FOR_CUDA % 1000 / 10
        ))
    }

    /// The CUDA libraries candle opens with a device that cannot be loaded.
    #[cfg(feature = "cuda")]
    fn missing_libraries() -> Vec<&'static str> {
        // SAFETY: as in driver_present: each dlopen()s a library and closes it again.
        let present = unsafe {
            [
                ("libcublas.so.13", cudarc::cublas::sys::is_culib_present()),
                ("libcublasLt.so.13", cudarc::cublaslt::sys::is_culib_present()),
                ("libcurand.so.10", cudarc::curand::sys::is_culib_present()),
                ("libnvrtc.so.13", cudarc::nvrtc::sys::is_culib_present()),
            ]
        };
        present.iter().filter(|(_, ok)| !ok).map(|(name, _)| *name).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuid_is_printed_as_nvidia_smi_does() {
        let bytes = [
            0x1f, 0x2e, 0x3d, 0x4c, 0x5b, 0x6a, 0x79, 0x88, 0x97, 0xa6, 0xb5, 0xc4, 0xd3, 0xe2,
            0xf1, 0x00,
        ];
        assert_eq!(gpu_uuid(bytes), "GPU-1f2e3d4c-5b6a-7988-97a6-b5c4d3e2f100");
    }

    #[test]
    fn the_ordinal_comes_from_the_device_label() {
        assert_eq!(cuda_ordinal("cuda:3"), Some(3));
        assert_eq!(cuda_ordinal("cpu"), None);
        assert_eq!(cuda_ordinal("cuda:x"), None);
    }
}

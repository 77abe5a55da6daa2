//! Byte sizes for display.

/// Formats bytes in binary units with one decimal, as `kubectl` users read them:
/// `7.6Gi`, `512.0Mi`, `900B`.
pub fn binary_size(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["Ki", "Mi", "Gi", "Ti", "Pi", "Ei"];
    if bytes < 1024 {
        return format!("{bytes}B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1}{}", UNITS[unit])
}

/// `used/total` for the VRAM printer column, e.g. `7.6Gi/22.5Gi`.
pub fn vram_summary(used: u64, total: u64) -> String {
    format!("{}/{}", binary_size(used), binary_size(total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_like_kubectl_users_expect() {
        assert_eq!(binary_size(0), "0B");
        assert_eq!(binary_size(1023), "1023B");
        assert_eq!(binary_size(1024), "1.0Ki");
        assert_eq!(binary_size(8_160_437_862), "7.6Gi");
        assert_eq!(vram_summary(8_160_437_862, 24_159_191_040), "7.6Gi/22.5Gi");
    }
}

//! What the kernel knows about a process: its peak resident memory and the CPU time it used.

use std::time::Duration;

/// A process's resource use at one moment.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Usage {
    /// Peak resident set size (VmHWM), in MiB.
    pub(crate) peak_rss_mib: f64,
    /// User plus system CPU time so far.
    pub(crate) cpu: Duration,
}

/// Reads `pid`'s usage from `/proc`; zeros if the process is gone.
pub(crate) fn usage(pid: u32) -> Usage {
    let peak_rss_mib = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("VmHWM:"))
                .and_then(|kb| kb.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0);
    let cpu = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            // Fields after the command name (which may hold spaces) closed by ')'.
            let rest = stat.rsplit_once(')')?.1;
            let fields: Vec<&str> = rest.split_whitespace().collect();
            let utime: u64 = fields.get(11)?.parse().ok()?;
            let stime: u64 = fields.get(12)?.parse().ok()?;
            Some(Duration::from_secs_f64(
                (utime + stime) as f64 / clock_ticks(),
            ))
        })
        .unwrap_or_default();
    Usage { peak_rss_mib, cpu }
}

/// Clock ticks per second (`getconf CLK_TCK`), 100 on Linux unless told otherwise.
fn clock_ticks() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .and_then(|text| text.trim().parse().ok())
        .unwrap_or(100.0)
}

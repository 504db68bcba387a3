//! What the kernel knows about a process: its peak resident memory and the CPU time it used.

use std::time::Duration;

/// A process's resource use at one moment.
#[derive(Debug, Clone, Copy, Default)]
pub struct Usage {
    /// Peak resident set size (VmHWM), in MiB.
    pub peak_rss_mib: f64,
    /// Resident set size now (VmRSS), in MiB.
    pub rss_mib: f64,
    /// User plus system CPU time so far.
    pub cpu: Duration,
}

/// Reads `pid`'s usage from `/proc`; zeros if the process is gone.
pub fn usage(pid: u32) -> Usage {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let mib = |field: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(field))
            .and_then(|kb| kb.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .map_or(0.0, |kb| kb / 1024.0)
    };
    let (peak_rss_mib, rss_mib) = (mib("VmHWM:"), mib("VmRSS:"));
    let cpu = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| Some(stat_cpu(&stat)?.1))
        .unwrap_or_default();
    Usage {
        peak_rss_mib,
        rss_mib,
        cpu,
    }
}

/// The command name and the user plus system CPU time in a `/proc/.../stat` line.
pub fn stat_cpu(stat: &str) -> Option<(&str, Duration)> {
    // `pid (comm) state ...`: the name, which may hold spaces, sits between the first '(' and
    // the last ')'.
    let (head, rest) = stat.rsplit_once(')')?;
    let comm = head.split_once('(')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((
        comm,
        Duration::from_secs_f64((utime + stime) as f64 / clock_ticks()),
    ))
}

/// Clock ticks per second (`getconf CLK_TCK`, asked once), 100 on Linux unless told otherwise.
fn clock_ticks() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|out| String::from_utf8(out.stdout).ok())
            .and_then(|text| text.trim().parse().ok())
            .unwrap_or(100.0)
    })
}

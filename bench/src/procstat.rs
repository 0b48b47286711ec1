//! A process's CPU time and resident memory, from `/proc/<pid>/stat` and
//! `/proc/<pid>/status` (Linux). CPU time is `utime + stime` of all the process's threads, in
//! clock ticks (`getconf CLK_TCK`, 100 on Linux nearly always); memory is `VmRSS` (resident
//! now), `VmHWM` (the peak resident set since the process started) and `RssAnon` (the part of
//! `VmRSS` that is the process's own memory rather than mapped files, such as its binary's
//! code, which the kernel shares between every process running that binary).

use std::process::Command;

use crate::Error;

/// Clock ticks per second of `/proc/<pid>/stat`'s times: `getconf CLK_TCK`, else 100.
pub fn clock_ticks() -> u64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .filter(|&t| t > 0)
        .unwrap_or(100)
}

/// User plus system CPU time of process `pid` so far, in clock ticks.
pub fn cpu_ticks(pid: u32) -> Result<u64, Error> {
    let path = format!("/proc/{pid}/stat");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("cannot read {path}: {e}"))?;
    parse_stat_cpu(&text).ok_or_else(|| format!("{path} has no utime/stime: {text}"))
}

/// Resident memory of process `pid`, in KiB.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Memory {
    /// `VmRSS`: resident now.
    pub rss_kib: u64,
    /// `VmHWM`: the peak since the process started.
    pub peak_rss_kib: u64,
    /// `RssAnon`: resident now and not backed by a file (heap, stacks).
    pub rss_anon_kib: u64,
}

pub fn memory(pid: u32) -> Result<Memory, Error> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("cannot read {path}: {e}"))?;
    parse_status_memory(&text).ok_or_else(|| format!("{path} has no VmRSS/VmHWM/RssAnon"))
}

/// `utime + stime` from the text of `/proc/<pid>/stat`. The command name (field 2) is in
/// parentheses and may hold spaces and parentheses itself, so fields are counted from the
/// last `)`: after it come state (field 3) … utime (14) and stime (15).
pub fn parse_stat_cpu(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// `VmRSS`, `VmHWM` and `RssAnon` from the text of `/proc/<pid>/status` (`VmHWM:   10240 kB`).
pub fn parse_status_memory(status: &str) -> Option<Memory> {
    let field = |name: &str| {
        status.lines().find_map(|l| {
            l.strip_prefix(name)?
                .strip_prefix(':')?
                .split_whitespace()
                .next()?
                .parse::<u64>()
                .ok()
        })
    };
    Some(Memory {
        rss_kib: field("VmRSS")?,
        peak_rss_kib: field("VmHWM")?,
        rss_anon_kib: field("RssAnon")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_times_are_found_after_a_command_name_with_spaces_and_parentheses() {
        let stat = "4242 (weft (proxy) x) S 1 4242 4242 0 -1 4194560 1535 0 0 0 \
                    731 212 0 0 20 0 3 0 123456 12345678 2345 18446744073709551615";
        assert_eq!(parse_stat_cpu(stat), Some(731 + 212));
        assert_eq!(parse_stat_cpu("4242 (weft) S 1 2"), None);
    }

    #[test]
    fn status_memory_is_read_in_kib() {
        let status = "Name:\tweft\nVmPeak:\t  812340 kB\nVmSize:\t  812340 kB\n\
                      VmHWM:\t    9876 kB\nVmRSS:\t    8765 kB\nRssAnon:\t    1234 kB\n\
                      RssFile:\t    7531 kB\nThreads:\t3\n";
        assert_eq!(
            parse_status_memory(status),
            Some(Memory {
                rss_kib: 8765,
                peak_rss_kib: 9876,
                rss_anon_kib: 1234
            })
        );
        assert_eq!(parse_status_memory("Name:\tweft\n"), None);
    }

    #[test]
    fn this_process_has_cpu_time_and_memory() {
        let pid = std::process::id();
        let m = memory(pid).unwrap();
        assert!(m.rss_kib > 0 && m.peak_rss_kib >= m.rss_kib, "{m:?}");
        assert!(m.rss_anon_kib > 0 && m.rss_anon_kib <= m.rss_kib, "{m:?}");
        assert!(cpu_ticks(pid).is_ok());
        assert!(clock_ticks() > 0);
    }
}

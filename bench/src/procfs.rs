//! What the kernel says about a server: resident memory (`/proc/PID/status`), CPU time
//! (`/proc/PID/stat`), its child processes (gunicorn's worker), and CPU affinity.

use std::fs;
use std::time::Duration;

/// `VmRSS`, `VmHWM` and `RssAnon` (the private, non-file part of RSS) of one process, in KiB.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Memory {
    pub rss_kib: u64,
    pub hwm_kib: u64,
    pub anon_kib: u64,
}

fn status_field(status: &str, field: &str) -> Option<u64> {
    status.lines().find_map(|line| {
        let rest = line.strip_prefix(field)?.strip_prefix(':')?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

pub fn memory_of(pid: u32) -> Option<Memory> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    Some(Memory {
        rss_kib: status_field(&status, "VmRSS")?,
        hwm_kib: status_field(&status, "VmHWM")?,
        anon_kib: status_field(&status, "RssAnon").unwrap_or(0),
    })
}

/// How many files the process has open (`/proc/PID/fd`).
pub fn fd_count(pid: u32) -> Option<usize> {
    Some(fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count())
}

/// The process and all its descendants (gunicorn: the arbiter and its worker).
pub fn tree(pid: u32) -> Vec<u32> {
    let mut all = vec![pid];
    let mut at = 0;
    while at < all.len() {
        let parent = all[at];
        at += 1;
        if let Ok(tasks) = fs::read_dir(format!("/proc/{parent}/task")) {
            for task in tasks.flatten() {
                let children = fs::read_to_string(task.path().join("children")).unwrap_or_default();
                all.extend(children.split_whitespace().filter_map(|c| c.parse::<u32>().ok()));
            }
        }
    }
    all
}

/// Resident memory of the whole process tree (KiB); peak is the sum of each process's peak.
pub fn tree_memory(pid: u32) -> Memory {
    tree(pid).into_iter().filter_map(memory_of).fold(Memory::default(), |sum, m| Memory {
        rss_kib: sum.rss_kib + m.rss_kib,
        hwm_kib: sum.hwm_kib + m.hwm_kib,
        anon_kib: sum.anon_kib + m.anon_kib,
    })
}

/// Resets the peak (`VmHWM`) to the current RSS for the tree (`echo 5 > /proc/PID/clear_refs`).
pub fn reset_peak(pid: u32) {
    for p in tree(pid) {
        let _ = fs::write(format!("/proc/{p}/clear_refs"), "5");
    }
}

/// User + system CPU time the tree has used so far.
pub fn tree_cpu_time(pid: u32) -> Duration {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let total: u64 = tree(pid)
        .into_iter()
        .filter_map(|p| {
            let stat = fs::read_to_string(format!("/proc/{p}/stat")).ok()?;
            // Fields after the `(comm)`, which may contain spaces: state is field 3, utime 14, stime 15.
            let after = &stat[stat.rfind(')')? + 2..];
            let fields: Vec<&str> = after.split_whitespace().collect();
            Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
        })
        .sum();
    Duration::from_secs_f64(total as f64 / ticks)
}

/// Restricts the calling thread (and what it spawns afterwards) to `cores`.
pub fn pin_current(cores: &[usize]) -> std::io::Result<()> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET and sched_setaffinity only touch it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for &core in cores {
            libc::CPU_SET(core, &mut set);
        }
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Raises the open-file limit to its hard limit (1,000 connections need more than 1,024 fds
/// when client and server share a limit).
pub fn raise_fd_limit() {
    // SAFETY: getrlimit/setrlimit with a valid pointer to a local struct.
    unsafe {
        let mut limit: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

/// `/proc/loadavg`'s first three numbers.
pub fn loadavg() -> String {
    fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_status_fields() {
        let status = "Name:\tx\nVmHWM:\t  2048 kB\nVmRSS:\t  1024 kB\n";
        assert_eq!(status_field(status, "VmRSS"), Some(1024));
        assert_eq!(status_field(status, "VmHWM"), Some(2048));
        assert_eq!(status_field(status, "VmSwap"), None);
    }

    #[test]
    fn sees_its_own_process() {
        let me = std::process::id();
        let memory = memory_of(me).unwrap();
        assert!(memory.rss_kib > 0 && memory.hwm_kib >= memory.rss_kib);
        assert!(tree(me).contains(&me));
        assert!(fd_count(me).unwrap() >= 3);
    }
}

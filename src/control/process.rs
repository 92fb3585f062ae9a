//! The daemon process as the kernel sees it (`/proc/self`): resident memory, CPU time, open file
//! descriptors and threads, the figures an operator graphs to see a leak or a runaway.

use std::time::Duration;

/// One reading of the process's resources.
#[derive(Debug, Clone, PartialEq)]
pub struct ProcessStats {
    pub resident_bytes: u64,
    pub cpu: Duration,
    pub open_fds: u64,
    pub threads: u64,
    /// Seconds since the Unix epoch when the process started.
    pub start_time_s: f64,
}

impl ProcessStats {
    /// Reads `/proc/self`; `None` where there is no procfs.
    pub fn read() -> Option<Self> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        // Fields after the command name, which is in parentheses and may hold spaces.
        let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
        let field = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
        // SAFETY: sysconf only reads a constant of the running system.
        let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        // SAFETY: as above.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(1) as u64;
        let cpu_ticks = field(14)? + field(15)?;
        let start_ticks = field(22)?;
        let boot = std::fs::read_to_string("/proc/stat")
            .ok()?
            .lines()
            .find_map(|l| l.strip_prefix("btime ")?.trim().parse::<u64>().ok())?;
        let resident_pages = std::fs::read_to_string("/proc/self/statm")
            .ok()?
            .split_whitespace()
            .nth(1)?
            .parse::<u64>()
            .ok()?;
        Some(Self {
            resident_bytes: resident_pages * page,
            cpu: Duration::from_secs_f64(cpu_ticks as f64 / ticks),
            open_fds: std::fs::read_dir("/proc/self/fd").ok()?.count() as u64,
            threads: field(20)?,
            start_time_s: boot as f64 + start_ticks as f64 / ticks,
        })
    }
}

/// glibc's malloc arenas a months-long daemon keeps (see [`bound_malloc_arenas`]).
pub const MALLOC_ARENAS: i32 = 2;

/// Bounds glibc's malloc to [`MALLOC_ARENAS`] arenas, unless `MALLOC_ARENA_MAX` is set (glibc
/// honours that itself). By default glibc gives threads that contend for memory arenas of their
/// own, up to eight per core, and a fragmented arena is seldom returned to the system: with a
/// fault every 15 s (`scripts/soak --fault-every 15`, 10 minutes) resident memory climbed at each
/// camera restart and caps change, 594 → 679 MiB, and stayed within 566–582 MiB with two arenas.
/// Frames live in GStreamer's pools and libtorch's caching allocators, not in these arenas.
/// Call it before any thread starts. Returns the limit set, if any.
pub fn bound_malloc_arenas() -> Option<i32> {
    if std::env::var_os("MALLOC_ARENA_MAX").is_some() {
        return None;
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt only sets one of the allocator's parameters.
        if unsafe { libc::mallopt(libc::M_ARENA_MAX, MALLOC_ARENAS) } == 1 {
            return Some(MALLOC_ARENAS);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let before = ProcessStats::read().expect("procfs");
        assert!(before.resident_bytes > 1 << 20, "{before:?}");
        assert!(before.threads >= 1);
        // Other tests open and close files meanwhile; twenty held here are a floor.
        let files: Vec<_> = (0..20)
            .map(|_| std::fs::File::open("/proc/self/stat").unwrap())
            .collect();
        let after = ProcessStats::read().unwrap();
        assert!(after.open_fds >= 20, "{after:?}");
        drop(files);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        assert!(before.start_time_s <= now && before.start_time_s > now - 3600.0);
    }
}

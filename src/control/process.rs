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

/// Hands the heap's free pages back to the kernel (glibc's `malloc_trim`); returns the resident
/// bytes released, as far as a reading before and after shows.
///
/// Why: glibc keeps what the frame path frees in its per-thread arenas, and a pipeline rebuilt
/// at another size (a camera's new resolution, a reconnect) frees buffers whose pages are only
/// reused by allocations of a similar shape. Over hours the resident figure an operator watches
/// climbs by tens of MiB that the process no longer uses (a 45-minute soak: 624 MiB before a
/// trim, 587 MiB after). Trimming walks every arena under its lock (on this 2-core box, loaded:
/// 13 ms with nothing to hand back, 114 ms for 550 MiB freed in 4 KiB holes), so it runs from
/// the daemon's loop once a minute, never on the frame path; a frame-path thread that allocates
/// meanwhile waits for its arena, once a minute at most.
pub fn return_free_memory() -> u64 {
    let before = ProcessStats::read().map_or(0, |s| s.resident_bytes);
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own arenas under their locks; it has no
    // preconditions on the caller.
    unsafe {
        libc::malloc_trim(0);
    }
    let after = ProcessStats::read().map_or(0, |s| s.resident_bytes);
    before.saturating_sub(after)
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

    /// A heap left full of holes, as a pipeline rebuilt at another size leaves it: 256 MiB in
    /// 4 KiB blocks on a thread of its own (its own arena), every 16th kept so that nothing
    /// can be handed back from the top, the rest freed. The freed pages stay resident until the
    /// trim, which must hand back most of them.
    #[test]
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    fn trimming_hands_back_what_a_fragmented_heap_holds() {
        let kept = std::thread::spawn(|| {
            let blocks: Vec<Vec<u8>> = (0..65_536).map(|i| vec![i as u8; 4096]).collect();
            blocks
                .into_iter()
                .enumerate()
                .filter(|(i, _)| i % 16 == 0)
                .map(|(_, b)| b)
                .collect::<Vec<_>>()
        })
        .join()
        .unwrap();
        let released = return_free_memory();
        assert!(
            released > 128 << 20,
            "released {} MiB of ~240 MiB freed",
            released >> 20
        );
        drop(kept);
    }
}

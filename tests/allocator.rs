//! glibc's malloc arenas stay bounded once `bound_malloc_arenas` ran, however many threads
//! contend (the daemon calls it first thing in `main`). Its own test binary: the count depends
//! on which threads allocated before.

use std::path::Path;

/// How many arenas glibc's malloc has, from `malloc_info`'s XML (`<heap nr="N">` per arena).
fn arenas(dir: &Path) -> usize {
    let path = dir.join("malloc.xml");
    let c_path = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
    // SAFETY: a stream opened here, written by malloc_info and closed before reading it.
    unsafe {
        let file = libc::fopen(c_path.as_ptr(), c"w".as_ptr());
        assert!(!file.is_null());
        assert_eq!(libc::malloc_info(0, file), 0);
        libc::fclose(file);
    }
    std::fs::read_to_string(&path)
        .unwrap()
        .matches("<heap nr=")
        .count()
}

#[test]
fn contending_threads_share_the_bounded_arenas() {
    let dir = tempfile::tempdir().unwrap();
    let limit = visiond::control::process::bound_malloc_arenas();
    if std::env::var_os("MALLOC_ARENA_MAX").is_some() {
        assert_eq!(limit, None, "glibc reads the variable itself");
        return;
    }
    assert_eq!(limit, Some(visiond::control::process::MALLOC_ARENAS));
    // Sixteen threads allocating at once, as sources, outputs and workers do: unbounded,
    // glibc would give most of them an arena of their own (up to eight per core).
    let threads: Vec<_> = (0..16)
        .map(|i| {
            std::thread::spawn(move || {
                let mut kept = Vec::new();
                for round in 0..2000 {
                    kept.push(vec![i as u8; 64 + (round % 512)]);
                    if kept.len() > 64 {
                        kept.drain(..32);
                    }
                }
                kept.len()
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    let count = arenas(dir.path());
    assert!(
        count <= visiond::control::process::MALLOC_ARENAS as usize,
        "{count} arenas"
    );
}

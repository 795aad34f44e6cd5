//! SQLite's serial write path on one core: the group-commit writer's
//! thread and the write connection's sqlx thread.
//!
//! A commit is a dozen hand-offs between those two threads (each
//! statement's result of a batch's text comes back as a message of its
//! own). Between two cores a hand-off is a wake-up of the other core, and
//! in a virtual machine whose idle cores halt (most clouds, Firecracker)
//! that costs 23–27 µs a round trip against 1.9 µs on one core
//! (docs/BENCHMARKS.md, seventeenth session): about a third of a commit
//! at 16 clients. On one core the two threads take turns, which is all
//! they ever do. Request threads stay free to run anywhere.
//!
//! The core is one this process may run on, chosen by process id so that
//! several instances on one host spread over its cores; with a single core
//! allowed nothing is pinned. PostgreSQL's writer is not pinned: its peer
//! is the server's process, which hallmark does not place.

use std::sync::OnceLock;

/// The name prefix of the write connection's sqlx thread (a thread name
/// is at most 15 bytes: `sqlite-write-NN`).
pub(super) const WRITE_THREAD: &str = "sqlite-write";

/// The core the write path runs on, if the process may use more than one.
fn core() -> Option<usize> {
    static CORE: OnceLock<Option<usize>> = OnceLock::new();
    *CORE.get_or_init(|| {
        let allowed = imp::allowed(0)?;
        (allowed.len() > 1).then(|| allowed[std::process::id() as usize % allowed.len()])
    })
}

/// Pins the calling thread to the write path's core.
pub(super) fn pin_current_thread() {
    if let Some(core) = core() {
        imp::pin(0, core);
    }
}

/// Pins every thread of this process whose name starts with `prefix` to
/// the write path's core (sqlx makes the connection's thread; its id is
/// found by name).
pub(super) fn pin_threads_named(prefix: &str) {
    let Some(core) = core() else { return };
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return;
    };
    for task in tasks.flatten() {
        let Ok(name) = std::fs::read_to_string(task.path().join("comm")) else {
            continue;
        };
        if let (true, Ok(tid)) = (
            name.starts_with(prefix),
            task.file_name().to_string_lossy().parse::<i32>(),
        ) {
            imp::pin(tid, core);
        }
    }
}

#[cfg(target_os = "linux")]
mod imp {
    /// The cores thread `tid` (0: the caller) may run on.
    pub(super) fn allowed(tid: i32) -> Option<Vec<usize>> {
        // SAFETY: a zeroed cpu_set_t is an empty set; the kernel writes at
        // most its size.
        let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        let size = std::mem::size_of::<libc::cpu_set_t>();
        // SAFETY: `set` is valid for `size` bytes.
        if unsafe { libc::sched_getaffinity(tid, size, &mut set) } != 0 {
            return None;
        }
        Some(
            (0..libc::CPU_SETSIZE as usize)
                // SAFETY: `cpu` is below CPU_SETSIZE.
                .filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) })
                .collect(),
        )
    }

    /// Pins thread `tid` (0: the caller) to `core`; a refusal leaves it
    /// where it was (the write path is then only slower).
    pub(super) fn pin(tid: i32, core: usize) {
        // SAFETY: as in `allowed`; `core` came from the allowed set.
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(core, &mut set);
            if libc::sched_setaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
                tracing::debug!(tid, core, error = %std::io::Error::last_os_error(), "could not pin a store thread");
            }
        }
    }
}

#[cfg(not(target_os = "linux"))]
mod imp {
    pub(super) fn allowed(_tid: i32) -> Option<Vec<usize>> {
        None
    }

    pub(super) fn pin(_tid: i32, _core: usize) {}
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    fn own_tid() -> i32 {
        // SAFETY: gettid has no preconditions.
        unsafe { libc::gettid() }
    }

    #[test]
    fn the_writer_and_the_named_connection_thread_share_one_allowed_core() {
        let before = imp::allowed(0).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let (stop, wait) = std::sync::mpsc::channel::<()>();
        let connection = std::thread::Builder::new()
            .name(format!("{WRITE_THREAD}-7"))
            .spawn(move || {
                tx.send(own_tid()).unwrap();
                let _ = wait.recv();
            })
            .unwrap();
        let connection_tid = rx.recv().unwrap();
        pin_threads_named(WRITE_THREAD);
        let writer = std::thread::spawn(|| {
            pin_current_thread();
            imp::allowed(0).unwrap()
        })
        .join()
        .unwrap();
        let pinned = imp::allowed(connection_tid).unwrap();
        if before.len() > 1 {
            assert_eq!(pinned.len(), 1, "the connection's thread is on one core");
            assert_eq!(writer, pinned, "the writer is on the same core");
            assert!(before.contains(&pinned[0]), "a core the process may use");
        } else {
            assert_eq!(pinned, before, "one core allowed: nothing pinned");
            assert_eq!(writer, before);
        }
        // A thread of another name (this one) is left where it was.
        assert_eq!(imp::allowed(0).unwrap(), before);
        stop.send(()).unwrap();
        connection.join().unwrap();
    }
}

//! The C allocator's settings for a process that allocates and frees tensors of many MiB at
//! every step.
//!
//! glibc's malloc hands buffers above its mmap threshold straight to the kernel and gives freed
//! memory at the top of the heap back; candle allocates a fresh buffer for every intermediate,
//! so a pretraining step of `tiny_pretrained` spent about a fifth of its time in page faults and
//! the kernel's zeroing of the same pages, step after step (perf: `clear_page_erms`,
//! `exc_page_fault`; measured 2.8-3.1 s per step with the defaults, 2.3-2.4 s without the
//! round trips; `results/bench/train_cpu.md`). PyTorch's CPU step does not pay it.
//!
//! The thresholds can only be set before the first allocation (mallopt is an unsafe FFI call and
//! this workspace forbids unsafe code), so `main` re-executes the binary once, as its first
//! action, with `MALLOC_MMAP_THRESHOLD_`, `MALLOC_TRIM_THRESHOLD_` and `MALLOC_ARENA_MAX` set:
//! the same process
//! (`exec` keeps the pid, arguments, standard streams and the rest of the environment), now
//! keeping freed memory for reuse (resident memory stays at the peak, which is reported anyway).
//! Values a user set are kept (the others are still set); `VCP_MALLOC_DEFAULTS=1` keeps the C
//! library's defaults.
//!
//! One arena: with several threads glibc gives each its own arena, whose heaps are capped at
//! 64 MiB and trimmed on their own terms, so buffers freed by rayon's workers went back to the
//! kernel and were faulted in again (perf at 2 threads: `clear_page_erms` + `exc_page_fault`
//! 5 %). A single arena keeps them with the thresholds above; the lock it adds is taken a few
//! hundred times per step. Measured on a pretraining step of `tiny_pretrained` at 2 threads,
//! alternating: 1209-1372 ms with one arena, 1430-1503 ms without.

/// The environment variables set, and their values (bytes).
pub const SETTINGS: [(&str, &str); 3] = [
    // Buffers up to 1 GiB come from the heap (reused), not from fresh kernel pages.
    ("MALLOC_MMAP_THRESHOLD_", "1073741824"),
    // Freed memory is kept unless 4 GiB sit unused at the top of the heap.
    ("MALLOC_TRIM_THRESHOLD_", "4294967296"),
    // Every thread allocates from the main heap (see the module docs).
    ("MALLOC_ARENA_MAX", "1"),
];

/// Re-execute this binary with those of [`SETTINGS`] the environment does not set, unless all
/// are set, this is opted out of, or this is not Linux with glibc. Returns only when nothing was re-executed (or `exec` failed: then the
/// program runs with the defaults, which are only slower).
pub fn tune() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        use std::os::unix::process::CommandExt;
        let missing: Vec<(&str, &str)> = SETTINGS
            .iter()
            .copied()
            .filter(|(k, _)| std::env::var_os(k).is_none())
            .collect();
        // After the re-execution every setting is present: this cannot loop.
        if std::env::var_os("VCP_MALLOC_DEFAULTS").is_some() || missing.is_empty() {
            return;
        }
        let Ok(exe) = std::env::current_exe() else {
            return;
        };
        let mut args = std::env::args_os();
        let mut cmd = std::process::Command::new(exe);
        if let Some(argv0) = args.next() {
            cmd.arg0(argv0);
        }
        cmd.args(args).envs(missing);
        // `exec` returns only on failure.
        let _ = cmd.exec();
    }
}

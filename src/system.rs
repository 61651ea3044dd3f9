//! The process and the machine: peak memory, and the settings of the allocator and of candle's
//! thread pool that every command starts with.

/// Peak resident memory of this process in MiB (Linux `VmHWM`; 0 where it cannot be read).
pub fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

/// "CPU model, N threads", for benchmark reports.
pub fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    format!("{cpu}, {threads} threads")
}

/// Set up the process before any thread starts: keep freed memory for reuse, pin candle's
/// thread count, and for training (`training`) stop the pool's threads spinning between tasks.
pub fn configure_process(training: bool) {
    keep_freed_memory();
    pin_thread_count();
    if training {
        no_spinning_workers();
    }
}

/// glibc returns every freed block above 128 KiB to the OS and maps the next one fresh, so a
/// training step, which allocates the same activation-sized tensors every step, spent ~15% of
/// its time zeroing new pages (`clear_page_erms` in a profile). Blocks up to 32 MiB are kept
/// for reuse instead, and the heap is trimmed only above 256 MiB free.
fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 256 << 20);
    }
}

/// candle asks for its thread count on every matmul, and without `RAYON_NUM_THREADS` that
/// re-reads `/proc/cpuinfo` each time (~3% of a decoding step in a profile). Its answer is
/// computed once here and pinned in the variable, before any thread starts.
fn pin_thread_count() {
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        let n = candle_core::utils::get_num_threads();
        std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    }
}

/// candle's quantized-matmul and elementwise thread pool spins after each task (25k rounds) for
/// the next one, which suits decoding (hundreds of small ops per token) but in training steals
/// a core from the f32 GEMM's own threads: 11% of a step's samples were that spinning, and the
/// step ran ~10% faster without it. Only when the user has not chosen a value.
fn no_spinning_workers() {
    if std::env::var_os("CANDLE_BARRIER_POOL_SPIN_LIMIT").is_none() {
        std::env::set_var("CANDLE_BARRIER_POOL_SPIN_LIMIT", "0");
    }
}

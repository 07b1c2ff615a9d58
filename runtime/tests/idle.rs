//! Idle cost, alone in its own test binary so no other test's threads are measured.

use std::time::{Duration, Instant};

use vmpath_runtime::{Runtime, RuntimeConfig};

fn process_cpu_time() -> Duration {
    // utime + stime of the whole process, in clock ticks (100 Hz on Linux).
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
    Duration::from_millis(ticks * 10)
}

#[test]
fn idle_runtime_uses_well_under_five_percent_of_a_core() {
    let rt = Runtime::start(RuntimeConfig {
        pin: false,
        ..RuntimeConfig::default()
    })
    .unwrap();
    // Let the reactors settle into sleep, then measure a quiet second.
    std::thread::sleep(Duration::from_millis(100));
    let c0 = process_cpu_time();
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs(1));
    let used = process_cpu_time() - c0;
    let wall = t0.elapsed();
    let reactors = rt.handles().len() as f64;
    let per_core = used.as_secs_f64() / wall.as_secs_f64() / reactors;
    assert!(
        per_core < 0.05,
        "idle reactors used {:.1}% of a core each",
        per_core * 100.0
    );
    for h in rt.handles() {
        assert!(h.stats().sleeps > 0);
    }
    rt.shutdown();
}

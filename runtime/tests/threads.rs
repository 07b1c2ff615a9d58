//! Tests with real reactor threads: ordering under concurrent senders, sleep/wake, idle cost.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use vmpath_runtime::{PollStatus, Runtime, RuntimeConfig};

fn cfg(idle_sleep_ns: u64) -> RuntimeConfig {
    RuntimeConfig {
        idle_sleep_ns,
        pin: false,
        stop_grace: Duration::from_secs(2),
        ..RuntimeConfig::default()
    }
}

#[test]
fn messages_arrive_exactly_once_in_order_per_sender() {
    let rt = Runtime::start(cfg(0)).unwrap();
    let h = rt.handles()[0].clone();
    let seen: Arc<Mutex<HashMap<u32, Vec<u32>>>> = Arc::default();
    const SENDERS: u32 = 4;
    const PER: u32 = 5000;
    let threads: Vec<_> = (0..SENDERS)
        .map(|s| {
            let h = h.clone();
            let seen = seen.clone();
            std::thread::spawn(move || {
                for i in 0..PER {
                    let seen = seen.clone();
                    let mut msg: vmpath_runtime::Message = Box::new(move |_| {
                        seen.lock().unwrap().entry(s).or_default().push(i);
                    });
                    // Bounded inbox: retry with the returned message until it fits.
                    loop {
                        match h.send_boxed(msg) {
                            Ok(()) => break,
                            Err(e) => {
                                assert!(!e.stopped);
                                msg = e.msg;
                                std::thread::yield_now();
                            }
                        }
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    // A final call() is ordered after everything this thread's senders pushed.
    h.call(|_| ()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let total: usize = seen.lock().unwrap().values().map(|v| v.len()).sum();
        if total == (SENDERS * PER) as usize || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let seen = seen.lock().unwrap();
    for s in 0..SENDERS {
        let v = &seen[&s];
        assert_eq!(v.len(), PER as usize, "sender {s}");
        assert!(v.iter().copied().eq(0..PER), "sender {s} out of order");
    }
    rt.shutdown();
}

#[test]
fn sleeping_reactor_wakes_on_a_message() {
    let rt = Runtime::start(cfg(0)).unwrap();
    let h = rt.handles()[0].clone();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !h.is_sleeping() {
        assert!(Instant::now() < deadline, "reactor never went to sleep");
        std::thread::sleep(Duration::from_millis(1));
    }
    let sleeps_before = h.stats().sleeps;
    assert!(sleeps_before >= 1);
    let t0 = Instant::now();
    let reactor_id = h.call(|r| r.id()).unwrap();
    let woke_in = t0.elapsed();
    assert_eq!(reactor_id, 0);
    // The reactor's max sleep is 1 s: a wake by eventfd must be far quicker than that.
    assert!(
        woke_in < Duration::from_millis(200),
        "woke after {woke_in:?}"
    );
    rt.shutdown();
}

#[test]
fn sleeping_reactor_wakes_for_its_timer_and_a_registered_fd() {
    let rt = Runtime::start(cfg(0)).unwrap();
    let h = rt.handles()[0].clone();
    let fired = Arc::new(Mutex::new(Vec::<Instant>::new()));
    let f2 = fired.clone();
    h.call(move |r| {
        r.register_timed_poller("t", 20_000_000, move |_| {
            f2.lock().unwrap().push(Instant::now());
            PollStatus::Busy
        });
    })
    .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let n = fired.lock().unwrap().len();
    // 20 ms period over ~300 ms; sleeping between ticks must not lose them.
    assert!((8..=16).contains(&n), "timer fired {n} times");
    assert!(h.stats().sleeps >= 5, "reactor did not sleep between ticks");

    // A readable fd registered by a poller wakes it too.
    let (rd, wr) = std::os::unix::net::UnixStream::pair().unwrap();
    rd.set_nonblocking(true).unwrap();
    let got = Arc::new(Mutex::new(None::<Instant>));
    let g2 = got.clone();
    h.call(move |r| {
        use std::io::Read;
        use std::os::fd::AsRawFd;
        r.register_wake_fd(rd.as_raw_fd()).unwrap();
        let mut rd = rd;
        r.register_poller("reader", move |_| {
            let mut b = [0u8; 8];
            match rd.read(&mut b) {
                Ok(n) if n > 0 => {
                    *g2.lock().unwrap() = Some(Instant::now());
                    PollStatus::Busy
                }
                _ => PollStatus::Idle,
            }
        });
    })
    .unwrap();
    std::thread::sleep(Duration::from_millis(50));
    let t0 = Instant::now();
    use std::io::Write;
    (&wr).write_all(b"x").unwrap();
    let deadline = Instant::now() + Duration::from_secs(2);
    while got.lock().unwrap().is_none() {
        assert!(Instant::now() < deadline, "fd did not wake the reactor");
        std::thread::sleep(Duration::from_millis(1));
    }
    let lat = got.lock().unwrap().unwrap() - t0;
    assert!(lat < Duration::from_millis(15), "fd wake took {lat:?}");
    // Leave the poller registered: shutdown's grace period ends the loop.
    drop(rt);
}

#[test]
fn stop_waits_for_pollers_to_drain() {
    let rt = Runtime::start(cfg(0)).unwrap();
    let h = rt.handles()[0].clone();
    let done = Arc::new(Mutex::new(false));
    let d2 = done.clone();
    h.call(move |r| {
        let mut left = 50u32;
        let id = std::rc::Rc::new(std::cell::Cell::new(None));
        let id2 = id.clone();
        let pid = r.register_poller("drainer", move |r| {
            if r.stop_requested() {
                // Simulates in-flight work finishing after the stop request.
                left -= 1;
                if left == 0 {
                    *d2.lock().unwrap() = true;
                    r.unregister_poller(id2.get().unwrap());
                }
                return PollStatus::Busy;
            }
            PollStatus::Idle
        });
        id.set(Some(pid));
    })
    .unwrap();
    rt.shutdown();
    assert!(
        *done.lock().unwrap(),
        "reactor stopped before its poller drained"
    );
    assert_eq!(h.state_name(), "stopped");
    assert!(h.send(|_| {}).unwrap_err().stopped);
}

//! Deterministic tests: many reactors driven on one test thread with a fake clock.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use vmpath_runtime::{PollStatus, Reactor, MAX_MSGS_PER_POLL};

fn reactors(n: u32) -> Vec<Reactor> {
    (0..n)
        .map(|i| Reactor::new(i, None, 1024).unwrap())
        .collect()
}

/// Polls every reactor once at `now`; returns whether any was busy.
fn step(rs: &mut [Reactor], now: u64) -> bool {
    let mut busy = false;
    for r in rs.iter_mut() {
        busy |= r.poll(now) == PollStatus::Busy;
    }
    busy
}

#[test]
fn ping_pong_between_four_reactors_counts_exact_hops() {
    let mut rs = reactors(4);
    let handles: Vec<_> = rs.iter().map(|r| r.handle()).collect();
    let hops = Arc::new(AtomicU64::new(0));
    // A token travels 0 -> 1 -> 2 -> 3 -> 0 ... for 100 hops, one hop per message.
    fn forward(
        r: &mut Reactor,
        hs: Arc<Vec<vmpath_runtime::ReactorHandle>>,
        hops: Arc<AtomicU64>,
        left: u32,
    ) {
        hops.fetch_add(1, Ordering::Relaxed);
        if left == 0 {
            return;
        }
        let next = (r.id() as usize + 1) % hs.len();
        let hs2 = hs.clone();
        hs[next]
            .send(move |r| forward(r, hs2, hops, left - 1))
            .unwrap();
    }
    let hs = Arc::new(handles);
    let (hs2, h2) = (hs.clone(), hops.clone());
    hs[0].send(move |r| forward(r, hs2, h2, 99)).unwrap();
    let mut now = 0;
    while step(&mut rs, now) {
        now += 1000;
    }
    assert_eq!(hops.load(Ordering::Relaxed), 100);
    let total: u64 = rs.iter().map(|r| r.handle().stats().messages).sum();
    assert_eq!(total, 100);
}

#[test]
fn timed_pollers_fire_on_the_fake_clock() {
    let mut rs = reactors(2);
    let fired: Rc<RefCell<Vec<(u32, u64)>>> = Rc::default();
    for r in rs.iter_mut() {
        let f = fired.clone();
        let period = 1_000_000 * (r.id() as u64 + 1); // 1 ms and 2 ms
        r.register_timed_poller("tick", period, move |r| {
            f.borrow_mut().push((r.id(), r.now()));
            PollStatus::Busy
        });
    }
    // Advance 10 ms in 100 us steps.
    let mut now = 0;
    while now <= 10_000_000 {
        step(&mut rs, now);
        now += 100_000;
    }
    let fired = fired.borrow();
    let r0: Vec<u64> = fired
        .iter()
        .filter(|(id, _)| *id == 0)
        .map(|x| x.1)
        .collect();
    let r1: Vec<u64> = fired
        .iter()
        .filter(|(id, _)| *id == 1)
        .map(|x| x.1)
        .collect();
    assert_eq!(r0, (1..=10).map(|i| i * 1_000_000).collect::<Vec<_>>());
    assert_eq!(r1, (1..=5).map(|i| i * 2_000_000).collect::<Vec<_>>());
    assert_eq!(rs[0].next_timer_due(), 11_000_000);
}

#[test]
fn missed_timer_periods_do_not_burst() {
    let mut r = Reactor::new(0, None, 16).unwrap();
    let n = Rc::new(RefCell::new(0));
    let n2 = n.clone();
    r.register_timed_poller("t", 1000, move |_| {
        *n2.borrow_mut() += 1;
        PollStatus::Idle
    });
    r.poll(0);
    r.poll(1_000_000); // 1000 periods late: runs once
    assert_eq!(*n.borrow(), 1);
    assert_eq!(r.next_timer_due(), 1_001_000);
}

#[test]
fn busy_and_idle_ticks_follow_poll_outcomes() {
    let mut r = Reactor::new(0, None, 16).unwrap();
    let work = Rc::new(RefCell::new(3u32));
    let w = work.clone();
    r.register_poller("work", move |_| {
        let mut left = w.borrow_mut();
        if *left > 0 {
            *left -= 1;
            PollStatus::Busy
        } else {
            PollStatus::Idle
        }
    });
    // Polls at t=0,10,20 are busy, 30,40 idle.
    for t in [0u64, 10, 20, 30, 40, 50] {
        r.poll(t);
    }
    let s = r.handle().stats();
    assert_eq!(s.busy_ticks, 30);
    assert_eq!(s.idle_ticks, 20);
    assert_eq!(s.poller_runs, 6);
}

#[test]
fn poller_can_unregister_itself_and_register_another() {
    let mut r = Reactor::new(0, None, 16).unwrap();
    let log: Rc<RefCell<Vec<&'static str>>> = Rc::default();
    let l1 = log.clone();
    let id_cell: Rc<RefCell<Option<vmpath_runtime::PollerId>>> = Rc::default();
    let idc = id_cell.clone();
    let id = r.register_poller("once", move |r| {
        l1.borrow_mut().push("once");
        r.unregister_poller(idc.borrow().unwrap());
        let l2 = l1.clone();
        r.register_poller("after", move |_| {
            l2.borrow_mut().push("after");
            PollStatus::Idle
        });
        PollStatus::Busy
    });
    *id_cell.borrow_mut() = Some(id);
    r.poll(0);
    r.poll(1);
    r.poll(2);
    assert_eq!(*log.borrow(), vec!["once", "after", "after"]);
    assert_eq!(r.poller_count(), 1);
    assert!(!r.unregister_poller(id));
}

#[test]
fn message_batch_is_bounded_per_poll() {
    let mut r = Reactor::new(0, None, 1024).unwrap();
    let h = r.handle();
    let ran = Arc::new(AtomicU64::new(0));
    for _ in 0..(MAX_MSGS_PER_POLL * 2 + 5) {
        let ran = ran.clone();
        h.send(move |_| {
            ran.fetch_add(1, Ordering::Relaxed);
        })
        .unwrap();
    }
    r.poll(0);
    assert_eq!(ran.load(Ordering::Relaxed), MAX_MSGS_PER_POLL as u64);
    r.poll(1);
    r.poll(2);
    assert_eq!(
        ran.load(Ordering::Relaxed),
        (MAX_MSGS_PER_POLL * 2 + 5) as u64
    );
}

#[test]
fn full_inbox_hands_the_message_back() {
    let r = Reactor::new(0, None, 2).unwrap();
    let h = r.handle();
    h.send(|_| {}).unwrap();
    h.send(|_| {}).unwrap();
    let err = h.send(|_| {}).unwrap_err();
    assert!(!err.stopped);
    assert_eq!(err.to_string(), "reactor inbox is full");
    drop(r);
    let err = h.send(|_| {}).unwrap_err();
    assert!(err.stopped);
}

#[test]
fn reactor_locals_are_per_reactor() {
    let mut rs = reactors(2);
    *rs[0].local::<u64>() += 5;
    *rs[1].local::<u64>() += 7;
    *rs[0].local::<u64>() += 1;
    assert_eq!(*rs[0].local::<u64>(), 6);
    assert_eq!(*rs[1].local::<u64>(), 7);
}

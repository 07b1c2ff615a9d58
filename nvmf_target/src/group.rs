//! The poll group: every NVMe/TCP connection of one target on one reactor, driven by one
//! poller (SPDK's `nvmf_tcp_poll_group`). Per poll: find readable sockets (an epoll set that
//! is also the reactor's wake-up fd, so a sleeping reactor wakes when data arrives; sockets
//! that received data recently are read directly without asking epoll), read and process
//! PDUs (submitting I/O), poll the block-device channels shared by the group's connections,
//! then send every connection's queued PDUs with one `sendmsg` each. A timed poller checks
//! Keep Alive and connect timeouts.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::{SocketAddr, TcpStream};
use std::rc::Rc;
use std::sync::Arc;

use vmpath_runtime::{PollStatus, PollerId, Reactor};

use crate::chans::Channels;
use crate::conn::{Conn, Env};
use crate::target::{ConnTicket, Shared};
use vmpath_runtime::sys::{Epoll, EV_IN, EV_IN_OUT};

/// Polls without data after which a connection is only read when epoll reports it.
const HOT_POLLS: u32 = 256;
/// Period of the timer poller.
const TIMER_PERIOD_NS: u64 = 20_000_000;
/// How long a stopping group waits for in-flight I/O before closing connections anyway.
const STOP_GRACE_NS: u64 = 5_000_000_000;

#[derive(Default)]
struct Groups(HashMap<u64, Rc<RefCell<PollGroup>>>);

struct PollGroup {
    target_id: u64,
    reactor: u32,
    ep: Epoll,
    conns: Vec<Option<Conn>>,
    free: Vec<u32>,
    chans: Channels,
    pollers: Option<(PollerId, PollerId)>,
    polls: u64,
    hot: usize,
    stopping: bool,
    stop_deadline: u64,
    live: usize,
}

/// Runs on a reactor: adopts an accepted connection into this reactor's poll group.
pub(crate) fn add_connection(
    r: &mut Reactor,
    shared: Arc<Shared>,
    stream: TcpStream,
    port: SocketAddr,
    ticket: ConnTicket,
) {
    if shared.stopping.load(std::sync::atomic::Ordering::Acquire) {
        return;
    }
    let g = match group_of(r, &shared) {
        Ok(g) => g,
        Err(e) => {
            tracing::warn!(error = %e, "cannot set up the NVMe/TCP poll group; closing connection");
            return;
        }
    };
    let now = r.now();
    g.borrow_mut().add(stream, port, shared, ticket, now);
}

/// Runs on a reactor: starts the graceful stop of target `id`'s connections there.
pub(crate) fn stop(r: &mut Reactor, id: u64) {
    let g = r.local::<Groups>().0.get(&id).cloned();
    if let Some(g) = g {
        let now = r.now();
        g.borrow_mut().stop(now);
    }
}

fn group_of(r: &mut Reactor, shared: &Arc<Shared>) -> std::io::Result<Rc<RefCell<PollGroup>>> {
    if let Some(g) = r.local::<Groups>().0.get(&shared.id) {
        return Ok(g.clone());
    }
    let ep = Epoll::new()?;
    r.register_wake_fd(ep.raw())?;
    let g = Rc::new(RefCell::new(PollGroup {
        target_id: shared.id,
        reactor: r.id(),
        ep,
        conns: Vec::new(),
        free: Vec::new(),
        chans: Channels::default(),
        pollers: None,
        polls: 0,
        hot: 0,
        stopping: false,
        stop_deadline: u64::MAX,
        live: 0,
    }));
    let g1 = g.clone();
    let pid = r.register_poller(format!("nvmf_tcp_{}", shared.id), move |r| {
        g1.borrow_mut().poll(r)
    });
    let g2 = g.clone();
    let tid = r.register_timed_poller(
        format!("nvmf_tcp_timers_{}", shared.id),
        TIMER_PERIOD_NS,
        move |r| g2.borrow_mut().timers(r),
    );
    g.borrow_mut().pollers = Some((pid, tid));
    r.local::<Groups>().0.insert(shared.id, g.clone());
    Ok(g)
}

impl PollGroup {
    fn add(
        &mut self,
        stream: TcpStream,
        port: SocketAddr,
        shared: Arc<Shared>,
        ticket: ConnTicket,
        now: u64,
    ) {
        let idx = match self.free.pop() {
            Some(i) => i,
            None => {
                self.conns.push(None);
                (self.conns.len() - 1) as u32
            }
        };
        let conn = Conn::new(Some(stream), port, shared, ticket, now);
        if let Err(e) = self.ep.add(conn.fd, EV_IN, idx as u64) {
            tracing::warn!(error = %e, "epoll registration failed; closing connection");
            self.free.push(idx);
            return;
        }
        self.conns[idx as usize] = Some(conn);
        self.live += 1;
    }

    fn stop(&mut self, now: u64) {
        if self.stopping {
            return;
        }
        self.stopping = true;
        self.stop_deadline = now.saturating_add(STOP_GRACE_NS);
        for c in self.conns.iter_mut().flatten() {
            if c.q.is_some() {
                c.begin_drain();
            } else {
                c.close_now("target stopping");
            }
        }
    }

    fn poll(&mut self, r: &mut Reactor) -> PollStatus {
        let now = r.now();
        if r.stop_requested() && !self.stopping {
            self.stop(now);
        }
        self.polls = self.polls.wrapping_add(1);
        let mut busy = false;
        if self.hot == 0 || self.polls.is_multiple_of(8) {
            let PollGroup { ep, conns, .. } = self;
            for ev in ep.wait(0) {
                if let Some(Some(c)) = conns.get_mut(ev.token as usize) {
                    if ev.writable() {
                        c.tx_blocked = false;
                    }
                    c.idle_polls = 0;
                }
            }
        }
        let reactor = self.reactor;
        let PollGroup {
            ep, conns, chans, ..
        } = self;
        // Receive and start commands.
        let mut hot = 0;
        for (i, slot) in conns.iter_mut().enumerate() {
            let Some(c) = slot.as_mut() else { continue };
            if c.idle_polls >= HOT_POLLS {
                continue;
            }
            let mut env = Env {
                chans,
                now,
                conn_idx: i as u32,
                reactor,
            };
            if c.on_readable(&mut env) {
                c.idle_polls = 0;
                busy = true;
            } else {
                c.idle_polls += 1;
            }
            if c.idle_polls < HOT_POLLS {
                hot += 1;
            }
        }
        // Block-device completions.
        let done = chans.poll(now, &mut |comp| {
            let ci = (comp.tag >> 32) as usize;
            let si = comp.tag as u16;
            if let Some(Some(c)) = conns.get_mut(ci) {
                c.on_bdev_complete(si, &comp, now);
            }
        });
        busy |= done > 0;
        // Housekeeping, send, reap.
        let mut reaped = Vec::new();
        for (i, slot) in conns.iter_mut().enumerate() {
            let Some(c) = slot.as_mut() else { continue };
            let mut env = Env {
                chans,
                now,
                conn_idx: i as u32,
                reactor,
            };
            c.tick(&mut env);
            if !c.tx.is_empty() && c.flush() {
                busy = true;
            }
            if c.fd >= 0 {
                if c.tx_blocked && !c.epoll_out {
                    c.epoll_out = ep.modify(c.fd, EV_IN_OUT, i as u64).is_ok();
                } else if !c.tx_blocked && c.epoll_out {
                    c.epoll_out = ep.modify(c.fd, EV_IN, i as u64).is_err();
                }
            }
            if c.is_reapable() {
                c.release_routes(chans);
                reaped.push(i as u32);
            }
        }
        self.hot = hot;
        for i in reaped {
            self.conns[i as usize] = None;
            self.free.push(i);
            self.live -= 1;
        }
        if self.live == 0 {
            self.dissolve(r);
        }
        PollStatus::from_work(busy)
    }

    fn timers(&mut self, r: &mut Reactor) -> PollStatus {
        let now = r.now();
        for c in self.conns.iter_mut().flatten() {
            c.check_timers(now);
        }
        if self.stopping && now >= self.stop_deadline {
            for c in self.conns.iter_mut().flatten() {
                c.close_now("stop grace period over");
            }
        }
        if self.conns.iter().flatten().all(|c| c.pending.is_empty()) {
            self.chans.reap();
        }
        PollStatus::Idle
    }

    /// No connections left: unregister from the reactor (re-created on the next one).
    fn dissolve(&mut self, r: &mut Reactor) {
        if self.chans.outstanding() > 0 {
            return;
        }
        if let Some((pid, tid)) = self.pollers.take() {
            r.unregister_poller(pid);
            r.unregister_poller(tid);
        }
        let _ = r.unregister_wake_fd(self.ep.raw());
        r.local::<Groups>().0.remove(&self.target_id);
    }
}

//! Path selection: the [`PathSelector`] hook and the built-in standalone policies.
//!
//! A selector sees only the paths that can take the request on this reactor right now (state
//! optimized or non-optimized and the reactor's queue pair on the path connected) and returns
//! one of them. Every built-in policy first narrows the candidates to the best ANA tier
//! (optimized if any, else non-optimized); inaccessible, failed, failing-over and connecting
//! paths are never candidates.

use vmpath_bdev::IoRequest;

use crate::options::PolicyKind;
use crate::path::{Path, PathId, PathState};

/// A path that can take a request now.
#[derive(Debug, Clone, Copy)]
pub struct Candidate<'a> {
    /// The path (state and load atomics).
    pub path: &'a Path,
    /// I/Os this reactor has outstanding on the path.
    pub local_outstanding: u32,
}

impl Candidate<'_> {
    /// The path id.
    #[inline]
    pub fn id(&self) -> PathId {
        self.path.id()
    }
}

/// Chooses the path of each request (per reactor; `!Send` state is fine).
pub trait PathSelector {
    /// Picks one of `cands` (never empty) for `req`, or `None` to hold the request.
    fn select(&mut self, req: &IoRequest, cands: &[Candidate<'_>]) -> Option<PathId>;

    /// Short name for diagnostics.
    fn name(&self) -> &'static str;
}

/// The candidates of the best ANA tier: optimized ones if any, else the non-optimized ones.
pub fn best_tier<'a, 'b>(cands: &'b [Candidate<'a>]) -> impl Iterator<Item = &'b Candidate<'a>> {
    let any_opt = cands.iter().any(|c| c.path.state() == PathState::Optimized);
    cands.iter().filter(move |c| {
        let s = c.path.state();
        if any_opt {
            s == PathState::Optimized
        } else {
            s == PathState::NonOptimized
        }
    })
}

/// Active-passive: the first path (lowest id) of the best tier.
#[derive(Debug, Default)]
pub struct ActivePassive;

impl PathSelector for ActivePassive {
    fn select(&mut self, _req: &IoRequest, cands: &[Candidate<'_>]) -> Option<PathId> {
        best_tier(cands).map(|c| c.id()).min()
    }
    fn name(&self) -> &'static str {
        "active_passive"
    }
}

/// Round robin over the best tier, moving on every `rr_min_io` I/Os.
#[derive(Debug)]
pub struct RoundRobin {
    rr_min_io: u32,
    current: Option<PathId>,
    count: u32,
}

impl RoundRobin {
    /// A round robin that switches path every `rr_min_io` I/Os (at least 1).
    pub fn new(rr_min_io: u32) -> Self {
        RoundRobin {
            rr_min_io: rr_min_io.max(1),
            current: None,
            count: 0,
        }
    }
}

impl PathSelector for RoundRobin {
    fn select(&mut self, _req: &IoRequest, cands: &[Candidate<'_>]) -> Option<PathId> {
        let mut first: Option<PathId> = None;
        let mut next: Option<PathId> = None;
        let mut cur_ok = false;
        for c in best_tier(cands) {
            let id = c.id();
            if Some(id) == self.current {
                cur_ok = true;
            }
            first = Some(first.map_or(id, |f: PathId| f.min(id)));
            if let Some(cur) = self.current {
                if id > cur && next.is_none_or(|n| id < n) {
                    next = Some(id);
                }
            }
        }
        if cur_ok && self.count < self.rr_min_io {
            self.count += 1;
            return self.current;
        }
        let pick = next.or(first)?;
        self.current = Some(pick);
        self.count = 1;
        Some(pick)
    }
    fn name(&self) -> &'static str {
        "round_robin"
    }
}

/// The best-tier path with the fewest outstanding I/Os (all reactors counted); ties go round.
#[derive(Debug, Default)]
pub struct QueueDepth {
    tie: u32,
}

impl PathSelector for QueueDepth {
    fn select(&mut self, _req: &IoRequest, cands: &[Candidate<'_>]) -> Option<PathId> {
        let mut best: Option<(u32, PathId)> = None;
        let mut ties = 0u32;
        for c in best_tier(cands) {
            let q = c.path.outstanding_ios();
            match best {
                Some((bq, _)) if q > bq => {}
                Some((bq, _)) if q == bq => {
                    ties += 1;
                    // Rotate among equals so an idle system still spreads I/O.
                    if (self.tie % (ties + 1)) == ties {
                        best = Some((q, c.id()));
                    }
                }
                _ => {
                    best = Some((q, c.id()));
                    ties = 0;
                }
            }
        }
        self.tie = self.tie.wrapping_add(1);
        best.map(|(_, id)| id)
    }
    fn name(&self) -> &'static str {
        "queue_depth"
    }
}

/// A selector for a policy.
pub fn build(kind: PolicyKind) -> Box<dyn PathSelector> {
    match kind {
        PolicyKind::ActivePassive => Box::new(ActivePassive),
        PolicyKind::RoundRobin { rr_min_io } => Box::new(RoundRobin::new(rr_min_io)),
        PolicyKind::QueueDepth => Box::new(QueueDepth::default()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::path::{Ana, PathKind};
    use std::sync::Arc;
    use vmpath_bdev::null::NullBdev;
    use vmpath_bdev::sim::SimParams;
    use vmpath_bdev::IoType;

    fn paths(states: &[Ana]) -> Vec<Path> {
        states
            .iter()
            .enumerate()
            .map(|(i, a)| {
                let dev = Arc::new(NullBdev::new("n", 8, 512, SimParams::default()).unwrap());
                let p = Path::new(PathId(i as u16), format!("p{i}"), PathKind::Local { dev });
                p.set_ana(*a);
                p
            })
            .collect()
    }

    fn cands(p: &[Path]) -> Vec<Candidate<'_>> {
        p.iter()
            .map(|path| Candidate {
                path,
                local_outstanding: 0,
            })
            .collect()
    }

    fn req() -> IoRequest {
        IoRequest::no_data(IoType::Flush, 0, 0, 0)
    }

    #[test]
    fn round_robin_switches_every_n_and_prefers_optimized() {
        let p = paths(&[
            Ana::Optimized,
            Ana::NonOptimized,
            Ana::Optimized,
            Ana::Optimized,
        ]);
        let c = cands(&p);
        let mut rr = RoundRobin::new(2);
        let picks: Vec<u16> = (0..8).map(|_| rr.select(&req(), &c).unwrap().0).collect();
        assert_eq!(picks, vec![0, 0, 2, 2, 3, 3, 0, 0]);
        // Only non-optimized and inaccessible left: the non-optimized one.
        let p = paths(&[Ana::Inaccessible, Ana::NonOptimized]);
        let c = cands(&p);
        assert_eq!(rr.select(&req(), &c), Some(PathId(1)));
        let p = paths(&[Ana::Inaccessible]);
        assert_eq!(rr.select(&req(), &cands(&p)), None);
    }

    #[test]
    fn queue_depth_picks_least_loaded_and_active_passive_first() {
        let p = paths(&[Ana::Optimized, Ana::Optimized, Ana::NonOptimized]);
        p[0].on_submit(4096);
        p[0].on_submit(4096);
        p[1].on_submit(4096);
        let c = cands(&p);
        let mut qd = QueueDepth::default();
        assert_eq!(qd.select(&req(), &c), Some(PathId(1)));
        p[1].on_submit(4096);
        p[1].on_submit(4096);
        assert_eq!(qd.select(&req(), &c), Some(PathId(0)));
        // Ties rotate.
        let p = paths(&[Ana::Optimized, Ana::Optimized]);
        let c = cands(&p);
        let mut seen = [0u32; 2];
        for _ in 0..10 {
            seen[qd.select(&req(), &c).unwrap().index()] += 1;
        }
        assert!(seen[0] > 0 && seen[1] > 0, "{seen:?}");
        let p = paths(&[Ana::NonOptimized, Ana::Optimized, Ana::Optimized]);
        assert_eq!(ActivePassive.select(&req(), &cands(&p)), Some(PathId(1)));
    }
}

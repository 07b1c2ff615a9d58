//! Deterministic simulations and property tests (issue 5, "Tests").

mod basic;
mod control;
mod failover;
mod props;
mod selectors;
mod scale;
mod util;

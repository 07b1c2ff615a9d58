//! Deterministic simulations and property tests (issue 5, "Tests").

mod basic;
mod control;
mod failover;
mod props;
mod scale;
mod selectors;
mod util;

//! Deterministic simulations and property tests (issue 5, "Tests").

mod basic;
mod props;
mod scale;
mod util;

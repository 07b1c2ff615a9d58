//! Deterministic simulations and property tests (issue 5, "Tests").

mod basic;

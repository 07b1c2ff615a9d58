//! vmpath-tests (skeleton; being built).

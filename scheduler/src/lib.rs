//! scheduler (skeleton; being built).

//! vmpath-config (skeleton; being built).

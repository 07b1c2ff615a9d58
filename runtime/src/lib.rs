//! vmpath-runtime (skeleton; being built).

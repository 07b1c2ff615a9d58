//! vmpath-bdev (skeleton; being built).

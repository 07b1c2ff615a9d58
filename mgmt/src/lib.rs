//! vmpath-mgmt (skeleton; being built).

//! nvme-spec (skeleton; being built).

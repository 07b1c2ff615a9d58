//! nvme-tcp (skeleton; being built).

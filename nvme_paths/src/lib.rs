//! nvme_paths (skeleton; being built).

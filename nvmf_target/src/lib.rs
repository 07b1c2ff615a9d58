//! nvmf-target (skeleton; being built).

//! vhost-user-blk (skeleton; being built).

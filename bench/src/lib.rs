//! Benchmarks for vmpath's data-path components.
